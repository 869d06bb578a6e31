"""Hugging Face process reward models behind our PRM contract.

Search drives a PRM through ``prm.extend(tokens [B, C], cache, num_new) -> (score logits
[B, C], cache)`` (``search.step.score_new``): first once with the POLICY's prompt, then
block by block with the policy's solution tokens; it reads ``sigmoid(logit)`` at every
step-end token (any token whose text contains "\\n\\n") and at the last non-eos token. HF
PRMs expect their own text, which their references build from the decoded solution with
``text.split("\\n\\n")``; an adapter rewrites the policy's token stream to that text's
tokens on the fly, inside jit, with static shapes and static per-vocabulary tables:

* the prompt call (every row's cache empty) strips the policy's fixed chat prefix and
  suffix around the problem and writes the PRM's own ``prefix + problem + suffix``;
* in solution blocks a step-end token ``t`` (``".\\n\\n"``, ``")\\n\\n"``, ``"\\n\\n\\n"``...)
  becomes ``head + read + after + tail``: ``head`` is the PRM tokenization of the text
  before the separator (``"."``), ``tail`` that of the text after it (the third "\\n" of
  ``"\\n\\n\\n"``), which begins the next step; the score is read at the last ``read``
  token. Other ids pass through unchanged (the vocabularies must agree on them), eos is
  dropped;
* byte-level BPE merges across the split: ``"$.\\n\\n"`` is ``"$"`` + ``".\\n\\n"`` but
  ``"$."`` alone is one token. A sparse PAIR table maps (previous token, step-end token)
  to the tokenization of their joined text; the previous token's PRM ids are then
  replaced (rewound out of the cache when it was written by an earlier block);
* chat templates that ``| trim`` each content (Llama 3.1) drop whitespace at a step's
  edges; the RLHFlow reference's first user turn is ``problem + " " + step0`` (the " "
  joins the first solution token: ``" ##"`` is one token). A per-row MODE (in step / at a
  step start / first solution token) selects the table row, and travels between calls
  in ``KVCache.carry`` with the previous token (for the pair table);
* the last real token of a block also gets a "peek" score: ``read`` is run after it on
  a throw-away copy of the cache, so a step cut short (or the final step before eos) has
  a score while the committed stream continues the open step.

``prm_token_stream`` runs the same code on the host and returns the PRM-side ids and the
read positions (what the tests compare with the references' text, token for token).

Two families:

* :class:`TokenProbPRM` (RLHFlow Llama3.1-8B-PRM style): the conversation is user turns
  (the problem and the first step, then one step per turn) each answered by an
  assistant ``+``, rendered by the PRM's own chat template; ``read`` = what the template
  writes between a user content and the assistant content, ``after`` = ``+`` and what
  follows up to the next user content; the score logit is ``logit(+) - logit(-)`` of the
  LM at the read position, so ``sigmoid`` gives P(+) against P(-).
* :class:`ClassifierPRM` (Qwen2.5-Math-PRM style): system + user (the problem) +
  assistant ``step0<extra_0>step1<extra_0>...``; ``read`` = ``<extra_0>`` (an id of the
  PRM's tokenizer only), no ``after``; a two-class head (Linear, ReLU, Linear) on the
  trunk's hidden state; the score logit is ``l1 - l0``.

Both keep their own KV cache, widened on the prompt call to ``cache_len`` slots (the
templates add tokens per step), and are incremental: each block is scored once.

What differs from the references' text (rare in step-formatted solutions, documented in
``build_stream_tables``): a token holding several separators (four or more newlines)
closes one step (the reference adds empty steps between); a separator split over two
tokens (".\\n" + "\\n") is not seen; the BPE re-merge is of two tokens (a step whose last
punctuation run spans three policy tokens, or a first word of several policy tokens next
to the joining " ", may tokenize differently); whitespace trimmed by a template is only
dropped when it sits in the first / step-end token (or the pair before it); and peeks
score the stream as it stands (untrimmed).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ttc_jax.config import ModelConfig
from ttc_jax.interop.hf import (
    check_unused,
    fill_params,
    read_hf_config,
    read_tensor,
    transformer_values,
)
from ttc_jax.interop.safetensors import SafetensorsCheckpoint
from ttc_jax.interop.tokenizer import render_chat
from ttc_jax.models.cache import KVCache
from ttc_jax.models.transformer import Transformer

Ids = tuple[int, ...]
SEPARATOR = b"\n\n"
IN_STEP, STEP_START, FIRST = 0, 1, 2  # the modes (table rows)
MODES = 3
_NO_KEY = np.iinfo(np.int32).max


class StreamTable(nnx.Variable):
    """A static (non-trainable) lookup table of the token-stream rewriting."""


def _gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, W, ...], idx [B, C] -> [B, C, ...] (indices clipped into range)."""
    idx = jnp.clip(idx, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


# -- the static tables ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PRMFormat:
    """How a PRM wants the conversation (ids of the PRM's tokenizer).

    Attributes:
      prefix, suffix: around the problem (``suffix`` ends where the first step begins).
      read, after: written at every step end (the score is read at the last ``read``).
      join: text between the problem and the first step when both sit in one content
        (RLHFlow: " "), or None when the first step starts a content of its own.
      trim: the template strips whitespace at the edges of each step's content.
    """

    prefix: Ids
    suffix: Ids
    read: Ids
    after: Ids
    join: str | None = None
    trim: bool = False


def _pad(rows: Sequence[Sequence[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, np.asarray([len(r) for r in rows], np.int32)


def _is_punct_or_space(text: str) -> bool:
    return bool(text) and all(c.isspace() or unicodedata.category(c)[0] not in "LN"
                              for c in text)


def build_stream_tables(policy_bytes: Sequence[bytes], encode_batch, fmt: PRMFormat, *,
                        vocab: Sequence[bytes] | None = None, policy_encode_batch=None,
                        max_pair_bytes: int = 4, max_head: int = 4) -> dict[str, np.ndarray]:
    """Numpy tables of the rewriting for every policy id (see the module docstring).

    Args:
      policy_bytes: each policy id's text as bytes (``HFTokenizer.vocab_bytes()``).
      encode_batch: [text] -> [PRM ids] (the PRM's tokenizer, no special tokens added).
      fmt: the PRM's format.
      vocab: the byte strings of the PRM's regular tokens (for the pair table: only pairs
        some token could merge across are tokenized); default ``policy_bytes``.
      policy_encode_batch: the policy's tokenizer (default ``encode_batch``): a pair is kept
        only when the policy itself splits the joined text so.
      max_pair_bytes: pairs whose joined text (separator excluded) is longer are not
        looked at (long punctuation runs such as "~~~~" + ".").
      max_head: at most this many PRM ids for a trimmed / joined token (an exotic token
        that needs more keeps its own id).

    Tables (V = len(policy_bytes), D step-end ids, P pairs):
      head_ids [MODES, V, H], head_len [MODES, V]: a token's PRM ids in each mode (a
        step-end token: its head only); next_mode [MODES, V];
      delim [V]: index of a step-end token in ``rest_*`` or -1; rest_ids [D, R],
        rest_len [D]: ``read + after + tail``;
      pair_key [P] (sorted; ``(mode * V + prev) * D + delim``), pair_ids [P, H2],
        pair_len [P]: the joined tokenization of (prev, step-end head).

    What it does not reproduce of ``text.split("\\n\\n")``: see the module docstring.
    """
    v = len(policy_bytes)
    vocab = policy_bytes if vocab is None else vocab
    cache: dict[bytes, list[int] | None] = {b"": []}

    def prefetch(items) -> None:
        todo, texts = [], []
        for b in dict.fromkeys(items):
            if b in cache:
                continue
            try:
                texts.append(b.decode("utf-8"))
                todo.append(b)
            except UnicodeDecodeError:  # part of a character: no text of its own
                cache[b] = None
        for b, ids in zip(todo, encode_batch(texts) if texts else [], strict=True):
            cache[b] = list(ids)

    def enc(b: bytes) -> list[int] | None:
        if b not in cache:
            prefetch([b])
        return cache[b]

    def strip(b: bytes, left: bool, right: bool) -> bytes:
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            return (b.lstrip() if left else b).rstrip() if right else (b.lstrip() if left else b)
        s = s.lstrip() if left else s
        return (s.rstrip() if right else s).encode("utf-8")

    join = fmt.join.encode("utf-8") if fmt.join is not None else None
    rest_base = list(fmt.read) + list(fmt.after)

    def left_text(mode: int, b: bytes) -> bytes:
        """A token's text as its mode sees it (before the separator, for a step end)."""
        if mode == FIRST and join is not None:
            return join + b
        if mode != IN_STEP and fmt.trim:
            return strip(b, True, False)
        return b

    want = []
    for b in policy_bytes:
        if SEPARATOR in b:
            pieces = b.split(SEPARATOR)
            want.append(strip(pieces[-1], True, False) if fmt.trim else pieces[-1])
            for m in range(MODES):
                h = left_text(m, pieces[0])
                want.append(strip(h, False, True) if fmt.trim else h)
        elif fmt.trim or join is not None:
            want += [left_text(STEP_START, b), left_text(FIRST, b)]
    prefetch(want)
    heads = [[None] * v for _ in range(MODES)]
    next_mode = np.zeros((MODES, v), np.int32)
    delim = np.full((v,), -1, np.int32)
    rests: list[list[int]] = []
    for i, b in enumerate(policy_bytes):
        is_delim = SEPARATOR in b
        if is_delim:
            delim[i] = len(rests)
            pieces = b.split(SEPARATOR)
            tail = strip(pieces[-1], True, False) if fmt.trim else pieces[-1]
            t_ids = enc(tail)
            rests.append(rest_base + (t_ids if t_ids is not None else []))
            after_mode = STEP_START if not tail else IN_STEP
        for m in range(MODES):
            if is_delim:
                h = left_text(m, pieces[0])
                h = strip(h, False, True) if fmt.trim else h
                ids = enc(h)
                heads[m][i] = ids if ids is not None else []
                next_mode[m, i] = after_mode
                continue
            if m == IN_STEP or (m == STEP_START and not fmt.trim) or (
                    m == FIRST and join is None and not fmt.trim):
                heads[m][i] = [i]
                next_mode[m, i] = IN_STEP
                continue
            t = left_text(m, b)
            ids = enc(t)
            if ids is None or len(ids) > max_head:  # partial character / exotic: join, id
                ids = (enc(join) if m == FIRST and join is not None else []) + [i]
            heads[m][i] = ids
            # whitespace at a step start is trimmed away; the next token is still first
            next_mode[m, i] = STEP_START if (m == STEP_START and not t) else IN_STEP
    pairs = _pair_table(policy_bytes, vocab, heads, next_mode, delim, enc, prefetch, strip,
                        left_text, fmt, policy_encode_batch or encode_batch, max_pair_bytes)
    width = max(len(h) for hm in heads for h in hm)
    head_ids = np.stack([_pad(heads[m], width)[0] for m in range(MODES)])
    head_len = np.stack([_pad(heads[m], width)[1] for m in range(MODES)])
    rest_ids, rest_len = _pad(rests or [[]])
    d = max(len(rests), 1)
    if MODES * v * d >= _NO_KEY:
        raise ValueError(f"pair keys overflow int32 ({v} ids x {d} step ends)")
    keys = sorted(pairs)
    pair_ids, pair_len = _pad([pairs[k] for k in keys] or [[]])
    pair_key = np.asarray([(m * v + p) * d + int(delim[q]) for m, p, q in keys] or [_NO_KEY],
                          np.int32)
    order = np.argsort(pair_key, kind="stable")
    return dict(head_ids=head_ids, head_len=head_len, next_mode=next_mode, delim=delim,
                rest_ids=rest_ids, rest_len=rest_len, pair_key=pair_key[order],
                pair_ids=pair_ids[order], pair_len=pair_len[order])


def _pair_table(policy_bytes, vocab, heads, next_mode, delim, enc, prefetch, strip, left_text,
                fmt, policy_encode_batch, max_pair_bytes):
    """{(mode, prev, step-end id): joined ids} where tokenizing the previous token's text
    with the step-end head differs from the two tokenized apart. Only pairs a PRM token
    spans (some suffix of the left text + some prefix of the head is a token), or whose
    whitespace a trimming template strips together, can differ; only those are encoded."""
    v = len(policy_bytes)
    cands = [i for i, b in enumerate(policy_bytes) if SEPARATOR not in b and b
             and _is_punct_or_space(b.decode("utf-8", "replace")) and "\ufffd" not in
             b.decode("utf-8", "replace")]
    dels = [i for i in range(v) if delim[i] >= 0]
    heads0 = {q: policy_bytes[q].split(SEPARATOR)[0] for q in dels}
    max_len = 16
    head_prefixes = {h[:k] for h in heads0.values() for k in range(1, len(h) + 1)}
    # left parts a of tokens a + b whose b starts a head
    lefts_of: dict[bytes, set[bytes]] = {}
    for t in set(vocab):
        if len(t) > max_len:
            continue
        for k in range(1, len(t)):
            if t[k:] in head_prefixes:
                lefts_of.setdefault(t[k:], set()).add(t[:k])
    out, todo = {}, []
    same = fmt.join is None and not fmt.trim  # every mode reads a token alike
    for m in range(1 if same else MODES):
        by_suffix: dict[bytes, list[int]] = {}
        ws_end = []
        lt = {}
        for p in cands:
            s = left_text(m, policy_bytes[p])
            lt[p] = s
            for k in range(1, min(len(s), max_len) + 1):
                by_suffix.setdefault(s[-k:], []).append(p)
            if fmt.trim and s[-1:].isspace():
                ws_end.append(p)
        for q in dels:
            h = heads0[q]
            ps = set()
            for k in range(1, len(h) + 1):
                for a in lefts_of.get(h[:k], ()):
                    ps.update(by_suffix.get(a, ()))
            if fmt.trim and not h.strip():
                ps.update(ws_end)
            for p in ps:
                joined = lt[p] + h
                if len(joined) <= max_pair_bytes:
                    todo.append(((m, p, q), strip(joined, False, True) if fmt.trim else joined))
    prefetch([j for _, j in todo])
    differ = []
    for (m, p, q), joined in todo:
        ids = enc(joined)
        apart = heads[m][p] + heads[int(next_mode[m, p])][q]
        if ids is not None and ids != apart:
            differ.append(((m, p, q), ids))
    # keep the pairs the policy's own tokenizer writes (its canonical split of the text)
    whole = {(p, q): policy_bytes[p] + policy_bytes[q] for (_, p, q), _ in differ}
    canon = policy_encode_batch([w.decode("utf-8") for w in whole.values()]) if whole else []
    canon = {k: list(c) for k, c in zip(whole, canon, strict=True)}
    for (m, p, q), ids in differ:
        if canon[(p, q)] == [p, q]:
            for mm in (range(MODES) if same else (m,)):
                out[(mm, p, q)] = ids
    return out


def toy_tables(vocab_size: int, delimiter_ids: Sequence[int], fmt: PRMFormat
               ) -> dict[str, np.ndarray]:
    """Tables for a vocabulary without text (tests): each delimiter id is a bare separator
    (``read + after`` in its place), every other id passes through."""
    return build_stream_tables([SEPARATOR if i in set(delimiter_ids) else bytes([1])
                                for i in range(vocab_size)], lambda texts: [[] for _ in texts], fmt)


TABLE_NAMES = ("head_ids", "head_len", "next_mode", "delim", "rest_ids", "rest_len",
               "pair_key", "pair_ids", "pair_len")


def _encode_state(prev, mode_prev, mode):
    """The per-row state kept in ``KVCache.carry`` (exact in float32 below 2**24)."""
    return ((prev + 1) * 16 + mode_prev * 4 + mode).astype(jnp.float32)


def _decode_state(carry):
    s = jnp.where(jnp.isfinite(carry), carry, float(FIRST)).astype(jnp.int32)
    return s // 16 - 1, (s // 4) % 4, s % 4


def stream_block(t: dict, tokens: jax.Array, num_new: jax.Array, carry: jax.Array, *,
                 eos_ids: Ids, n_read: int, span: int):
    """One solution block rewritten to PRM ids (pure; the jitted extend and the host
    ``prm_token_stream`` both run it).

    Args:
      t: the tables (``TABLE_NAMES``), as arrays.
      tokens [B, C], num_new [B]: the policy's block.
      carry [B]: the row state (previous token and modes) from the last call.
    Returns:
      (out [B, C*span] PRM ids, total [B] valid ones, read [B, C] output slot of each
      step end's score (-1 elsewhere), rewind [B] PRM ids to drop from the cache first,
      is_end [B, C] step-end tokens, last [B] last real position (-1 none), new carry [B]).
    """
    b, c = tokens.shape
    head_ids, head_len, next_mode, delim = t["head_ids"], t["head_len"], t["next_mode"], t["delim"]
    v, d, npair = delim.shape[0], t["rest_len"].shape[0], t["pair_key"].shape[0]
    prev, m_prev, m0 = _decode_state(carry)
    pos = jnp.arange(c)[None, :]
    valid = pos < num_new[:, None]
    real = valid & ~jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))
    in_tab = (tokens >= 0) & (tokens < v)
    xi = jnp.clip(tokens, 0, v - 1)

    def body(m, col):
        x, r, it = col
        return jnp.where(r, jnp.where(it, next_mode[m, x], IN_STEP), m), m

    m_end, modes = jax.lax.scan(body, m0, (xi.T, real.T, in_tab.T))
    modes = modes.T  # [B, C] the mode each token is read in
    di = jnp.where(in_tab & real, delim[xi], -1)
    is_end = di >= 0
    dic = jnp.maximum(di, 0)
    p = jnp.concatenate([prev[:, None], tokens[:, :-1]], axis=1)
    pm = jnp.concatenate([m_prev[:, None], modes[:, :-1]], axis=1)
    p_ok = jnp.concatenate([prev[:, None] >= 0, real[:, :-1]], axis=1) & (p >= 0) & (p < v)
    key = (pm * v + jnp.clip(p, 0, v - 1)) * d + dic
    kc = jnp.clip(jnp.searchsorted(t["pair_key"], key), 0, npair - 1)
    hit = is_end & p_ok & (t["pair_key"][kc] == key)
    merged = jnp.concatenate([hit[:, 1:], jnp.zeros((b, 1), bool)], axis=1)
    rewind = jnp.where(hit[:, 0], head_len[m_prev, jnp.clip(prev, 0, v - 1)], 0)
    own = jnp.where(in_tab, head_len[modes, xi], 1)
    hl = jnp.where(hit, t["pair_len"][kc], own)
    count = jnp.where(real & ~merged, hl + jnp.where(is_end, t["rest_len"][dic], 0), 0)
    end = jnp.cumsum(count, axis=1)
    start = end - count
    total = end[:, -1]
    wx = c * span
    j = jnp.arange(wx)[None, :, None]
    src = jnp.clip(jnp.sum(end[:, None, :] <= j, axis=2), 0, c - 1)  # [B, Wx]
    g = lambda a: jnp.take_along_axis(a, src, axis=1)  # noqa: E731
    w = jnp.arange(wx)[None, :] - g(start)
    s_hl = g(hl)
    from_pair = t["pair_ids"][g(kc), jnp.clip(w, 0, t["pair_ids"].shape[1] - 1)]
    from_head = jnp.where(g(in_tab), head_ids[g(modes), g(xi),
                                               jnp.clip(w, 0, head_ids.shape[2] - 1)], g(tokens))
    from_rest = t["rest_ids"][g(dic), jnp.clip(w - s_hl, 0, t["rest_ids"].shape[1] - 1)]
    out = jnp.where(w < s_hl, jnp.where(g(hit), from_pair, from_head), from_rest)
    read = jnp.where(is_end, start + hl + n_read - 1, -1)
    last = jnp.max(jnp.where(real, pos, -1), axis=1)  # [B]
    lc = jnp.maximum(last, 0)[:, None]
    new = _encode_state(jnp.take_along_axis(tokens, lc, 1)[:, 0],
                        jnp.take_along_axis(modes, lc, 1)[:, 0], m_end)
    return (out.astype(jnp.int32), total, read, rewind, is_end, last,
            jnp.where(last >= 0, new, carry))


_stream_jit = jax.jit(stream_block, static_argnames=("eos_ids", "n_read", "span"))


def prompt_block(tokens: jax.Array, num_new: jax.Array, *, policy_prefix: Ids,
                 policy_suffix: Ids, prm_prefix: Ids, prm_suffix: Ids):
    """Policy prompt rows -> (the PRM's prompt [B, W'], its lengths [B])."""
    b, w = tokens.shape
    pp, ps, qp, qs = len(policy_prefix), len(policy_suffix), len(prm_prefix), len(prm_suffix)
    width = max(w - pp - ps + qp + qs, 1)
    plen = jnp.maximum(num_new - pp - ps, 0)  # [B] problem tokens
    j = jnp.arange(width)[None, :]
    src = _gather_rows(tokens, jnp.broadcast_to(pp + j - qp, (b, width)))
    tmpl = jnp.asarray(tuple(prm_prefix) + tuple(prm_suffix) + (0,), jnp.int32)
    in_suffix = j >= qp + plen[:, None]
    tmpl_idx = jnp.where(j < qp, j, qp + j - qp - plen[:, None])
    out = jnp.where((j < qp) | in_suffix, tmpl[jnp.clip(tmpl_idx, 0, qp + qs)], src)
    return out, plen + qp + qs


class ChatPRMAdapter(nnx.Module):
    """The shared token-stream rewriting (see the module docstring).

    Args:
      lm: the trunk (a Transformer).
      policy_prefix, policy_suffix: ids the policy prompt has before and after the problem.
      prm_prefix, prm_suffix, read, after: the PRM's format (``PRMFormat``; ids of the
        PRM's tokenizer).
      eos_ids: the policy's end-of-solution ids (dropped).
      tables: ``build_stream_tables(...)`` (real vocabularies), or None with
        ``delimiter_ids``: bare separator ids (``toy_tables``; tests).
      cache_len: the PRM cache capacity (the cache handed in is widened to it).
      stream_chunk: positions of the rewritten stream the trunk runs per call (default:
        twice the block's tokens). A block of C policy tokens becomes a stream of at most
        C * span ids (span: the longest rewrite of one token, e.g. 12 with a chat template
        around every possible step end) but usually about C plus a template per step
        end; the trunk runs over ``ceil(longest row's stream / stream_chunk)`` chunks,
        not over the whole C * span width.
    """

    def __init__(self, lm: Transformer, *, policy_prefix: Ids, policy_suffix: Ids,
                 prm_prefix: Ids, prm_suffix: Ids, read: Ids, after: Ids, eos_ids: Ids,
                 tables: dict | None = None, delimiter_ids: Sequence[int] | None = None,
                 cache_len: int | None = None, stream_chunk: int | None = None):
        if not read:
            raise ValueError("read template is empty; the score needs a read position")
        self.lm = lm
        self.cfg: ModelConfig = lm.cfg
        self.policy_prefix, self.policy_suffix = tuple(policy_prefix), tuple(policy_suffix)
        self.prm_prefix, self.prm_suffix = tuple(prm_prefix), tuple(prm_suffix)
        self.read, self.after = tuple(read), tuple(after)
        self.eos_ids = tuple(int(e) for e in eos_ids)
        self.cache_len = cache_len or lm.cfg.max_seq_len
        self.stream_chunk = stream_chunk
        if tables is None:
            if delimiter_ids is None:
                raise ValueError("pass tables= (build_stream_tables) or delimiter_ids=")
            tables = toy_tables(lm.cfg.vocab_size, delimiter_ids,
                                PRMFormat(self.prm_prefix, self.prm_suffix, self.read,
                                          self.after))
        self.span = int(max(int(np.max(tables["head_len"])), int(np.max(tables["pair_len"])))
                        + int(np.max(tables["rest_len"])))
        self.span = max(self.span, 1)
        for name in TABLE_NAMES:
            setattr(self, name, StreamTable(jnp.asarray(tables[name], jnp.int32)))

    def tables(self) -> dict:
        return {n: getattr(self, n)[...] for n in TABLE_NAMES}

    # -- the score head (subclasses) --------------------------------------------------------

    def score_from_hidden(self, h: jax.Array) -> jax.Array:
        """[..., D] final hidden states -> [...] float32 score logits."""
        raise NotImplementedError

    # -- pieces -----------------------------------------------------------------------------

    def _widen(self, cache: KVCache) -> KVCache:
        extra = self.cache_len - cache.capacity
        if extra <= 0:
            return cache
        if hasattr(cache, "widen"):  # paged: more table entries, same pool
            return cache.widen(self.cache_len)
        pad = ((0, 0), (0, 0), (0, 0), (0, extra), (0, 0))
        return cache.replace(k=jnp.pad(cache.k, pad), v=jnp.pad(cache.v, pad))

    def _prompt_ids(self, tokens, num_new):
        return prompt_block(tokens, num_new, policy_prefix=self.policy_prefix,
                            policy_suffix=self.policy_suffix, prm_prefix=self.prm_prefix,
                            prm_suffix=self.prm_suffix)

    def _stream(self, tokens, num_new, carry):
        return stream_block(self.tables(), tokens, num_new, carry, eos_ids=self.eos_ids,
                            n_read=len(self.read), span=self.span)

    def _prompt(self, tokens, cache, num_new):
        """Policy prompt rows -> the PRM's prompt, written to the cache."""
        out, n = self._prompt_ids(tokens, num_new)
        _, cache = self.lm.extend_hidden(out, cache, n)
        carry = jnp.full(cache.lengths.shape, float(FIRST), jnp.float32)
        return jnp.zeros(tokens.shape, jnp.float32), cache.replace(carry=carry)

    def _steps(self, tokens, cache, num_new, *, one_chunk: bool = False):
        """Solution tokens -> the PRM's stream; scores at step ends and a peek.

        The trunk runs over the stream in chunks of ``stream_chunk`` positions, as many
        as the longest row's stream needs. ``one_chunk`` (static; the planner's unit
        program): exactly one chunk, no loop (rows with longer streams are cut)."""
        b, c = tokens.shape
        a = len(self.read)
        out, total, read, rewind, is_end, last, carry = self._stream(tokens, num_new,
                                                                     cache.carry)
        cache = cache.replace(lengths=cache.lengths - rewind)
        wx = out.shape[1]
        chunk = min(wx, self.stream_chunk or 2 * c)
        out = jnp.pad(out, ((0, 0), (0, -(-wx // chunk) * chunk - wx)))

        def run(i, carry):
            cache, scores = carry
            off = i * chunk
            blk = jax.lax.dynamic_slice_in_dim(out, off, chunk, axis=1)
            h, cache = self.lm.extend_hidden(blk, cache, jnp.clip(total - off, 0, chunk))
            rel = read - off  # [B, C] each step end's read position in this chunk
            inside = is_end & (rel >= 0) & (rel < chunk)
            got = self.score_from_hidden(_gather_rows(h, rel))
            return cache, jnp.where(inside, got, scores)

        carry0 = (cache, jnp.zeros((b, c), jnp.float32))
        if one_chunk:
            cache, scores = run(0, carry0)
        else:
            n_chunks = jnp.max(-(-total // chunk))
            cache, scores = jax.lax.fori_loop(0, n_chunks, run, carry0)
        # peek: the last real (non-eos) token, if not a step end, scored as a step end
        pos = jnp.arange(c)[None, :]
        last_end = jnp.take_along_axis(is_end, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
        peek = (last >= 0) & ~last_end
        reads = jnp.broadcast_to(jnp.asarray(self.read, jnp.int32), (b, a))
        hp, peeked = self.lm.extend_hidden(reads, cache, jnp.where(peek, a, 0))
        peek_score = self.score_from_hidden(hp[:, a - 1])  # [B]
        scores = jnp.where(peek[:, None] & (pos == last[:, None]), peek_score[:, None], scores)
        # The peek's keys/values sit past each row's length (a contiguous row's own slots,
        # or pages the paged cache gave it privately): keep its buffers with the old
        # lengths and tables, so the peek costs no copy of the cache.
        return scores, _keep_buffers(cache, peeked).replace(carry=carry)

    def empty_step_logits(self, cache: KVCache) -> jax.Array:
        """[B] score logits of an EMPTY step appended to each row's committed stream:
        ``read`` run after the cache's content on a throw-away copy (the cache is not
        changed). After a step end the stream already holds ``read + after`` (+ the text
        after the separator inside the step-end token), so this is the verdict the
        references give the trailing empty piece of ``text.split("\\n\\n")`` when the text
        ends in a step end: RLHFlow, the empty user turn answered by "+" (read at the
        reference's index -3); Qwen2.5-Math-PRM (search-and-learn's
        ``answer.replace("\\n\\n", "<extra_0>") + "<extra_0>"``), the second of two
        consecutive ``<extra_0>``. Search calls it under ``rules="search_and_learn"``
        (``search.step.score_new``) and uses it only for rows whose last real token
        ends a step."""
        b, a = cache.lengths.shape[0], len(self.read)
        reads = jnp.broadcast_to(jnp.asarray(self.read, jnp.int32), (b, a))
        h, _ = self.lm.extend_hidden(reads, self._widen(cache), jnp.full((b,), a, jnp.int32))
        return self.score_from_hidden(h[:, a - 1])

    def prefill(self, tokens: jax.Array, cache: KVCache,
                num_new: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """``extend`` of a prompt into an empty cache, with no ``lax.cond`` over the cache
        (a conditional carrying the cache can cost a copy of it)."""
        b, c = tokens.shape
        num_new = jnp.full((b,), c, jnp.int32) if num_new is None else num_new
        return self._prompt(tokens, self._widen(cache), num_new.astype(jnp.int32))

    def extend_steps(self, tokens: jax.Array, cache: KVCache,
                     num_new: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """``extend`` of solution tokens after a prefilled prompt, with no ``lax.cond``."""
        b, c = tokens.shape
        num_new = jnp.full((b,), c, jnp.int32) if num_new is None else num_new
        return self._steps(tokens, self._widen(cache), num_new.astype(jnp.int32))

    def extend(self, tokens: jax.Array, cache: KVCache,
               num_new: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """The PRM contract: score logits [B, C] of the new tokens, the updated cache.
        (Search calls ``prefill`` / ``extend_steps``, which skip this call's ``lax.cond``
        on whether the cache is empty.)"""
        b, c = tokens.shape
        num_new = jnp.full((b,), c, jnp.int32) if num_new is None else num_new
        num_new = num_new.astype(jnp.int32)
        cache = self._widen(cache)
        return jax.lax.cond(jnp.all(cache.lengths == 0), self._prompt, self._steps,
                            tokens, cache, num_new)


def _keep_buffers(cache, scratch):
    """``cache`` with the key/value buffers of ``scratch`` (a later call on it whose table
    and length changes are thrown away)."""
    if hasattr(cache, "pages"):
        return cache.replace(kv=scratch.kv)
    return cache.replace(k=scratch.k, v=scratch.v)


@dataclasses.dataclass
class TokenStream:
    """What an adapter writes to its cache for one policy row (``prm_token_stream``).

    Attributes:
      ids: the PRM-side ids (prompt, then the solution's stream; no peek reads).
      reads: {solution position of a step-end token: index in ``ids`` of its score read}.
      peeks: {solution position: index its peek read would have (``read`` appended to
        ``ids`` as they stood after that block)}.
    """

    ids: list[int]
    reads: dict[int, int]
    peeks: dict[int, int]


def prm_token_stream(adapter: ChatPRMAdapter, prompt_ids: Sequence[int],
                     solution_ids: Sequence[int], *, width: int = 8) -> TokenStream:
    """The PRM-side ids the adapter writes for one row, fed as search feeds it (the
    prompt, then blocks of ``width`` solution tokens), through the same functions its
    jitted ``extend`` runs."""
    p = jnp.asarray([list(prompt_ids)], jnp.int32)
    out, n = adapter._prompt_ids(p, jnp.asarray([len(prompt_ids)], jnp.int32))
    ids = [int(i) for i in np.asarray(out[0, :int(n[0])])]
    carry = jnp.full((1,), float(FIRST), jnp.float32)
    reads, peeks = {}, {}
    sol = list(solution_ids)
    tables = adapter.tables()
    for k in range(0, len(sol), width):
        blk = sol[k:k + width]
        toks = jnp.asarray([blk + [0] * (width - len(blk))], jnp.int32)
        out, total, read, rewind, is_end, last, carry = _stream_jit(
            tables, toks, jnp.asarray([len(blk)], jnp.int32), carry, eos_ids=adapter.eos_ids,
            n_read=len(adapter.read), span=adapter.span)
        del ids[len(ids) - int(rewind[0]):]
        base = len(ids)
        ids += [int(i) for i in np.asarray(out[0, :int(total[0])])]
        for i in np.flatnonzero(np.asarray(is_end[0])):
            reads[k + int(i)] = base + int(read[0, i])
        li = int(last[0])
        if li >= 0 and not bool(is_end[0, li]):
            peeks[k + li] = len(ids) + len(adapter.read) - 1
    return TokenStream(ids, reads, peeks)


class TokenProbPRM(ChatPRMAdapter):
    """An LM judging each step with a "+" / "-" token (RLHFlow Llama3.1-8B-PRM style)."""

    def __init__(self, lm: Transformer, *, plus_id: int, minus_id: int, **kwargs):
        super().__init__(lm, **kwargs)
        self.plus_id, self.minus_id = int(plus_id), int(minus_id)

    def score_from_hidden(self, h):
        if self.cfg.tie_embeddings:
            w = self.lm.embed[...][jnp.asarray([self.plus_id, self.minus_id])]  # [2, D]
        else:
            w = self.lm.lm_head[...][:, jnp.asarray([self.plus_id, self.minus_id])].T
        two = jnp.einsum("...D,ND->...N", h.astype(jnp.float32), w.astype(jnp.float32))
        return two[..., 0] - two[..., 1]  # logit(+) - logit(-): softmax over the two


class ClassifierPRM(ChatPRMAdapter):
    """A trunk plus a two-class head read at ``<extra_0>`` (Qwen2.5-Math-PRM style).

    Head: ``l = W2 relu(W1 h + b1) + b2`` with W1 [D, D], W2 [D, 2] (our layout).
    """

    def __init__(self, lm: Transformer, **kwargs):
        super().__init__(lm, **kwargs)
        d, pd = lm.cfg.d_model, lm.cfg.jnp_param_dtype
        z = lambda *s: nnx.Param(jnp.zeros(s, pd), out_sharding=(None,) * len(s),  # noqa: E731
                                 eager_sharding=False)
        self.w1, self.b1, self.w2, self.b2 = z(d, d), z(d), z(d, 2), z(2)

    def score_from_hidden(self, h):
        h = h.astype(jnp.float32)
        x = jax.nn.relu(h @ self.w1[...].astype(jnp.float32) + self.b1[...].astype(jnp.float32))
        two = x @ self.w2[...].astype(jnp.float32) + self.b2[...].astype(jnp.float32)
        return two[..., 1] - two[..., 0]


# -- formats from the PRM's chat template -----------------------------------------------------

_M0, _M1, _MA = "\x01USER0\x01", "\x01USER1\x01", "\x01ASSISTANT\x01"
LLAMA3_PRM_FALLBACK = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
                       "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                       "+<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _render(tok, messages, date=None) -> str:
    return tok.render_chat(messages, add_generation_prompt=False, date=date)


def _trims(tok, messages, index: int, date=None) -> bool:
    """Whether the template strips whitespace around message ``index``'s content."""
    msgs = [dict(m) for m in messages]
    msgs[index]["content"] = " \n" + msgs[index]["content"] + " \n"
    text = _render(tok, msgs, date)
    return (" \n" + messages[index]["content"] + " \n") not in text


def token_prob_format(prm_tok, *, date=None) -> tuple[PRMFormat, int, int]:
    """(format, plus id, minus id) of an RLHFlow-style PRM from its tokenizer's chat
    template: the reference's conversation ``[user: problem + " " + step0, assistant: "+",
    user: step1, assistant: "+", ...]`` rendered on markers. Built-in Llama 3 strings
    when the tokenizer has no template."""
    enc = prm_tok.encode
    if getattr(prm_tok, "chat_template", None) is None:
        prefix, read, after = LLAMA3_PRM_FALLBACK
        trim = True
    else:
        def conv(a):
            return [{"role": "user", "content": _M0}, {"role": "assistant", "content": a},
                    {"role": "user", "content": _M1}, {"role": "assistant", "content": a}]
        text = _render(prm_tok, conv(_MA), date)
        prefix, rest = text.split(_M0)
        read, rest = rest.split(_MA, 1)
        between, rest = rest.split(_M1)
        if rest.split(_MA)[0] != read:
            raise ValueError("the PRM's chat template renders its turns differently; "
                             "the adapter needs one read template per step")
        mid = _render(prm_tok, conv("+"), date).split(_M0)[1].split(_M1)[0]
        if not mid.startswith(read):
            raise ValueError(f"the PRM's chat template does not write the assistant '+' "
                             f"after {read!r}")
        after = mid[len(read):]
        trim = _trims(prm_tok, conv("+"), 2, date)
    fmt = PRMFormat(prefix=tuple(enc(prefix)), suffix=(), read=tuple(enc(read)),
                    after=tuple(enc(after)), join=" ", trim=trim)
    return fmt, enc("+")[-1], enc("-")[-1]


def classifier_format(prm_tok, *, system: str | None = QWEN_PRM_SYSTEM,
                      separator: str = "<extra_0>", date=None) -> PRMFormat:
    """The format of a Qwen2.5-Math-PRM from its tokenizer's chat template: system, user
    (the problem), assistant ``step0<extra_0>step1<extra_0>...`` (the model card's)."""
    sep = prm_tok.token_to_id(separator)
    if sep is None:
        raise ValueError(f"the PRM tokenizer has no {separator} token; is it a "
                         f"Qwen2.5-Math-PRM's? (pass prm_tokenizer= / prm_path=: the policy's "
                         f"tokenizer lacks it)")
    msgs = ([] if system is None else [{"role": "system", "content": system}]) + [
        {"role": "user", "content": _M0}, {"role": "assistant", "content": _MA}]
    if getattr(prm_tok, "chat_template", None) is None:
        text = render_chat("qwen", system=system, user=_M0, add_generation_prompt=True) + _MA
        trim = False
    else:
        text = _render(prm_tok, msgs, date)
        trim = _trims(prm_tok, msgs, len(msgs) - 1, date)
    prefix, rest = text.split(_M0)
    suffix = rest.split(_MA)[0]
    return PRMFormat(prefix=tuple(prm_tok.encode(prefix)), suffix=tuple(prm_tok.encode(suffix)),
                     read=(sep,), after=(), join=None, trim=trim)


def chat_split(tokenizer, fmt: str | None, system: str | None, marker: str = "\x00PROBLEM\x00",
               *, date=None):
    """(prefix ids, suffix ids) of a one-turn chat prompt around the user text: the
    tokenizer's own template when it has one (``render_chat``), else the built-in ``fmt``."""
    if getattr(tokenizer, "chat_template", None) is not None:
        text = tokenizer.render_chat(system=system, user=marker, date=date)
    else:
        text = render_chat(fmt, system=system, user=marker)
    head, tail = text.split(marker)
    return tuple(tokenizer.encode(head)), tuple(tokenizer.encode(tail))


def check_vocab_compatible(policy_tok, prm_tok) -> None:
    """Raises a ValueError when the PRM's tokenizer reads some policy id as other text."""
    from ttc_jax.interop import tokenizer as tk

    if hasattr(tk, "check_compatible"):
        tk.check_compatible(policy_tok, prm_tok)
        return
    pb, qb = policy_tok.vocab_bytes(), prm_tok.vocab_bytes()
    bad = [i for i in range(len(pb)) if i >= len(qb) or pb[i] != qb[i]]
    if bad:
        raise ValueError(f"the policy and PRM tokenizers disagree on {len(bad)} policy ids "
                         f"(e.g. id {bad[0]}); the PRM must read the policy's ids")


def _prm_tokenizer(tokenizer, prm_tokenizer, prm_path):
    if prm_tokenizer is None and prm_path is not None:
        from ttc_jax.interop.tokenizer import HFTokenizer

        prm_tokenizer = HFTokenizer.from_folder(prm_path)
    if prm_tokenizer is None:
        return tokenizer
    if prm_tokenizer is not tokenizer:
        check_vocab_compatible(tokenizer, prm_tokenizer)
    return prm_tokenizer


def _encode_batch(tok):
    inner = getattr(tok, "_tok", None)
    if inner is not None and hasattr(inner, "encode_batch"):
        return lambda texts: [e.ids for e in inner.encode_batch(texts, add_special_tokens=False)]
    return lambda texts: [tok.encode(t) for t in texts]


def adapter_kwargs(tokenizer, prm_tok, fmt: PRMFormat, *, policy_format: str | None,
                   policy_system: str | None, policy_date=None) -> dict:
    """The ChatPRMAdapter arguments for a policy tokenizer and a PRM format."""
    pp, ps = chat_split(tokenizer, policy_format, policy_system, date=policy_date)
    tables = build_stream_tables(tokenizer.vocab_bytes(), _encode_batch(prm_tok), fmt,
                                 vocab=prm_tok.vocab_bytes(),
                                 policy_encode_batch=_encode_batch(tokenizer))
    return dict(policy_prefix=pp, policy_suffix=ps, prm_prefix=fmt.prefix,
                prm_suffix=fmt.suffix, read=fmt.read, after=fmt.after,
                eos_ids=tuple(getattr(tokenizer, "eos_ids", (tokenizer.eos_id,))),
                tables=tables)


def token_prob_prm_kwargs(tokenizer, prm_tokenizer=None, *, prm_path: str | Path | None = None,
                          policy_format: str | None = "llama3",
                          policy_system: str | None = None, policy_date=None,
                          prm_date=None) -> dict:
    """TokenProbPRM arguments for an RLHFlow-style "+"/"-" PRM (Llama-3.2 policy,
    Llama-3.1 PRM): the format from the PRM tokenizer's chat template (``prm_tokenizer``,
    or the one in ``prm_path``, or the policy's), tables over the policy's vocabulary."""
    prm_tok = _prm_tokenizer(tokenizer, prm_tokenizer, prm_path)
    fmt, plus, minus = token_prob_format(prm_tok, date=prm_date)
    return dict(adapter_kwargs(tokenizer, prm_tok, fmt, policy_format=policy_format,
                               policy_system=policy_system, policy_date=policy_date),
                plus_id=plus, minus_id=minus)


def classifier_prm_kwargs(tokenizer, prm_tokenizer=None, *,
                          prm_path: str | Path | None = None,
                          policy_format: str | None = "qwen",
                          policy_system: str | None = None, policy_date=None,
                          prm_system: str | None = QWEN_PRM_SYSTEM, prm_date=None) -> dict:
    """ClassifierPRM arguments for a Qwen2.5-Math-PRM (its ``<extra_0>`` comes from the
    PRM's tokenizer: ``prm_tokenizer`` or the one in ``prm_path``)."""
    prm_tok = _prm_tokenizer(tokenizer, prm_tokenizer, prm_path)
    fmt = classifier_format(prm_tok, system=prm_system, date=prm_date)
    return adapter_kwargs(tokenizer, prm_tok, fmt, policy_format=policy_format,
                          policy_system=policy_system, policy_date=policy_date)


# -- loading --------------------------------------------------------------------------------

def _has_tokenizer(path) -> bool:
    return (Path(path) / "tokenizer.json").exists()


def load_token_prob_prm(path: str | Path, tokenizer=None, prm_tokenizer=None, *,
                        dtype: str = "float32", cache_len: int = 4096, mesh=None,
                        policy_format: str | None = "llama3",
                        policy_system: str | None = None, **adapter_kwargs) -> TokenProbPRM:
    """An RLHFlow-style PRM from a local Llama checkpoint folder. With the policy's
    ``tokenizer`` the adapter arguments are built (``token_prob_prm_kwargs``; the PRM
    tokenizer from ``prm_tokenizer`` or the folder); else ``adapter_kwargs`` give them."""
    from ttc_jax.interop.hf import load_hf_model

    if tokenizer is not None:
        adapter_kwargs = dict(token_prob_prm_kwargs(
            tokenizer, prm_tokenizer, prm_path=path if _has_tokenizer(path) else None,
            policy_format=policy_format, policy_system=policy_system), **adapter_kwargs)
    lm = load_hf_model(path, dtype=dtype, max_seq_len=cache_len, mesh=mesh)
    return TokenProbPRM(lm, cache_len=cache_len, **adapter_kwargs)


CLASSIFIER_ARCHITECTURES = ("Qwen2ForProcessRewardModel",)


def load_classifier_prm(path: str | Path, tokenizer=None, prm_tokenizer=None, *,
                        dtype: str = "float32", cache_len: int = 4096, mesh=None,
                        policy_format: str | None = "qwen", policy_system: str | None = None,
                        **adapter_kwargs) -> ClassifierPRM:
    """A Qwen2.5-Math-PRM from a local folder (``model.*`` trunk + ``score.0``/``score.2``
    head); the adapter arguments as in :func:`load_token_prob_prm`
    (``classifier_prm_kwargs``)."""
    if tokenizer is not None:
        adapter_kwargs = dict(classifier_prm_kwargs(
            tokenizer, prm_tokenizer, prm_path=path if _has_tokenizer(path) else None,
            policy_format=policy_format, policy_system=policy_system), **adapter_kwargs)
    cfg, _ = read_hf_config(path, dtype=dtype, max_seq_len=cache_len,
                            architectures=CLASSIFIER_ARCHITECTURES, tie_embeddings=True)
    ckpt = SafetensorsCheckpoint(path)
    values, used = transformer_values(ckpt, cfg)
    d = cfg.d_model
    head = {"w1": ("score.0.weight", (d, d), lambda w: w.T),
            "b1": ("score.0.bias", (d,), lambda b: b),
            "w2": ("score.2.weight", (2, d), lambda w: w.T),
            "b2": ("score.2.bias", (2,), lambda b: b)}
    check_unused(ckpt, used | {v[0] for v in head.values()})
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    lm = fill_params(abstract, values, dtype=cfg.jnp_param_dtype, mesh=mesh)
    prm = ClassifierPRM(lm, cache_len=cache_len, **adapter_kwargs)
    for name, (tensor, shape, fn) in head.items():
        arr = np.asarray(fn(read_tensor(ckpt, tensor, shape, cfg))).astype(cfg.jnp_param_dtype)
        if mesh is not None:  # replicated
            arr = jax.device_put(arr, jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec()))
        getattr(prm, name).set_value(jnp.asarray(arr))
    return prm
