"""What the search needs to know about token ids, and on-device text functions over rows.

``SearchTokens`` is a small frozen (hashable, jit-static) description of a tokenizer's
special ids: which tokens end a step (a SET: real byte-level BPEs merge the blank line
with the punctuation before it, so ``".\\n\\n"`` or ``")\\n\\n"`` end a step as well as
``"\\n\\n"``), which end a solution (every eos id), how the final answer line starts, and
how a row's answer is read on device. Per-token lookup tables built from the vocabulary
(``TokenTables``, [V] arrays) travel as device arguments of the search, not as constants.

Answer ids (``answer_ids``) are the task's on-device answer, an int32 >= 0 (equal ids <=>
equal answer text), or ``NO_ANSWER``:

* ``answer="digits"`` (the arithmetic task): the digits after the LAST answer prefix, up
  to the next step end or eos, as a number mod 2**31; tokens of several digits (Llama 3
  groups up to three) are read whole. Host twin: ``answer_id_of_text(answer, "digits")``.
* ``answer="boxed"`` (MATH): a hash of the BYTES of the last ``\\boxed{...}`` content
  (braces matched), composed token by token from per-token byte hashes, so it does not
  depend on how the tokenizer split the text (``{\\`` and ``}}`` merges included). Host
  twin: ``answer_id_of_text(last_boxed(text), "boxed")``. The host groups equivalent
  answers (``\\frac12`` and ``0.5``) afterwards; the device groups equal text.

``row_hash`` fingerprints a row's whole text (duplicate filtering).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# Answer ids are non-negative int32: the value mod 2**31 (digits) or a 31-bit hash (boxed).
ANSWER_MOD = 2**31
NO_ANSWER = -1
ANSWER_KINDS = ("digits", "boxed")
_BASE = 1_000_003  # polynomial byte hash mod 2**32 (odd, so powers never vanish)
_DEPTHS = 3  # a token may close a box from depth 1..3 (deeper: the answer is unreadable)
_MASK32 = 0xFFFFFFFF


@flax.struct.dataclass
class TokenTables:
    """Per-token tables of one vocabulary, on device (V = vocabulary size + 1: the last
    entry is neutral, and ids outside the vocabulary are clipped onto it).

    Attributes:
      ends_step: [V] bool, the token's text contains the step separator.
      answer: [V, K] int32 columns of the answer rule (see ``_digit_columns`` /
        ``_boxed_columns``); hashes are stored bit-cast.
    """

    ends_step: jax.Array
    answer: jax.Array

    def lookup(self, tokens: jax.Array):
        return self.ends_step[jnp.clip(tokens, 0, self.ends_step.shape[0] - 1)]

    def columns(self, tokens: jax.Array) -> jax.Array:
        """[...] ids -> [..., K] answer columns."""
        return self.answer[jnp.clip(tokens, 0, self.answer.shape[0] - 1)]


@dataclasses.dataclass(frozen=True)
class SearchTokens:
    """Special token ids of a task's tokenizer (hashable: one compiled program per value).

    Attributes:
      pad_id: pads rows; never sampled. bos_id: never sampled; None when the tokenizer has
        no bos (Qwen).
      eos_ids: every id that ends a solution (``generation_config.json``'s list).
      delimiter_ids: every id whose text contains the step separator.
      answer_prefix: ids that start the final answer line ("A:"); a row whose line
        starting with them is completed by a step end has ended (no eos needed).
      answer: how the on-device answer id is read: 'digits' or 'boxed'.
      vocab_size: table size (>= every id the model can emit; the model's vocabulary).
      tables_key: a digest of the tables (so specs with other tables compare unequal).
    """

    pad_id: int
    bos_id: int | None
    eos_ids: tuple[int, ...]
    delimiter_ids: tuple[int, ...]
    answer_prefix: tuple[int, ...]
    answer: str
    vocab_size: int
    tables_key: str = ""
    _tables: tuple = dataclasses.field(default=(), compare=False, hash=False, repr=False)

    def __post_init__(self):
        if not self.eos_ids:
            raise ValueError("eos_ids is empty; pass every id that ends a solution")
        if not self.delimiter_ids:
            raise ValueError("delimiter_ids is empty; step-level search needs the ids whose "
                             "text contains the step separator")
        if not self.answer_prefix:
            raise ValueError("answer_prefix is empty; pass the ids of the answer marker "
                             "(e.g. tokenizer.encode('A:'))")
        if self.answer not in ANSWER_KINDS:
            raise ValueError(f"answer={self.answer!r}; choose one of {list(ANSWER_KINDS)}")

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, *, vocab: Sequence[bytes], pad_id: int, bos_id: int | None,
              eos_ids: Sequence[int], answer_prefix: Sequence[int], answer: str = "digits",
              separator: bytes = b"\n\n", vocab_size: int | None = None) -> SearchTokens:
        """From the vocabulary's token bytes (``tokenizer.vocab_bytes()``, b"" for special
        tokens): the delimiter set is every token whose bytes contain ``separator``."""
        if answer not in ANSWER_KINDS:
            raise ValueError(f"answer={answer!r}; choose one of {list(ANSWER_KINDS)}")
        v = max(len(vocab), vocab_size or 0)
        vocab = list(vocab) + [b""] * (v - len(vocab))
        delims = tuple(i for i, b in enumerate(vocab) if separator in b)
        ends = np.zeros((v + 1,), bool)
        ends[list(delims)] = True
        cols = (_digit_columns if answer == "digits" else _boxed_columns)(vocab + [b""])
        key = hashlib.sha1(ends.tobytes() + cols.tobytes()).hexdigest()[:16]
        return cls(pad_id=int(pad_id), bos_id=None if bos_id is None else int(bos_id),
                   eos_ids=tuple(int(e) for e in eos_ids), delimiter_ids=delims,
                   answer_prefix=tuple(int(a) for a in answer_prefix), answer=answer,
                   vocab_size=v, tables_key=key, _tables=(ends, cols))

    @classmethod
    def from_tokenizer(cls, tok, *, answer: str = "digits", answer_marker: str = "A:",
                       separator: str | None = None,
                       vocab_size: int | None = None) -> SearchTokens:
        """For any tokenizer with ``vocab_bytes()`` (``CharTokenizer``, ``HFTokenizer``).

        ``separator`` defaults to the tokenizer's ``step_delimiter``; ``vocab_size`` to the
        tokenizer's (pass the model's when its embedding is larger: Qwen2 151,936)."""
        sep = separator if separator is not None else getattr(tok, "step_delimiter", None)
        if sep is None:
            raise ValueError("the tokenizer has no step separator; pass separator='\\n\\n'")
        eos = tuple(getattr(tok, "eos_ids", None) or (tok.eos_id,))
        bos = tok.bos_id if getattr(tok, "has_bos", True) else None
        return cls.build(vocab=tok.vocab_bytes(), pad_id=tok.pad_id, bos_id=bos, eos_ids=eos,
                         answer_prefix=tok.encode(answer_marker), answer=answer,
                         separator=sep.encode("utf-8"), vocab_size=vocab_size)

    @classmethod
    def from_task(cls, task, *, vocab_size: int | None = None) -> SearchTokens:
        """The task says how its answers are read (``answer_kind``, ``answer_marker``)."""
        sep = getattr(task, "step_delimiter", None)
        return cls.from_tokenizer(task.tokenizer, answer=getattr(task, "answer_kind", "digits"),
                                  answer_marker=getattr(task, "answer_marker", "A:"),
                                  separator=sep, vocab_size=vocab_size)

    # -- use ------------------------------------------------------------------------------

    @property
    def eos_id(self) -> int:
        return self.eos_ids[0]

    def tables(self) -> TokenTables:
        """The device tables (built once per spec, then reused)."""
        if not self._tables:
            raise ValueError("this SearchTokens has no tables; build it with "
                             "SearchTokens.build / from_tokenizer / from_task")
        cache = self._tables
        if len(cache) == 2:  # first use: put the numpy tables on device once
            with jax.ensure_compile_time_eval():  # concrete even when first used under jit
                dev = TokenTables(ends_step=jnp.asarray(cache[0]), answer=jnp.asarray(cache[1]))
            object.__setattr__(self, "_tables", cache + (dev,))
        return self._tables[2]

    def banned(self) -> tuple[int, ...]:
        """Ids the search never samples (they carry no text)."""
        return (self.pad_id,) if self.bos_id is None else (self.pad_id, self.bos_id)

    def is_eos(self, tokens: jax.Array) -> jax.Array:
        return jnp.isin(tokens, jnp.asarray(self.eos_ids, jnp.int32))


# -- tables -----------------------------------------------------------------------------

def _hash_bytes(b: bytes) -> tuple[int, int]:
    """(hash, BASE**len) mod 2**32 of a byte string: hash(xy) = hash(x)*pow(y) + hash(y)."""
    h, p = 0, 1
    for c in b:
        h = (h * _BASE + c + 1) & _MASK32
        p = (p * _BASE) & _MASK32
    return h, p


def _i32(x: int) -> int:
    """A uint32 value stored in an int32 column (bit-cast back on device)."""
    return x - (1 << 32) if x >= (1 << 31) else x


def _digit_columns(vocab: Sequence[bytes]) -> np.ndarray:
    """[V, 2]: (value of an all-digit token or -1, 10**len mod 2**32 as int32)."""
    out = np.zeros((len(vocab), 2), np.int64)
    out[:, 0] = -1
    out[:, 1] = 1
    for i, b in enumerate(vocab):
        if b and b.isdigit() and b.isascii():
            out[i] = (int(b) % ANSWER_MOD, _i32(pow(10, len(b), 1 << 32)))
    return out.astype(np.int32)


# columns of the boxed rule
_BOX_WORD, _LBRACE, _DELTA, _MINPREF, _FULL_H, _FULL_P = range(6)
_HEAD_H = 6  # + d - 1, d = 1.._DEPTHS
_HEAD_P = _HEAD_H + _DEPTHS
_T_DELTA, _T_MINPREF, _T_FULL_H, _T_FULL_P, _T_HEAD_H, _T_HEAD_P = range(
    _HEAD_P + _DEPTHS, _HEAD_P + _DEPTHS + 6)
_BOX_COLS = _T_HEAD_P + 1


def _scan(b: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(delta, min prefix depth, [(head hash, head pow) for closing from depth d=1..])."""
    depth, low, heads = 0, 0, []
    for i, c in enumerate(b):
        depth += (c == 0x7B) - (c == 0x7D)  # '{' '}'
        if depth < low:
            low = depth
            heads.append(_hash_bytes(b[:i]))  # closes from incoming depth -depth
    return depth, low, heads


def _hash_all(vocab: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``_hash_bytes`` of every token at once: ([V] hash, [V] pow) as int32 bit patterns."""
    lens = np.fromiter((len(b) for b in vocab), np.int64, len(vocab))
    width = int(lens.max(initial=0))
    mat = np.zeros((max(width, 1), len(vocab)), np.uint64)  # [byte position, token]
    flat = np.frombuffer(b"".join(vocab), np.uint8).astype(np.uint64)
    toks = np.repeat(np.arange(len(vocab)), lens)
    pos = np.arange(flat.size) - np.repeat(np.cumsum(lens) - lens, lens)
    mat[pos, toks] = flat + 1
    h = np.zeros(len(vocab), np.uint64)
    p = np.ones(len(vocab), np.uint64)
    mask, base = np.uint64(_MASK32), np.uint64(_BASE)
    for j in range(width):
        live = (lens > j).astype(np.uint64)  # past its end a token's hash stays
        step = np.uint64(1) + live * (base - np.uint64(1))  # base, or 1
        h = (h * step + mat[j]) & mask
        p = (p * step) & mask
    return h.astype(np.uint32).view(np.int32), p.astype(np.uint32).view(np.int32)


def _boxed_columns(vocab: Sequence[bytes]) -> np.ndarray:
    out = np.zeros((len(vocab), _BOX_COLS), np.int64)
    out[:, _FULL_H], out[:, _FULL_P] = _hash_all(vocab)
    out[:, _HEAD_P:_HEAD_P + _DEPTHS] = 1
    out[:, _T_FULL_P] = out[:, _T_HEAD_P] = 1
    out[:, _BOX_WORD] = [b.endswith(b"boxed") for b in vocab]
    for i, b in enumerate(vocab):
        if b"{" not in b and b"}" not in b:
            continue  # no braces: the whole-token hash above is all it needs
        delta, low, heads = _scan(b)
        row = out[i]
        row[_LBRACE] = b.startswith(b"{")
        row[_DELTA], row[_MINPREF] = delta, low
        for d in range(_DEPTHS):
            hh, hp = heads[d] if d < len(heads) else (0, 1)
            row[_HEAD_H + d], row[_HEAD_P + d] = _i32(hh), _i32(hp)
        tail = b[1:] if b.startswith(b"{") else b""
        delta, low, heads = _scan(tail)
        h, p = _hash_bytes(tail)
        row[_T_DELTA], row[_T_MINPREF], row[_T_FULL_H], row[_T_FULL_P] = (
            delta, low, _i32(h), _i32(p))
        hh, hp = heads[0] if heads else (0, 1)
        row[_T_HEAD_H], row[_T_HEAD_P] = _i32(hh), _i32(hp)
    return out.astype(np.int32)


# -- on device ----------------------------------------------------------------------------

def prefix_at(tokens: jax.Array, lengths: jax.Array, prefix: tuple[int, ...]) -> jax.Array:
    """[R, T] bool: the ids ``prefix`` start at position t of row r (within its length)."""
    _, t = tokens.shape
    hit = jnp.ones(tokens.shape, bool)
    for j, pid in enumerate(prefix):
        shifted = jnp.pad(tokens[:, j:], ((0, 0), (0, j)), constant_values=-1)  # [R, T]
        hit = hit & (shifted == pid)
    pos = jnp.arange(t)[None, :]
    return hit & (pos + len(prefix) <= lengths[:, None])


def _u32(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _to_id(h: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(h & jnp.uint32(ANSWER_MOD - 1), jnp.int32)


def _digit_answers(tokens, lengths, spec: SearchTokens, tables: TokenTables) -> jax.Array:
    r, t = tokens.shape
    pos = jnp.arange(t)[None, :]  # [1, T]
    starts = prefix_at(tokens, lengths, spec.answer_prefix)  # [R, T]
    last = jnp.max(jnp.where(starts, pos, -1), axis=1)  # [R], -1 if none
    span_start = last + len(spec.answer_prefix)  # [R]
    stop = tables.lookup(tokens) | spec.is_eos(tokens)
    after = pos >= span_start[:, None]
    span_end = jnp.min(jnp.where(stop & after, pos, t), axis=1)
    span_end = jnp.minimum(span_end, lengths)  # [R]
    in_span = after & (pos < span_end[:, None])  # [R, T]
    cols = tables.columns(tokens)  # [R, T, 2]
    value, scale = cols[..., 0], _u32(cols[..., 1])

    def body(h, c):
        v, sc, m = c
        return jnp.where(m, h * sc + _u32(jnp.maximum(v, 0)), h), None

    h, _ = jax.lax.scan(body, jnp.zeros((r,), jnp.uint32), (value.T, scale.T, in_span.T))
    ok = (last >= 0) & (span_end > span_start) & ~jnp.any(in_span & (value < 0), axis=1)
    return jnp.where(ok, _to_id(h), NO_ANSWER)


def _boxed_answers(tokens, lengths, tables: TokenTables) -> jax.Array:
    """The byte hash of each row's last ``\\boxed{...}`` content (see the module doc)."""
    r, t = tokens.shape
    cols = tables.columns(tokens)  # [R, T, K]
    prev_word = jnp.pad(cols[:, :-1, _BOX_WORD], ((0, 0), (1, 0)))  # token t-1 ends "boxed"
    opens = (prev_word == 1) & (cols[:, :, _LBRACE] == 1)
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    # state: inside (a box is open), depth, hash, pow, closed (the last box closed), bad
    zero_u = jnp.zeros((r,), jnp.uint32)
    init = (jnp.zeros((r,), bool), jnp.zeros((r,), jnp.int32), zero_u, zero_u + 1,
            jnp.zeros((r,), bool), jnp.zeros((r,), bool))

    def absorb(state, c, base_delta, base_min, full_h, full_p, head_h, head_p, go):
        inside, depth, h, p, closed, bad = state
        closes = go & (depth + c[:, base_min] <= 0)
        d = jnp.clip(depth, 1, head_h.shape[-1])
        hh = _u32(jnp.take_along_axis(head_h, (d - 1)[:, None], axis=1)[:, 0])
        hp = _u32(jnp.take_along_axis(head_p, (d - 1)[:, None], axis=1)[:, 0])
        h_close, p_close = h * hp + hh, p * hp
        h_open = h * _u32(c[:, full_p]) + _u32(c[:, full_h])  # the whole token appended
        p_open = p * _u32(c[:, full_p])
        stay = go & ~closes
        return (jnp.where(closes, False, inside),
                jnp.where(stay, depth + c[:, base_delta], depth),
                jnp.where(closes, h_close, jnp.where(stay, h_open, h)),
                jnp.where(closes, p_close, jnp.where(stay, p_open, p)),
                closed | closes,
                bad | (closes & (depth > head_h.shape[-1])))

    def body(state, x):
        c, op, ok = x  # [R, K], [R], [R]
        inside, depth, h, p, closed, bad = state
        start = ok & op
        # a new box: reset, then read the tail of the "{..." token from depth 1
        state = (inside | start, jnp.where(start, 1, depth), jnp.where(start, 0, h).astype(
            jnp.uint32), jnp.where(start, 1, p).astype(jnp.uint32), closed & ~start,
            bad & ~start)
        state = absorb(state, c, _T_DELTA, _T_MINPREF, _T_FULL_H, _T_FULL_P,
                       c[:, _T_HEAD_H:_T_HEAD_H + 1], c[:, _T_HEAD_P:_T_HEAD_P + 1], start)
        cont = ok & ~start & state[0]
        state = absorb(state, c, _DELTA, _MINPREF, _FULL_H, _FULL_P,
                       c[:, _HEAD_H:_HEAD_H + _DEPTHS], c[:, _HEAD_P:_HEAD_P + _DEPTHS], cont)
        return state, None

    xs = (jnp.swapaxes(cols, 0, 1), opens.T, valid.T)
    (inside, _, h, p, closed, bad), _ = jax.lax.scan(body, init, xs)
    ok = closed & ~inside & ~bad & (p != 1)  # closed, readable, not empty
    return jnp.where(ok, _to_id(h), NO_ANSWER)


def answer_ids(tokens: jax.Array, lengths: jax.Array, spec: SearchTokens,
               tables: TokenTables) -> jax.Array:
    """Each row's answer id (see the module docstring): [R, T], [R] -> [R] int32."""
    if spec.answer == "boxed":
        out = _boxed_answers(tokens, lengths, tables)
    else:
        out = _digit_answers(tokens, lengths, spec, tables)
    return out.astype(jnp.int32)


def answer_id_of_text(answer: str | None, kind: str = "digits") -> int:
    """The host twin of :func:`answer_ids`: for 'digits' the normalized answer (digits),
    for 'boxed' the raw content of the last ``\\boxed{}`` (``tasks.math.last_boxed``)."""
    if answer is None:
        return NO_ANSWER
    if kind == "digits":
        return int(answer) % ANSWER_MOD
    if kind == "boxed":
        if not answer:
            return NO_ANSWER
        return _hash_bytes(answer.encode("utf-8"))[0] & (ANSWER_MOD - 1)
    raise ValueError(f"answer kind {kind!r}; choose one of {list(ANSWER_KINDS)}")


def row_hash(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """A uint32 fingerprint of each row's first ``lengths`` tokens: [R, T] -> [R]."""
    pos = jnp.arange(tokens.shape[1])[None, :]
    x = jnp.where(pos < lengths[:, None], tokens + 1, 0).astype(jnp.uint32)

    def body(h, col):
        return h * jnp.uint32(1_000_003) + col, None

    h, _ = jax.lax.scan(body, lengths.astype(jnp.uint32), x.T)
    return h
