"""The Task interface: problems, prompts, answer extraction, grading and step labels.

A task turns a seed into problems and judges model text. Everything is plain Python; the
model sees ``prompt_text(problem)`` and is trained to continue with
``solution_text(problem)`` followed by the tokenizer's eos token. A solution is a sequence
of reasoning steps separated by ``step_delimiter`` (``"\\n"`` for the arithmetic task,
``"\\n\\n"`` for MATH-style solutions).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ttc_jax.tasks.tokenizer import Tokenizer

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=True)
class Problem:
    """One problem of a task.

    Attributes:
      prompt: the problem statement as the task stores it.
      answer: the reference answer, already normalized the way ``extract_answer`` normalizes.
      difficulty: the task's difficulty level of this problem (number of steps for arithmetic).
      uid: a stable identifier, unique within the task.
      meta: task-specific data (not compared or hashed), e.g. the arithmetic start and ops.
    """

    prompt: str
    answer: str
    difficulty: int
    uid: str
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


def check_split(split: str) -> None:
    """Raises ``ValueError`` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a known split; use one of {SPLITS}")


class Task(abc.ABC):
    """A source of problems together with the rules to judge a model's solution text.

    Subclasses set the class attributes ``name`` and ``step_delimiter``. Text passed to
    ``extract_answer``, ``grade``, ``split_steps`` and ``step_labels`` is the model's
    continuation AFTER the prompt, without special tokens.

    Step labels: tasks with an exact step checker set ``has_exact_step_labels = True`` and
    implement ``step_labels``. Tasks without one (e.g. MATH-style JSONL data) leave the
    default, which raises ``NotImplementedError``; the PRM is then trained on Monte-Carlo
    labels (a step is labelled by whether rollouts from it reach the right answer).
    """

    name: ClassVar[str]
    step_delimiter: ClassVar[str]
    has_exact_step_labels: ClassVar[bool] = False
    # How the search reads a row's answer on device (``search.tokens.answer_ids``):
    # 'digits' after ``answer_marker``, or 'boxed' (the last \boxed{...} content).
    answer_kind: ClassVar[str] = "digits"
    answer_marker: ClassVar[str] = "A:"

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The tokenizer that encodes this task's prompts and solutions."""

    @property
    @abc.abstractmethod
    def difficulties(self) -> tuple[int, ...]:
        """The difficulty levels that experiments sweep over by default."""

    @abc.abstractmethod
    def problems(self, split: str, difficulty: int, n: int, seed: int) -> list[Problem]:
        """``n`` distinct problems of exactly ``difficulty`` from ``split``, determined by ``seed``.

        Train and test never share a problem. Raises ``ValueError`` for an unknown split or
        difficulty, or when fewer than ``n`` problems exist.
        """

    @abc.abstractmethod
    def solution_text(self, problem: Problem) -> str:
        """The canonical solution the model should generate after the prompt (no eos)."""

    @abc.abstractmethod
    def extract_answer(self, text: str) -> str | None:
        """The normalized final answer in ``text``, or ``None``; never raises on any str."""

    def prompt_text(self, problem: Problem) -> str:
        """The text fed to the model before it starts to solve ``problem``."""
        return problem.prompt

    def grade(self, problem: Problem, text: str) -> bool:
        """Whether ``text`` ends with the right answer; ``False`` when it has none."""
        answer = self.extract_answer(text)
        return answer is not None and answer == problem.answer

    def split_steps(self, text: str) -> list[str]:
        """``text`` split on ``step_delimiter``; a trailing empty piece is dropped.

        Empty pieces inside the text are kept, so step ``i`` ends at the ``i``-th delimiter.
        """
        steps = text.split(self.step_delimiter)
        if steps and steps[-1] == "":
            steps.pop()
        return steps

    def step_labels(self, problem: Problem, text: str) -> list[bool]:
        """Exact prefix correctness per step: label ``i`` is True iff steps ``0..i`` are right.

        One label per element of ``split_steps(text)``. Raises ``NotImplementedError`` for
        tasks without a step checker (use Monte-Carlo labels for those).
        """
        raise NotImplementedError(
            f"task {self.name!r} has no exact step checker; label steps by Monte-Carlo "
            "rollouts instead (see has_exact_step_labels)"
        )

    def sample_problems(
        self, split: str, difficulties: Sequence[int], n_per_difficulty: int, seed: int
    ) -> list[Problem]:
        """``n_per_difficulty`` problems at each of ``difficulties``, in that order."""
        return [p for d in difficulties for p in self.problems(split, d, n_per_difficulty, seed)]
