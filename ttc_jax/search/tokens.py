"""What the search needs to know about token ids, and on-device text functions over rows.

``SearchTokens`` is a small frozen (hashable, jit-static) description of the special ids:
where a step ends, where a solution ends, how the final answer line starts, which ids are
digits. ``answer_ids`` reads each row's final answer on device, the way
``ArithmeticTask.extract_answer`` reads it from text, as an integer id (equal ids <=> equal
normalized answers); ``row_hash`` fingerprints a row's whole text (duplicate filtering).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Answer ids are the answer's value mod this prime (h*10 + 9 < 2**31 stays in int32).
# Leading zeros do not change the value, as extract_answer strips them.
ANSWER_MOD = 100_000_007
NO_ANSWER = -1


@dataclasses.dataclass(frozen=True)
class SearchTokens:
    """Special token ids of a task's tokenizer.

    Attributes:
      pad_id, bos_id, eos_id: as the tokenizer's; pad and bos are never sampled.
      delimiter_id: the step delimiter (a step ends with it).
      answer_prefix: ids that start the final answer line ("A:"); a row whose line starting
        with them is completed by the delimiter has ended (no eos needed).
      digit_ids: ids of "0".."9" in order.
    """

    pad_id: int
    bos_id: int
    eos_id: int
    delimiter_id: int
    answer_prefix: tuple[int, ...]
    digit_ids: tuple[int, ...]

    def __post_init__(self):
        if len(self.digit_ids) != 10:
            raise ValueError(f"digit_ids must list the 10 ids of '0'..'9', got {self.digit_ids}")
        if not self.answer_prefix:
            raise ValueError("answer_prefix is empty; pass the ids of the answer marker "
                             "(e.g. tokenizer.encode('A:'))")

    @classmethod
    def from_task(cls, task, answer_marker: str = "A:") -> SearchTokens:
        tok = task.tokenizer
        if tok.step_delimiter_id is None:
            raise ValueError(f"task {task.name!r}: its tokenizer has no step delimiter id; "
                             "step-level search needs a single-token step delimiter")
        return cls(pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id,
                   delimiter_id=tok.step_delimiter_id,
                   answer_prefix=tuple(tok.encode(answer_marker)),
                   digit_ids=tuple(tok.encode("0123456789")))

    def banned(self) -> tuple[int, ...]:
        """Ids the search never samples (they carry no text)."""
        return (self.pad_id, self.bos_id)


def prefix_at(tokens: jax.Array, lengths: jax.Array, prefix: tuple[int, ...]) -> jax.Array:
    """[R, T] bool: the ids ``prefix`` start at position t of row r (within its length)."""
    _, t = tokens.shape
    hit = jnp.ones(tokens.shape, bool)
    for j, pid in enumerate(prefix):
        shifted = jnp.pad(tokens[:, j:], ((0, 0), (0, j)), constant_values=-1)  # [R, T]
        hit = hit & (shifted == pid)
    pos = jnp.arange(t)[None, :]
    return hit & (pos + len(prefix) <= lengths[:, None])


def answer_ids(tokens: jax.Array, lengths: jax.Array, spec: SearchTokens) -> jax.Array:
    """Each row's final answer id: [R, T] tokens, [R] lengths -> [R] int32.

    The digits after the LAST answer prefix, up to the next delimiter or eos (or the row's
    end), read as a number mod ``ANSWER_MOD``; ``NO_ANSWER`` (-1) when there is no prefix,
    the span is empty, or it holds anything but digits.
    """
    r, t = tokens.shape
    pos = jnp.arange(t)[None, :]  # [1, T]
    starts = prefix_at(tokens, lengths, spec.answer_prefix)  # [R, T]
    last = jnp.max(jnp.where(starts, pos, -1), axis=1)  # [R], -1 if none
    span_start = last + len(spec.answer_prefix)  # [R]
    stop = (tokens == spec.delimiter_id) | (tokens == spec.eos_id)
    after = pos >= span_start[:, None]
    span_end = jnp.min(jnp.where(stop & after, pos, t), axis=1)
    span_end = jnp.minimum(span_end, lengths)  # [R]
    in_span = after & (pos < span_end[:, None])  # [R, T]
    table = jnp.full((max(spec.digit_ids) + 1,), -1, jnp.int32)  # id -> digit value
    table = table.at[jnp.asarray(spec.digit_ids)].set(jnp.arange(10, dtype=jnp.int32))
    digit = jnp.where((tokens >= 0) & (tokens < table.shape[0]),
                      table[jnp.clip(tokens, 0, table.shape[0] - 1)], -1)  # [R, T]

    def body(h, cols):
        d, m = cols
        return jnp.where(m, (h * 10 + jnp.maximum(d, 0)) % ANSWER_MOD, h), None

    h, _ = jax.lax.scan(body, jnp.zeros((r,), jnp.int32), (digit.T, in_span.T))
    ok = (last >= 0) & (span_end > span_start) & ~jnp.any(in_span & (digit < 0), axis=1)
    return jnp.where(ok, h, NO_ANSWER).astype(jnp.int32)


def answer_id_of_text(answer: str | None) -> int:
    """The host twin of :func:`answer_ids` for a normalized answer string (or None)."""
    return NO_ANSWER if answer is None else int(answer) % ANSWER_MOD


def row_hash(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """A uint32 fingerprint of each row's first ``lengths`` tokens: [R, T] -> [R]."""
    pos = jnp.arange(tokens.shape[1])[None, :]
    x = jnp.where(pos < lengths[:, None], tokens + 1, 0).astype(jnp.uint32)

    def body(h, col):
        return h * jnp.uint32(1_000_003) + col, None

    h, _ = jax.lax.scan(body, lengths.astype(jnp.uint32), x.T)
    return h
