"""MATH answers from model text: the last ``\\boxed{...}`` (brace matched), "final answer
is ...", or the last number (:func:`extract_answer`), and :func:`normalize_answer` (the
Hendrycks MATH rules plus a few more). Nothing here raises on model text."""

from __future__ import annotations

import re

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
               "miles", "mile", "mph", "km", "kg", "grams", "pounds", "ft")
_SPACED_UNIT_WORDS = ("m",)  # only after a space: "4m" may be 4 times m

# a doubled backslash before a command is an escaping slip (JSON-escaped text); before
# anything else it is a matrix row separator and stays
_DOUBLE_BACKSLASH = re.compile(
    r"(?<!\\)\\\\(?=(?:begin|end|frac|dfrac|tfrac|sqrt|text|mbox|math|left|right|pi|cdot|times|"
    r"infty|circ|boxed|theta|alpha|beta|gamma|sin|cos|tan|log|ln|\{|\}|%|\$))")


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1b`` -> ``\\frac{1}{b}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{") or p.startswith("\\"):
            out += p
            continue
        if len(p) < 2:
            return s
        a, b, rest = p[0], p[1], p[2:]
        if b == "{" or b == "\\":
            out += "{" + a + "}" + b + rest
        else:
            out += "{" + a + "}{" + b + "}" + rest
    return out


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``. A bare run of digits is one argument: ``\\sqrt13`` ->
    ``\\sqrt{13}``, as the PRM800K / Qwen2.5-Math MATH normalizers read it (nobody writes
    "square root of 1, times 3"); a bare letter is one argument: ``\\sqrt2x`` ->
    ``\\sqrt{2}x``, ``\\sqrtx`` -> ``\\sqrt{x}``."""
    return re.sub(r"\\sqrt\s*(\d+|[A-Za-z])", r"\\sqrt{\1}", s)


def _strip_text(s: str) -> str:
    """``\\text{abc}`` (and \\textbf, \\mbox, \\mathrm) -> ``abc``."""
    for _ in range(8):  # nested wrappers; bounded, so a long input stays linear
        prev = s
        s = re.sub(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|mathit)\s*\{([^{}]*)\}",
                   r"\1", s)
        if s == prev:
            break
    return s


def _letters_outside_commands(s: str) -> bool:
    return re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", s)) is not None


def normalize_answer(answer: str) -> str:
    """A canonical string for an answer (the Hendrycks MATH rules plus a few more).

    Matrix row separators (``\\\\``) are kept; ``v = <number>`` drops a single-variable
    left side (``x = 4`` -> ``4``) but an equation whose right side has variables stays an
    equation (``y = -x + 1``), so :func:`is_equiv` can compare equations."""
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "")
    s = _DOUBLE_BACKSLASH.sub(r"\\", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("cfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    s = s.replace("\\degree", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<!\\)\\(?:[,;: ]|q?quad)|~", " ", s)  # spacing (not a row's "\\ ")
    # units: "\text{ cm}" style suffixes, then plain unit words after a number
    cut = re.sub(r"\\(?:text|mbox)\{\s+[^{}]*\}\s*$", "", s)
    if cut.strip():
        s = cut
    s = _strip_text(s)
    s = s.strip()
    unit_pat = (r"(?<=[\d}])(?:\s*(?:" + "|".join(_UNIT_WORDS) + r")|\s+(?:"
                + "|".join(_SPACED_UNIT_WORDS) + r"))(?:\^?\{?[23]\}?)?\s*$")
    cut = re.sub(unit_pat, "", s)
    if cut.strip():
        s = cut
    s = s.rstrip(".").strip()
    # "x \in [0, 1]" -> "[0, 1]"
    s = re.sub(r"^(?:[A-Za-z]|\\[a-z]+)\s*\\in\s*", "", s)
    # "x = 5" -> "5": a single-variable left side and a right side without variables
    if s.count("=") == 1:
        left, right = s.split("=")
        if (re.fullmatch(r"\s*(?:[A-Za-z](?:_\{?\w+\}?)?|\\[a-z]+)\s*", left)
                and not _letters_outside_commands(right) and right.strip()):
            s = right
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
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
