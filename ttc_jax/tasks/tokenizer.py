"""Tokenizer interface and the character tokenizer used by the embedded tasks.

The :class:`Tokenizer` protocol is deliberately small so a Hugging Face ``tokenizers``
tokenizer can be wrapped to fit it later. Special ids: ``pad_id`` pads batches (rows are
RIGHT-padded: the valid tokens are a prefix of each row), ``bos_id`` starts a sequence,
``eos_id`` ends a generation, and ``step_delimiter_id`` (if the tokenizer has one single
token that ends a reasoning step) lets a process reward model read scores at step ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

_SPECIAL_NAMES = ("<pad>", "<bos>", "<eos>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of the code base needs from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int | None  # None: the tokenizer has no bos (Qwen)
    eos_id: int  # the first of ``eos_ids``
    eos_ids: tuple[int, ...]  # every id that ends a generation
    step_delimiter_id: int | None
    step_delimiter_ids: tuple[int, ...]  # every id whose text contains the step delimiter

    def vocab_bytes(self) -> list[bytes]:
        """The bytes of each id's text (b"" for special ids), index = id."""
        ...

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally with ``bos_id`` first and ``eos_id`` last."""
        ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``; with ``skip_special`` pad/bos/eos are dropped (nothing stops it)."""
        ...

    def decode_until_eos(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` cut before the first ``eos_id``, with pad/bos dropped."""
        ...


@dataclass(frozen=True)
class CharTokenizer:
    """One token per character of ``alphabet``, after the ids 0=pad, 1=bos, 2=eos.

    With the default alphabet ``"0123456789+-*=:QA\\n"`` the vocabulary has 21 ids. The
    ``step_delimiter`` character (default newline) gives ``step_delimiter_id``; pass ``None``
    for a tokenizer without one.
    """

    alphabet: str = "0123456789+-*=:QA\n"
    step_delimiter: str | None = "\n"
    _char_to_id: dict[str, int] = field(init=False, repr=False, compare=False)

    pad_id = 0
    bos_id = 1
    eos_id = 2
    _num_special = 3

    def __post_init__(self) -> None:
        if not self.alphabet:
            raise ValueError("alphabet must not be empty")
        repeated = sorted({c for c in self.alphabet if self.alphabet.count(c) > 1})
        if repeated:
            raise ValueError(f"alphabet repeats the characters {repeated!r}; list each once")
        if self.step_delimiter is not None and self.step_delimiter not in self.alphabet:
            raise ValueError(
                f"step_delimiter={self.step_delimiter!r} is not in alphabet={self.alphabet!r}; "
                "add it to the alphabet or pass step_delimiter=None"
            )
        table = {c: i + self._num_special for i, c in enumerate(self.alphabet)}
        object.__setattr__(self, "_char_to_id", table)

    @property
    def vocab_size(self) -> int:
        """Number of ids: three special ids plus one per alphabet character."""
        return self._num_special + len(self.alphabet)

    @property
    def step_delimiter_id(self) -> int | None:
        """Id of the step delimiter character, or ``None`` when there is none."""
        if self.step_delimiter is None:
            return None
        return self._char_to_id[self.step_delimiter]

    @property
    def step_delimiter_ids(self) -> tuple[int, ...]:
        """Every id whose text contains the step delimiter (here: the one character)."""
        return () if self.step_delimiter is None else (self.step_delimiter_id,)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    has_bos = True

    def vocab_bytes(self) -> list[bytes]:
        """The UTF-8 bytes of each id's text (b"" for the special ids), index = id."""
        return [b""] * self._num_special + [c.encode("utf-8") for c in self.alphabet]

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of the characters of ``text``; raises ``ValueError`` on a character not known."""
        table = self._char_to_id
        try:
            ids = [table[c] for c in text]
        except KeyError:
            pos, char = next((i, c) for i, c in enumerate(text) if c not in table)
            raise ValueError(
                f"character {char!r} at position {pos} is not in the tokenizer alphabet "
                f"{self.alphabet!r}; remove it or build CharTokenizer with a larger alphabet"
            ) from None
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``; special ids are dropped, or shown as ``<pad>`` ``<bos>`` ``<eos>``."""
        out = []
        for pos, raw in enumerate(ids):
            i = int(raw)
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"id {i} at position {pos} is outside the vocabulary [0, {self.vocab_size})"
                )
            if i >= self._num_special:
                out.append(self.alphabet[i - self._num_special])
            elif not skip_special:
                out.append(_SPECIAL_NAMES[i])
        return "".join(out)

    def decode_until_eos(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` cut before the first eos, with pad and bos dropped."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.decode(ids, skip_special=True)


def pad_batch(
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    length: int | None = None,
    *,
    multiple_of: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token id lists into one array.

    Args:
      seqs: B lists of token ids.
      pad_id: id written after the end of each row.
      length: row length T; defaults to the longest row. A row longer than ``length`` is an
        error, never truncated.
      multiple_of: T is rounded up to a multiple of this (to limit recompilations).

    Returns:
      ``(tokens, lengths)``: tokens int32 [B, T] with row b's ids in ``tokens[b, :lengths[b]]``
      and ``pad_id`` after them; lengths int32 [B].
    """
    if multiple_of < 1:
        raise ValueError(f"multiple_of={multiple_of} must be >= 1")
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)  # [B]
    if length is None:
        target = int(lengths.max()) if len(seqs) else 0
    else:
        if length < 0:
            raise ValueError(f"length={length} must be >= 0")
        too_long = np.flatnonzero(lengths > length)
        if too_long.size:
            row = int(too_long[0])
            raise ValueError(
                f"row {row} has {lengths[row]} tokens, {lengths[row] - length} more than "
                f"length={length} ({too_long.size} row(s) too long); pass a larger length "
                "or truncate the rows first"
            )
        target = length
    target = -(-target // multiple_of) * multiple_of
    tokens = np.full((len(seqs), target), pad_id, dtype=np.int32)  # [B, T]
    for b, s in enumerate(seqs):
        tokens[b, : len(s)] = s
    return tokens, lengths
