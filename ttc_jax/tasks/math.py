"""MATH-style problems from a local JSONL file (e.g. MATH-500), for real models.

Each line: ``{"problem": str, "answer": str, "level": int (optional), "unique_id": str
(optional), "solution": str (optional)}``. The model is prompted (as a chat, system +
user) to solve step by step, steps separated by ``"\\n\\n"``, ending with
``Therefore, the final answer is: $\\boxed{answer}$``.

Answers are read from the model's text by :func:`extract_answer` (the last
``\\boxed{...}`` with brace matching, else "final answer is ...", else the last number)
and compared by :func:`is_equiv`: equal after :func:`normalize_answer` (fractions,
``\\left``/``\\right``, ``\\text{}``, units, dollar signs, degrees, percent, spaces...),
or equal once read by a whitelist parser into sympy objects (sets, tuples, intervals,
matrices, equations, expressions; integers exactly). Nothing in an answer is ever executed,
and each comparison is bounded in size and time. :func:`study_equal` gives the verdict of
the study's grader (Qwen2.5-Math ``math_equal``) on the same parser; docs/grading.md says
where the two differ.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ttc_jax.tasks.base import Problem, Task, check_split
from ttc_jax.tasks.math_answers import (  # noqa: F401 - the task's public answer API
    extract_answer,
    extract_raw_answer,
    last_boxed,
    normalize_answer,
)
from ttc_jax.tasks.math_equiv import is_equiv, to_number  # noqa: F401
from ttc_jax.tasks.math_study import study_equal  # noqa: F401
from ttc_jax.tasks.tokenizer import Tokenizer

SYSTEM_PROMPT = (
    "Solve the following math problem efficiently and clearly:\n\n"
    "- For simple problems (2 steps or fewer):\n"
    "Provide a concise solution with minimal explanation.\n\n"
    "- For complex problems (3 steps or more):\n"
    "Use this step-by-step format:\n\n"
    "## Step 1: [Concise description]\n[Brief explanation and calculations]\n\n"
    "## Step 2: [Concise description]\n[Brief explanation and calculations]\n\n"
    "...\n\n"
    "Regardless of the approach, always conclude with:\n\n"
    "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct.\n\n"
    "Where [answer] is just the final number or expression that solves the problem.")

# -- the task -----------------------------------------------------------------------------

class MathTask(Task):
    """Problems from a local MATH-style JSONL file (one split: ``test``).

    Args:
      path: the JSONL file.
      tokenizer: an ``interop.HFTokenizer`` (or any Tokenizer); needed to build prompts
        as token ids, not to grade.
      chat_format: ``llama3``, ``qwen`` or None (plain ``system\\n\\nproblem`` text).
      system_prompt: the step-by-step instruction.
    """

    name = "math"
    step_delimiter = "\n\n"
    answer_kind = "boxed"  # on device: a hash of the last \boxed{...} content's bytes
    answer_marker = "Therefore, the final answer is"

    def __init__(self, path: str | Path, tokenizer: Tokenizer | None = None,
                 chat_format: str | None = "llama3", system_prompt: str = SYSTEM_PROMPT):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no MATH-style JSONL at {path}; pass the local file "
                                    f"(one JSON object per line with problem and answer)")
        self._tokenizer = tokenizer
        self.chat_format = chat_format
        self.system_prompt = system_prompt
        self._problems: list[Problem] = []
        seen = set()
        for i, line in enumerate(path.read_bytes().split(b"\n")):
            where = f"{path} line {i + 1}"
            try:  # a UTF-8 byte-order mark at the start of the file is accepted
                line = line.decode("utf-8-sig" if i == 0 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: byte 0x{line[e.start]:02x} at column {e.start + 1} "
                                 f"is not UTF-8; re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} column {e.colno}: not valid JSON ({e.msg}); each "
                                 f"line must be one JSON object with 'problem' and 'answer'"
                                 ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object; "
                                 f"each line must be one object with 'problem' and 'answer'")
            for key in ("problem", "answer"):
                if key not in row:
                    raise ValueError(f"{where} has no {key!r} field; each line "
                                     f"needs 'problem' and 'answer'")
            if not isinstance(row["problem"], str) or not row["problem"].strip():
                raise ValueError(f"{where}: 'problem' is {row['problem']!r}; it must be the "
                                 f"problem's text (a non-empty string)")
            if row["answer"] is None or isinstance(row["answer"], (dict, list, bool)) \
                    or not str(row["answer"]).strip():
                raise ValueError(f"{where}: 'answer' is {row['answer']!r}; it must be the "
                                 f"reference answer (a string or a number)")
            uid = str(row.get("unique_id", f"line{i + 1}"))
            if uid in seen:
                raise ValueError(f"{path} line {i + 1}: unique_id {uid!r} repeats")
            seen.add(uid)
            level = row.get("level", 1)
            level = int(re.sub(r"\D", "", str(level)) or 1)
            self._problems.append(Problem(
                prompt=row["problem"], answer=normalize_answer(str(row["answer"])),
                difficulty=level, uid=uid,
                meta={"raw_answer": str(row["answer"]), "solution": row.get("solution"),
                      "subject": row.get("subject")}))
        if not self._problems:
            raise ValueError(f"{path} has no problems")

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise ValueError("MathTask was built without a tokenizer; pass "
                             "tokenizer=HFTokenizer.from_folder(<model folder>)")
        return self._tokenizer

    @property
    def difficulties(self) -> tuple[int, ...]:
        return tuple(sorted({p.difficulty for p in self._problems}))

    def all_problems(self) -> list[Problem]:
        """Every problem, in file order."""
        return list(self._problems)

    def problems(self, split: str, difficulty: int, n: int, seed: int) -> list[Problem]:
        check_split(split)
        if split != "test":
            raise ValueError("a MATH-style JSONL file is one test split; use split='test'")
        pool = [p for p in self._problems if p.difficulty == difficulty]
        if len(pool) < n:
            raise ValueError(f"only {len(pool)} problems of level {difficulty}, asked for {n}")
        return random.Random(seed).sample(pool, n)

    def solution_text(self, problem: Problem) -> str:
        sol = problem.meta.get("solution")
        if not sol:
            raise ValueError(f"problem {problem.uid} has no 'solution' in the JSONL file")
        return sol

    def prompt_text(self, problem: Problem) -> str:
        """The prompt: the tokenizer folder's own chat template when it has one (system +
        user, generation prompt open; ``tokenizer.chat_date`` fixes Llama 3.1's date
        line), else the built-in ``chat_format``, else plain text."""
        if getattr(self._tokenizer, "chat_template", None) is not None:
            return self._tokenizer.render_chat(system=self.system_prompt, user=problem.prompt,
                                               add_generation_prompt=True)
        if self.chat_format is None:
            return f"{self.system_prompt}\n\n{problem.prompt}\n\n"
        from ttc_jax.interop.tokenizer import render_chat

        return render_chat(self.chat_format, system=self.system_prompt, user=problem.prompt)

    def extract_answer(self, text: str) -> str | None:
        return extract_answer(text)

    def grade(self, problem: Problem, text: str) -> bool:
        """``is_equiv`` of the model's answer and the reference as the file wrote it (the
        safe parser: nothing in either is executed; see docs/grading.md)."""
        gold = (problem.meta or {}).get("raw_answer") or problem.answer
        return is_equiv(self.extract_answer(text), gold)
