"""MATH-style problems from a local JSONL file (e.g. MATH-500), for real models.

Each line: ``{"problem": str, "answer": str, "level": int (optional), "unique_id": str
(optional), "solution": str (optional)}``. The model is prompted (as a chat, system +
user) to solve step by step, steps separated by ``"\\n\\n"``, ending with
``Therefore, the final answer is: $\\boxed{answer}$``.

Answers are read from the model's text by :func:`extract_answer` (the last
``\\boxed{...}`` with brace matching, else "final answer is ...", else the last number)
and compared by :func:`is_equiv`: equal after :func:`normalize_answer` (fractions,
``\\left``/``\\right``, ``\\text{}``, units, dollar signs, degrees, percent, spaces...),
or equal as numbers, or (when sympy is installed) symbolically equal.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ttc_jax.tasks.base import Problem, Task, check_split
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

# -- extraction ---------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; also
    ``\\boxed 5``. None when there is none or its braces never close."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    rest = rest[len("\\boxed"):] if rest.startswith("\\boxed") else rest[len("\\fbox"):]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        m = re.match(r"\s+([^\s$]+)", rest)
        return m.group(1) if m else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i]
    return None


def extract_raw_answer(text: str) -> str | None:
    """The answer span of ``text`` before normalization (see the module docstring)."""
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = list(re.finditer(r"final answer is[:\s]*", text, flags=re.IGNORECASE))
    if m:
        tail = text[m[-1].end():].strip()
        tail = re.split(r"\n|\. |\.$|\. I hope", tail)[0]
        tail = tail.strip().strip("$").strip()
        if tail:
            return tail
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None


def extract_answer(text: str) -> str | None:
    """The normalized answer of ``text``, or None; never raises."""
    raw = extract_raw_answer(text)
    if raw is None:
        return None
    out = normalize_answer(raw)
    return out or None


# -- normalization ------------------------------------------------------------------------

_UNIT_WORDS = ("degrees", "degree", "cm", "centimeters", "meters", "meter", "inches", "inch",
               "feet", "foot", "units", "unit", "sq", "square", "dollars", "dollar", "cents",
               "hours", "hour", "minutes", "minute", "seconds", "second", "days", "day",
               "miles", "mile", "mph", "km", "kg", "grams", "pounds", "ft", "m")


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1b`` -> ``\\frac{1}{b}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{"):
            out += p
            continue
        if len(p) < 2:
            return s
        a, b, rest = p[0], p[1], p[2:]
        if b == "{":
            out += "{" + a + "}" + b + rest
        else:
            out += "{" + a + "}{" + b + "}" + rest
    return out


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _strip_text(s: str) -> str:
    """``\\text{abc}`` (and \\textbf, \\mbox, \\mathrm) -> ``abc``."""
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"\\(?:text|textbf|mbox|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    return s


def normalize_answer(answer: str) -> str:
    """A canonical string for an answer (the Hendrycks MATH rules plus a few more)."""
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    for sp in ("\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(sp, " ")
    # units: "\text{ cm}" style suffixes, then plain unit words after a number
    s = re.sub(r"\\(?:text|mbox)\{\s+[^{}]*\}\s*$", "", s)
    s = _strip_text(s)
    s = s.strip()
    unit_pat = r"(?<=[\d}])\s*(?:" + "|".join(_UNIT_WORDS) + r")(?:\^?\{?[23]\}?)?\s*$"
    s = re.sub(unit_pat, "", s)
    s = s.rstrip(".").strip()
    # "x = 5" -> "5" (a short left side only)
    if s.count("=") == 1:
        left, right = s.split("=")
        if len(left.strip()) <= 2:
            s = right
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    s = s.replace("\\dfrac", "\\frac")
    if s.startswith("."):
        s = "0" + s
    s = re.sub(r"(?<![\d])\.(\d)", r"0.\1", s)
    # numbers: thousands separators, trailing zeros, a plain a/b -> \frac{a}{b}
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    m = re.fullmatch(r"-\\frac\{(\d+)\}\{(\d+)\}", s)
    if m:
        s = f"\\frac{{-{m.group(1)}}}{{{m.group(2)}}}"
    if s == "-0":
        s = "0"
    m = re.fullmatch(r"\\text\{\(?([A-Ea-e])\)?\}|\(([A-E])\)", s)
    if m:
        s = (m.group(1) or m.group(2)).upper()
    return s


# -- equivalence --------------------------------------------------------------------------

def to_number(s: str) -> float | None:
    """The value of a normalized numeric answer (int, decimal, \\frac{a}{b}, a/b), or None."""
    s = s.strip()
    try:
        return float(s)
    except ValueError:
        pass
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    if m is None:
        m = re.fullmatch(r"(-?)(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", s)
    if m is None:
        return None
    den = float(m.group(3))
    if den == 0:
        return None
    val = float(m.group(2)) / den
    return -val if m.group(1) else val


def _split_top(s: str) -> list[str]:
    """Top-level comma split (commas inside braces/brackets stay)."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _sympy_equal(a: str, b: str) -> bool:
    try:
        import sympy
        from sympy.parsing.sympy_parser import (
            implicit_multiplication_application,
            parse_expr,
            standard_transformations,
        )
    except ImportError:
        return False
    rules = standard_transformations + (implicit_multiplication_application,)

    def to_expr(s: str):
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
        s = s.replace("\\pi", "pi").replace("^", "**").replace("\\cdot", "*")
        s = s.replace("{", "(").replace("}", ")")
        if "\\" in s:
            raise ValueError(s)
        return parse_expr(s, transformations=rules, evaluate=True)

    try:
        return bool(sympy.simplify(to_expr(a) - to_expr(b)) == 0)
    except Exception:  # noqa: BLE001 - any parse failure means "not shown equal"
        return False


def is_equiv(a: str | None, b: str | None, *, use_sympy: bool = True) -> bool:
    """Whether two answers agree: equal normalized strings, equal numbers (relative 1e-6),
    element-wise for tuples/intervals with the same brackets, or sympy-equal."""
    if a is None or b is None:
        return False
    na, nb = normalize_answer(a), normalize_answer(b)
    if na == nb:
        return True
    va, vb = to_number(na), to_number(nb)
    if va is not None and vb is not None:
        return abs(va - vb) <= 1e-6 * max(1.0, abs(va), abs(vb))
    if na[:1] + na[-1:] == nb[:1] + nb[-1:] and na[:1] in "([" and len(na) > 2 and len(nb) > 2:
        pa, pb = _split_top(na[1:-1]), _split_top(nb[1:-1])
        if len(pa) == len(pb) and len(pa) > 1:
            return all(is_equiv(x, y, use_sympy=use_sympy) for x, y in zip(pa, pb, strict=True))
    return use_sympy and _sympy_equal(na, nb)


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
        return is_equiv(self.extract_answer(text), problem.answer)
