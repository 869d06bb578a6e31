"""The study's grader verdict (Qwen2.5-Math ``math_equal``, as the Hugging Face blog
graded), rebuilt on the safe parser: its percentage (x100, /100) and 1e-4 tolerance
acceptance, bracket-blind intervals and unit-word stripping are reproduced on purpose
(docs/grading.md lists them); :func:`study_equal`."""

from __future__ import annotations

import math
import re

from ttc_jax.tasks.math_equiv import expr_equal, guarded, value_of
from ttc_jax.tasks.math_parse import MAX_INPUT, read_expr

# -- the study's verdict ------------------------------------------------------------------
#
# The test-time-compute study (the Hugging Face blog, scoring with Qwen2.5-Math's
# evaluation code) grades with ``math_equal(strip_string(pred), strip_string(gold))``.
# ``study_equal`` reproduces that verdict, false positives included, on the safe parser:
# nothing is executed. docs/grading.md lists where it and ``is_equiv`` differ.

# The unit words its ``strip_string`` deletes (each a regular expression, bounded by the
# start/end of the string or a non-word character; plurals after all singulars).
_STUDY_UNITS = tuple(
    "east;degree;mph;kmph;ft;m sqaure; m east;sq m;deg;mile;q .;monkey;prime;ratio;"
    "profit of rs;rd;o;gm;p . m;lb;tile;per;dm;lt;gain;ab;way;west;a .;b .;c .;d .;e .;f .;"
    "g .;h .;t;a;h;no change;men;soldier;pie;bc;excess;st;inches;noon;percent;by;gal;kmh;c;"
    "acre;rise;a . m;th;π r 2;sq;mark;l;toy;coin;sq . m;gallon;° f;profit;minw;yr;women;"
    "feet;am;pm;hr;cu cm;square;v â € ™;are;rupee;rounds;cubic;cc;mtr;s;ohm;number;kmph;"
    "day;hour;minute;min;second;man;woman;sec;cube;mt;sq inch;mp;∏ cm ³;hectare;more;sec;"
    "unit;cu . m;cm 2;rs .;rs;kg;g;month;km;m;cm;mm;apple;liter;loss;yard;pure;year;"
    "increase;decrease;d;less;Surface;litre;pi sq m;s .;metre;meter;inch".split(";"))
_STUDY_UNITS = _STUDY_UNITS + tuple(u + "s" for u in _STUDY_UNITS)
_STUDY_UNIT_RES = tuple(re.compile(r"(^|\W)" + u + r"($|\W)") for u in _STUDY_UNITS)

_WORD_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_WORD_SMALL.update({w: 10 * (i + 2) for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split())})
_WORD_BIG = {"hundred": 100, "thousand": 1_000, "million": 1_000_000,
             "billion": 1_000_000_000}


def _study_word_number(s: str) -> str:
    """Number words to digits, as the study's word2number step does: the number words of
    the string (others ignored) -> their value; no number words -> unchanged."""
    t = s.replace("-", " ").lower()
    if t.isdigit():
        try:
            return str(int(t))
        except ValueError:
            return s
    words = [w for w in t.split() if w in _WORD_SMALL or w in _WORD_BIG or w == "point"]
    if not words or any(words.count(w) > 1 for w in ("thousand", "million", "billion",
                                                     "point")):
        return s
    whole, frac = (words, []) if "point" not in words else (
        words[:words.index("point")], words[words.index("point") + 1:])
    total, cur = 0, 0
    for w in whole:
        if w in _WORD_SMALL:
            cur += _WORD_SMALL[w]
        elif w == "hundred":
            cur = max(cur, 1) * 100
        else:
            total += max(cur, 1) * _WORD_BIG[w]
            cur = 0
    total += cur
    if frac:
        digits = "".join(str(_WORD_SMALL[w]) for w in frac if _WORD_SMALL.get(w, 10) < 10)
        return str(float(f"{total}.{digits or 0}"))
    return str(total)


def _study_fix_fracs(s: str) -> str:
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
        out += "{" + a + "}" + b + rest if b == "{" else "{" + a + "}{" + b + "}" + rest
    return out


def _study_fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = parts
    try:
        a2 = a if "sqrt" in a else str(int(a))
        b2 = b if "sqrt" in b else str(int(b))
    except ValueError:
        return s
    return f"\\frac{{{a2}}}{{{b2}}}" if s == f"{a2}/{b2}" else s


def _study_strip(s: str) -> str:
    """The study's ``strip_string`` (units deleted), rebuilt step by step."""
    s = str(s).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s)
    s = s.replace("bmatrix", "pmatrix").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    cut = re.sub(r"\\text\{.*?\}$", "", s).strip()
    if cut and cut != s:
        s = cut
    for _ in range(2):
        for pat in _STUDY_UNIT_RES:
            cut = pat.sub(r"\1\2", s)
            if cut:
                s = cut
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = _study_word_number(s)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for key in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.replace(key, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox\{.*?\}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    return _study_fix_a_slash_b(_study_fix_fracs(s))


def _study_float(s: str) -> float | None:
    s = str(s).replace(",", "")
    try:
        return float(s)
    except ValueError:
        pass
    if s.endswith("%"):
        s = s[:-1].removesuffix("\\")
        try:
            return float(s) / 100
        except ValueError:
            pass
    return None


def _study_choice(pred: str) -> str:
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    pred = letters[-1] if letters else pred.strip().strip(".")
    return pred.rstrip(".").rstrip("/")


def _study_numeric(pred: str, ref: str) -> bool:
    p, r = _study_float(pred), _study_float(ref)
    if p is None or r is None:
        return False
    return any(math.isclose(item, p, rel_tol=1e-4) for item in (r / 100, r, r * 100))


def _study_parse(s: str):
    """The study's latex/sympy parse, on the safe parser: an expression, else the string."""
    parsed = read_expr(s)
    return s if parsed is None else parsed[0]


def _study_symbolic(a: str, b: str) -> bool:
    pa, pb = _study_parse(a), _study_parse(b)
    if isinstance(pa, str) or isinstance(pb, str):
        return str(pa) == str(pb)
    if pa == pb or str(pa) == str(pb) or expr_equal(pa, False, pb, False):
        return True
    if pa.free_symbols or pb.free_symbols:
        return False
    va, vb = value_of(pa, None, None, 15), value_of(pb, None, None, 15)
    return (va is not None and vb is not None and va.imag == 0 and vb.imag == 0
            and math.isclose(va.real, vb.real, rel_tol=1e-4))


def _study_str_to_pmatrix(s: str) -> str:
    rows = re.findall(r"\{.*,.*\}", s.strip())
    return ", ".join("\\begin{pmatrix}" + m.strip("{}").replace(",", "\\") + "\\end{pmatrix}"
                     for m in rows)


def _study_is_list(s: str) -> bool:
    return re.match(r"(\(|\[).+(\)|\])", s) is not None


def _study_is_matrix(s: str) -> bool:
    return s.startswith("\\begin{pmatrix}") and s.endswith("\\end{pmatrix}")


def _study_math_equal(pred: str, ref: str, depth: int = 0) -> bool:
    """``math_equal(pred, ref)`` of the study (include_percentage and is_close on)."""
    if depth > 8:
        return False
    if pred.strip().lower() == ref.strip().lower():
        return True
    if ref in ("A", "B", "C", "D", "E") and _study_choice(pred) == ref:
        return True
    if _study_numeric(pred, ref):
        return True
    if not pred:
        return False
    ref, pred = ref.strip(), pred.strip()
    if "pmatrix" in pred and "pmatrix" not in ref:
        ref = _study_str_to_pmatrix(ref)
    ps, rs = pred, ref
    if ((ps.startswith("[") and ps.endswith("]") and not (rs.startswith("(") and rs.endswith(")")))
            or (ps.startswith("(") and ps.endswith(")")
                and not (rs.startswith("[") and rs.endswith("]")))):
        ps, rs = ps.strip("[]()"), rs.strip("[]()")
    for br in "{}()":
        ps, rs = ps.replace(br, ""), rs.replace(br, "")
    if ps.lower() == rs.lower():
        return True
    if _study_is_list(pred) and _study_is_list(ref):  # brackets ignored
        pp, rp = pred[1:-1].split(","), ref[1:-1].split(",")
        return len(pp) == len(rp) and all(
            _study_math_equal(x, y, depth + 1) for x, y in zip(pp, rp))
    if _study_is_matrix(pred) and _study_is_matrix(ref):
        n0, n1 = len("\\begin{pmatrix}"), len("\\end{pmatrix}")
        pl = [ln.strip() for ln in pred[n0:-n1].split("\\\\") if ln.strip()]
        rl = [ln.strip() for ln in ref[n0:-n1].split("\\\\") if ln.strip()]
        if len(pl) != len(rl):
            return False
        for x, y in zip(pl, rl):
            xs, ys = x.split("&"), y.split("&")
            if len(xs) != len(ys) or not all(
                    _study_math_equal(c, d, depth + 1) for c, d in zip(xs, ys)):
                return False
        return True
    if pred.count("=") == 1 and ref.count("=") == 1:
        lp, rp_ = pred.split("=")
        lr, rr = ref.split("=")
        fp, fr = f"{lp.strip()}-({rp_.strip()})", f"{lr.strip()}-({rr.strip()})"
        return _study_symbolic(fp, fr) or _study_symbolic(f"-({fp})", fr)
    if pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in ref:
        return _study_math_equal(pred.split("=")[1], ref, depth + 1)
    if ref.count("=") == 1 and len(ref.split("=")[0].strip()) <= 2 and "=" not in pred:
        return _study_math_equal(pred, ref.split("=")[1], depth + 1)
    return _study_symbolic(pred, ref)


def study_equal(a: str | None, b: str | None) -> bool:
    """The study's verdict: Qwen2.5-Math ``math_equal(strip_string(a), strip_string(b))``
    with ``a`` the prediction and ``b`` the reference (as in its evaluation), rebuilt on the
    safe parser. Accepts what it accepts: an answer 100 times or a hundredth of the
    reference, a 1e-4 relative tolerance, either bracket type in intervals and tuples,
    unit words deleted (``\\text{east}`` becomes empty). Never executes the answer; bounded
    like :func:`is_equiv`."""
    if a is None or b is None:
        return False
    a, b = str(a), str(b)
    if len(a) > MAX_INPUT or len(b) > MAX_INPUT:
        return a.strip().lower() == b.strip().lower()
    return guarded(lambda x, y: _study_math_equal(_study_strip(x), _study_strip(y)), a, b)
