"""Whether two MATH answers agree (:func:`is_equiv`): equal normalized strings, or equal
once read by the safe parser (sets unordered, tuples and intervals by bracket, matrices by
row, equations up to a factor, integers exactly, decimals tightly)."""

from __future__ import annotations

import math
import random
import re

from ttc_jax.tasks.math_answers import normalize_answer
from ttc_jax.tasks.math_parse import (
    MAX_INPUT,
    MAX_ITEMS,
    TIME_LIMIT,
    Timeout,
    read_expr,
    time_limit,
)

# -- structure ----------------------------------------------------------------------------

def _split_top(s: str, sep: str = ",") -> list[str]:
    """Top-level split on ``sep`` (inside braces/brackets, and ``\\{ \\}``, stays)."""
    out, depth, cur, i = [], 0, [], 0
    while i < len(s):
        ch = s[i]
        if s.startswith(sep, i) and depth == 0:
            out.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        cur.append(ch)
        i += 1
    return out + ["".join(cur)]


def _outer_closes_at_end(s: str) -> bool:
    """Whether the bracket opening ``s`` closes at its last character."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[lcr|]*\})?(.*)\\end\{\1\}")


def _structure(s: str):
    """A normalized answer as a nested tuple: ``("matrix", rows)``, ``("union", items)``,
    ``("set", items)`` (``\\{...\\}`` or a bare comma list: order does not count),
    ``("tuple", open, close, items)`` (tuples and intervals), ``("eq", lhs, rhs)``,
    ``("text", words)``, ``("expr", expression, has_decimal)``, or ``("raw", s)`` when the
    parser does not read it. None: too many items."""
    s = s.strip()
    m = _MATRIX.fullmatch(s)
    if m:
        body = m.group(2)
        rows = [r for r in body.split("\\\\") if r.strip()]
        cells = [[_structure(c) for c in r.split("&")] for r in rows]
        if sum(len(r) for r in cells) > MAX_ITEMS * 4:
            return None
        return ("matrix", cells)
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return ("union", [_structure(p) for p in parts[:MAX_ITEMS]]) \
            if len(parts) <= MAX_ITEMS else None
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        items = [p for p in _split_top(inner)] if inner else []
        return ("set", [_structure(p) for p in items]) if len(items) <= MAX_ITEMS else None
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and _outer_closes_at_end(s):
        items = _split_top(s[1:-1])
        if len(items) > 1:
            if len(items) > MAX_ITEMS:
                return None
            return ("tuple", s[0], s[-1], [_structure(p) for p in items])
    items = _split_top(s)
    if len(items) > 1:
        return ("set", [_structure(p) for p in items]) if len(items) <= MAX_ITEMS else None
    eq = _split_top(s, "=")
    if len(eq) == 2:
        lhs, rhs = read_expr(eq[0]), read_expr(eq[1])
        if lhs is None or rhs is None:
            return ("raw", s)
        return ("eq", lhs, rhs)
    if re.fullmatch(r"[A-Za-z][A-Za-z'\-]+", s):
        return ("text", s.lower())
    parsed = read_expr(s)
    if parsed is None:
        return ("raw", s)
    return ("expr", parsed[0], parsed[1])


# -- comparison ---------------------------------------------------------------------------

_EXACT_TOL = 1e-25   # exact expressions, compared at 50 digits (equal up to rounding)
_DECIMAL_TOL = 1e-8  # one side written as a decimal (0.3333333333 vs \frac13)


def value_of(e, subs, sympy, prec: int = 50):
    """``complex`` value of ``e`` at ``subs``, or None (not finite / not a number)."""
    try:
        v = e.evalf(prec, subs=subs) if subs else e.evalf(prec)
        if not v.is_number:
            return None
        c = complex(v)
    except (TypeError, ValueError, OverflowError, ArithmeticError, AttributeError):
        return None
    if not (math.isfinite(c.real) and math.isfinite(c.imag)):
        return None
    return c


def _close(va: complex, vb: complex, tol: float) -> bool:
    return abs(va - vb) <= tol * max(1.0, abs(va), abs(vb))


def _points(symbols, n: int, sympy):
    rng = random.Random(1234)  # a fixed stream: verdicts never depend on the run
    syms = sorted(symbols, key=str)
    for _ in range(n):
        yield {s: sympy.Rational(rng.randint(600, 2900), rng.randint(900, 1100)) for s in syms}


def expr_equal(a, da: bool, b, db: bool) -> bool:
    """Whether two parsed expressions are equal: exactly (integers and rationals), at 50
    digits for exact constants, at random points for expressions with variables; with the
    tight :data:`_DECIMAL_TOL` only when exactly one side was written with a decimal."""
    import sympy

    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo) or b.has(sympy.oo, -sympy.oo):
        return bool(a == b)
    tol = _DECIMAL_TOL if da != db else _EXACT_TOL
    if a.is_Rational and b.is_Rational:
        if da == db:
            return False  # exact numbers, not equal
        return _close(complex(a.evalf(50)), complex(b.evalf(50)), tol)
    free = a.free_symbols | b.free_symbols
    if not free:
        va, vb = value_of(a, None, sympy), value_of(b, None, sympy)
        if va is None or vb is None:
            return False
        return _close(va, vb, tol)
    agree = 0
    for subs in _points(free, 8, sympy):
        va, vb = value_of(a, subs, sympy, 40), value_of(b, subs, sympy, 40)
        if va is None or vb is None:
            continue  # outside a domain (log of a negative...): try another point
        if not _close(va, vb, max(tol, 1e-18)):
            return False
        agree += 1
        if agree == 3:
            return True
    return _simplify_equal(a, b)


def _simplify_equal(a, b) -> bool:
    """sympy.simplify(a - b) == 0, only under the enforced wall-clock limit (main thread);
    elsewhere not attempted."""
    import sympy

    try:
        with time_limit(0.5) as enforced:
            if not enforced:
                return False
            return bool(sympy.simplify(a - b) == 0)
    except Timeout:
        return False
    except Exception:  # noqa: BLE001 - sympy failing to simplify means "not shown equal"
        return False


def _equation_equal(a, b) -> bool:
    """``l1 = r1`` vs ``l2 = r2``: ``l1 - r1`` a non-zero constant multiple of ``l2 - r2``
    (``y = -x + 1`` vs ``-y = x - 1``, ``2x + 2y = 2`` vs ``x + y = 1``)."""
    import sympy

    d1 = sympy.Add(a[1][0], sympy.Mul(-1, a[2][0]))
    d2 = sympy.Add(b[1][0], sympy.Mul(-1, b[2][0]))
    if d1 == d2 or d1 == -d2:
        return True
    free = d1.free_symbols | d2.free_symbols
    if not free:
        return False
    ratio, agree = None, 0
    for subs in _points(free, 10, sympy):
        v1, v2 = value_of(d1, subs, sympy, 40), value_of(d2, subs, sympy, 40)
        if v1 is None or v2 is None or abs(v2) < 1e-12:
            continue
        r = v1 / v2
        if abs(r) < 1e-12:
            return False
        if ratio is None:
            ratio = r
        elif not _close(r, ratio, 1e-18):
            return False
        agree += 1
        if agree == 4:
            return True
    return False


def _match_unordered(xs, ys) -> bool:
    if len(xs) != len(ys):
        return False
    used = [False] * len(ys)
    for x in xs:
        for j, y in enumerate(ys):
            if not used[j] and _struct_equal(x, y):
                used[j] = True
                break
        else:
            return False
    return True


def _struct_equal(x, y) -> bool:
    if x is None or y is None:
        return False
    kx, ky = x[0], y[0]
    if kx == "raw" or ky == "raw":
        return kx == ky and x[1] == y[1]
    if kx == "eq" and ky == "eq":
        return _equation_equal(x, y)
    if kx == "eq" and ky == "expr" and x[1][0].is_Symbol:  # "y = 2x + 3" vs "2x + 3"
        return _struct_equal(("expr", *x[2]), y)
    if ky == "eq" and kx == "expr" and y[1][0].is_Symbol:
        return _struct_equal(x, ("expr", *y[2]))
    if kx != ky:
        return False
    if kx == "text":
        return x[1] == y[1]
    if kx == "expr":
        return expr_equal(x[1], x[2], y[1], y[2])
    if kx == "tuple":
        return (x[1] == y[1] and x[2] == y[2] and len(x[3]) == len(y[3])
                and all(_struct_equal(p, q) for p, q in zip(x[3], y[3])))
    if kx in ("set", "union"):
        return _match_unordered(x[1], y[1])
    if kx == "matrix":
        return (len(x[1]) == len(y[1])
                and all(len(r) == len(q) and all(_struct_equal(c, d) for c, d in zip(r, q))
                        for r, q in zip(x[1], y[1])))
    return False


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


def guarded(fn, a: str, b: str) -> bool:
    """``fn(a, b)`` under the wall-clock limit; any failure or timeout is False."""
    try:
        with time_limit(TIME_LIMIT):
            return bool(fn(a, b))
    except Timeout:
        return False
    except Exception:  # noqa: BLE001 - a grading failure means "not shown equal"
        return False


def _is_equiv(a: str, b: str) -> bool:
    na, nb = normalize_answer(a), normalize_answer(b)
    if na == nb:
        return bool(na)
    return _struct_equal(_structure(na), _structure(nb))


def is_equiv(a: str | None, b: str | None, *, use_sympy: bool = True) -> bool:
    """Whether two answers agree (symmetric). Equal normalized strings; else both read by
    the safe parser into structures (sets and bare comma lists unordered; tuples and
    intervals ordered, brackets must match; matrices by shape and cells; equations up to a
    non-zero factor; ``v = expr`` vs ``expr``; text case-insensitively) whose expressions
    are equal: integers and rationals exactly, a decimal against an exact value within
    1e-8 relative, symbolic expressions at random points. Never executes the answer; each
    comparison is bounded in size and (on the main thread) in wall-clock time.
    ``use_sympy=False``: normalized string equality only."""
    if a is None or b is None:
        return False
    a, b = str(a), str(b)
    if len(a) > MAX_INPUT or len(b) > MAX_INPUT:
        return a.strip() == b.strip()
    if not use_sympy:
        return normalize_answer(a) == normalize_answer(b) != ""
    return guarded(_is_equiv, a, b)
