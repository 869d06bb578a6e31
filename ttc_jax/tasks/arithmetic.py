"""The embedded benchmark: step-by-step arithmetic chains modulo 1000.

A problem of difficulty k is a start value and k operations, applied left to right (no
operator precedence), every result taken mod 1000::

    prompt    Q:16*2+2-22+88\\n
    solution  16*2=32\\n32+2=34\\n34-22=12\\n12+88=100\\nA:100\\n      (then the eos token)

The start is uniform in 0..999; each op is uniformly one of ``+ - *``; ``+`` and ``-`` take
an operand in 1..99, ``*`` one in 2..9. Every step can be checked exactly, which gives the
process reward model exact labels.

Splits: a prompt is in the test split iff ``blake2b(prompt, digest_size=8)`` read as a
big-endian integer, mod 1000, is below ``1000 * test_fraction``; so train and test never
share a prompt, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ttc_jax.tasks.base import SPLITS, Problem, Task, check_split
from ttc_jax.tasks.tokenizer import CharTokenizer

MOD = 1000
OPS = ("+", "-", "*")
_ADD_SUB_OPERANDS = (1, 99)  # inclusive range for + and -
_MUL_OPERANDS = (2, 9)  # inclusive range for *
_NUM_OP_CHOICES = 2 * 99 + 8  # distinct (op, operand) pairs per step
_CHUNK = 1024  # candidates drawn per round; fixed so a smaller n gives a prefix of a larger n

_STEP_RE = re.compile(r"([0-9]+)([+\-*])([0-9]+)=([0-9]+)")
_ANSWER_RE = re.compile(r"A:([0-9]+)")
_DIGITS_RE = re.compile(r"[0-9]+")
_PROMPT_RE = re.compile(r"Q:([0-9]+)((?:[+\-*][0-9]+)+)\n?")
_PROMPT_OP_RE = re.compile(r"([+\-*])([0-9]+)")

_TOKENIZER = CharTokenizer()

Op = tuple[str, int]


def apply_op(value: int, op: str, operand: int) -> int:
    """``value op operand`` mod 1000."""
    if op == "+":
        return (value + operand) % MOD
    if op == "-":
        return (value - operand) % MOD
    if op == "*":
        return (value * operand) % MOD
    raise ValueError(f"op={op!r} is not one of {OPS}")


def _norm(digits: str) -> str:
    """A digit string without leading zeros ("0" when all zeros)."""
    return digits.lstrip("0") or "0"


def _low(digits: str) -> int:
    """The value of a digit string mod 1000, without converting the whole (maybe huge) string."""
    return int(digits[-3:])


def _split_hash(prompt: str) -> tuple[int, str]:
    """The stable hash of a prompt: (integer for the split rule, hex for the uid)."""
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big"), digest.hex()


@dataclass(frozen=True)
class StepCheck:
    """The verdict on one step of a solution text.

    Attributes:
      text: the step, without its delimiter.
      well_formed: a computation step matches ``lhs op rhs=result`` (ASCII digits, op one of
        ``+ - *``); the answer step matches ``A:digits``.
      arithmetic_ok: computation step: ``(lhs op rhs) mod 1000 == result``. Answer step: the
        answer equals the result written in the step before it (or the start, for step 0).
      consistent: computation step ``i``: lhs equals the previous step's result (the start
        for step 0) and ``(op, rhs)`` is the problem's ``i``-th op. Answer step: it is the
        first answer line and comes right after exactly k computation steps.
      is_answer: whether this is an answer line (starts with ``A:``).
    """

    text: str
    well_formed: bool
    arithmetic_ok: bool
    consistent: bool
    is_answer: bool = False

    @property
    def correct(self) -> bool:
        """Well formed, arithmetically right, and consistent with the problem."""
        return self.well_formed and self.arithmetic_ok and self.consistent


@dataclass(frozen=True)
class ArithmeticTask(Task):
    """Step-by-step arithmetic chains; difficulty = number of steps (any k >= 1).

    Args:
      min_difficulty, max_difficulty: the default difficulty sweep (``difficulties``).
      test_fraction: share of all prompts that belong to the test split.
    """

    min_difficulty: int = 1
    max_difficulty: int = 8
    test_fraction: float = 0.1

    name: ClassVar[str] = "arithmetic"
    step_delimiter: ClassVar[str] = "\n"
    has_exact_step_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_difficulty <= self.max_difficulty:
            raise ValueError(
                f"need 1 <= min_difficulty <= max_difficulty, got min_difficulty="
                f"{self.min_difficulty}, max_difficulty={self.max_difficulty}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction={self.test_fraction} must be strictly between 0 and 1")

    @property
    def tokenizer(self) -> CharTokenizer:
        """The character tokenizer over ``0123456789+-*=:QA\\n`` (vocab 21)."""
        return _TOKENIZER

    @property
    def difficulties(self) -> tuple[int, ...]:
        """``min_difficulty .. max_difficulty``."""
        return tuple(range(self.min_difficulty, self.max_difficulty + 1))

    # ----------------------------------------------------------------------------- problems

    def split_of(self, prompt: str) -> str:
        """The split ("train" or "test") that ``prompt`` belongs to."""
        return "test" if self._is_test(_split_hash(prompt)[0]) else "train"

    def _is_test(self, hash_int: int) -> bool:
        return hash_int % 1000 < 1000 * self.test_fraction

    def make_problem(self, start: int, ops: Sequence[Op]) -> Problem:
        """The problem with this start value and ``(op, operand)`` list, whatever its split."""
        if not 0 <= start < MOD:
            raise ValueError(f"start={start} must be in 0..{MOD - 1}")
        if not ops:
            raise ValueError("ops is empty; a problem needs at least one (op, operand)")
        for op, operand in ops:
            if op not in OPS or operand < 0:
                raise ValueError(
                    f"bad op ({op!r}, {operand}); ops are (op, operand) with op in {OPS} "
                    "and operand >= 0"
                )
        ops = tuple((op, int(operand)) for op, operand in ops)
        prompt = _format_prompt(int(start), ops)
        return _problem(prompt, _split_hash(prompt)[1], int(start), ops)

    def problems(self, split: str, difficulty: int, n: int, seed: int) -> list[Problem]:
        """``n`` distinct problems with ``difficulty`` steps from ``split``, fixed by ``seed``.

        Candidates come from ``np.random.default_rng((seed, difficulty, split_index))``;
        those of the other split and repeats are skipped. The first ``m`` problems for a
        given seed do not depend on ``n >= m``.
        """
        check_split(split)
        if difficulty < 1:
            raise ValueError(f"difficulty={difficulty} must be >= 1 (it is the number of steps)")
        if n < 0:
            raise ValueError(f"n={n} must be >= 0")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        share = self.test_fraction if split == "test" else 1.0 - self.test_fraction
        # A lower bound past k=6 (where it is already ~8e16), so the float never overflows.
        available = int(MOD * _NUM_OP_CHOICES ** min(difficulty, 6) * share)
        if n > available // 2:
            raise ValueError(
                f"n={n} is too many: difficulty {difficulty} has about {available} distinct "
                f"{split} prompts; ask for at most {available // 2} or raise the difficulty"
            )
        rng = np.random.default_rng((seed, difficulty, SPLITS.index(split)))
        want_test = split == "test"
        seen: set[str] = set()
        out: list[Problem] = []
        while len(out) < n:
            starts = rng.integers(0, MOD, size=_CHUNK).tolist()  # [C]
            op_idx = rng.integers(0, len(OPS), size=(_CHUNK, difficulty))  # [C, k]
            add_sub = rng.integers(*_ADD_SUB_OPERANDS, endpoint=True, size=(_CHUNK, difficulty))
            mul = rng.integers(*_MUL_OPERANDS, endpoint=True, size=(_CHUNK, difficulty))
            operands = np.where(op_idx == OPS.index("*"), mul, add_sub).tolist()  # [C, k]
            for start, idx_row, operand_row in zip(starts, op_idx.tolist(), operands):
                ops = tuple((OPS[i], x) for i, x in zip(idx_row, operand_row))
                prompt = _format_prompt(start, ops)
                hash_int, hex_digest = _split_hash(prompt)
                if self._is_test(hash_int) != want_test or prompt in seen:
                    continue
                seen.add(prompt)
                out.append(_problem(prompt, hex_digest, start, ops))
                if len(out) == n:
                    break
        return out

    # ------------------------------------------------------------------------ judging text

    def solution_text(self, problem: Problem) -> str:
        """One ``lhs op rhs=result`` line per op, then ``A:answer``, each ending in a newline."""
        start, ops = _start_and_ops(problem)
        lines = []
        value = start
        for op, operand in ops:
            result = apply_op(value, op, operand)
            lines.append(f"{value}{op}{operand}={result}\n")
            value = result
        lines.append(f"A:{value}\n")
        return "".join(lines)

    def extract_answer(self, text: str) -> str | None:
        """Digits after the last ``A:`` up to the next newline, without leading zeros.

        ``None`` when there is no ``A:`` or that line holds anything but ASCII digits.
        """
        at = text.rfind("A:")
        if at < 0:
            return None
        answer = text[at + 2 :].split("\n", 1)[0]
        if _DIGITS_RE.fullmatch(answer) is None:
            return None
        return _norm(answer)

    def check_steps(self, problem: Problem, text: str) -> list[StepCheck]:
        """A :class:`StepCheck` per step of ``text`` (the continuation after the prompt).

        Steps past the problem's k ops, and anything after the first answer line, are
        never consistent. Numbers compare by value, so leading zeros are tolerated.
        """
        start, ops = _start_and_ops(problem)
        checks = []
        prev: str | None = str(start)  # normalized value the next step must continue from
        seen_answer = False
        for i, step in enumerate(self.split_steps(text)):
            if step.startswith("A:"):
                match = _ANSWER_RE.fullmatch(step)
                checks.append(
                    StepCheck(
                        text=step,
                        well_formed=match is not None,
                        arithmetic_ok=match is not None and _norm(match[1]) == prev,
                        consistent=i == len(ops) and not seen_answer,
                        is_answer=True,
                    )
                )
                seen_answer, prev = True, None
                continue
            match = _STEP_RE.fullmatch(step)
            if match is None:
                checks.append(StepCheck(step, False, False, False))
                prev = None
                continue
            lhs, op, rhs, result = match.groups()
            arithmetic_ok = _norm(result) == str(apply_op(_low(lhs), op, _low(rhs)))
            consistent = (
                prev is not None
                and _norm(lhs) == prev
                and i < len(ops)
                and op == ops[i][0]
                and _norm(rhs) == str(ops[i][1])
            )
            checks.append(StepCheck(step, True, arithmetic_ok, consistent))
            prev = _norm(result)
        return checks

    def step_labels(self, problem: Problem, text: str) -> list[bool]:
        """Prefix correctness: label ``i`` is True iff steps ``0..i`` are all correct.

        The answer step's label is thus ``answer == problem.answer`` after right steps.
        """
        labels = []
        ok = True
        for check in self.check_steps(problem, text):
            ok = ok and check.correct
            labels.append(ok)
        return labels


def _format_prompt(start: int, ops: Sequence[Op]) -> str:
    return "Q:" + str(start) + "".join(f"{op}{operand}" for op, operand in ops) + "\n"


def _problem(prompt: str, hex_digest: str, start: int, ops: tuple[Op, ...]) -> Problem:
    value = start
    for op, operand in ops:
        value = apply_op(value, op, operand)
    return Problem(
        prompt=prompt,
        answer=str(value),
        difficulty=len(ops),
        uid=f"arith-k{len(ops)}-{hex_digest[:10]}",
        meta={"start": start, "ops": ops},
    )


def _start_and_ops(problem: Problem) -> tuple[int, tuple[Op, ...]]:
    """The start and ops from ``problem.meta``, or parsed from the prompt when meta lacks them."""
    if "start" in problem.meta and "ops" in problem.meta:
        ops = tuple((str(op), int(operand)) for op, operand in problem.meta["ops"])
        return int(problem.meta["start"]), ops
    match = _PROMPT_RE.fullmatch(problem.prompt)
    if match is None:
        raise ValueError(
            f"problem {problem.uid!r} has no meta['start'/'ops'] and its prompt "
            f"{problem.prompt!r} is not of the form 'Q:16*2+2-22+88\\n'"
        )
    ops = tuple((op, int(x)) for op, x in _PROMPT_OP_RE.findall(match[2]))
    return int(match[1]), ops
