"""A whitelist parser for math answers: LaTeX / plain math text -> sympy objects built by
sympy constructors, never ``parse_expr``/``sympify``/``eval`` (a generated answer is
untrusted input). Inputs, numbers, powers and factorials are bounded, and sympy work runs
under a wall-clock limit on the main thread (docs/grading.md)."""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading

# -- safe parsing -------------------------------------------------------------------------
#
# Answers are model output: they are read by a whitelist tokenizer and a recursive-descent
# parser that builds sympy objects with sympy's constructors. Nothing read is ever
# evaluated as code (no parse_expr / sympify of strings / eval / parse_latex).

MAX_INPUT = 5_000      # longer answers: compared as plain strings only
_MAX_PARSE = 600        # longer normalized answers are not parsed
_MAX_TOKENS = 300
_MAX_DEPTH = 40         # bracket nesting
_MAX_DIGITS = 300       # one number literal
_MAX_BITS = 4_000       # an exact number built by a power, a factorial, a product
_MAX_EXPONENT = 10_000  # |exponent| of a power with a literal exponent
_MAX_FACTORIAL = 300
MAX_ITEMS = 30         # elements of a tuple / set / matrix
TIME_LIMIT = 1.5       # seconds of sympy work per comparison (main thread: enforced)

_GREEK = frozenset((
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu "
    "nu xi rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma "
    "Phi Psi Omega").split())
_FUNCS = frozenset("sin cos tan sec csc cot arcsin arccos arctan sinh cosh tanh log ln exp"
                   .split())
_COMMANDS = frozenset({"frac", "sqrt", "cdot", "times", "div", "pi", "infty"}) | _GREEK | _FUNCS
_UNICODE = {"π": "\\pi ", "∞": "\\infty ", "√": "\\sqrt", "×": "\\times ", "·": "\\cdot ",
            "−": "-", "⋅": "\\cdot "}

_TOKEN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)|\\([A-Za-z]+)|([A-Za-z])|([-+*/^_(){}\[\]!])|(\s)")


class _Reject(Exception):
    """The answer is outside what the safe parser reads (or over a size limit)."""


class Timeout(BaseException):
    """Raised by the wall-clock alarm; a BaseException so no ``except Exception`` inside
    sympy swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`Timeout` after ``seconds`` (SIGALRM; only on the main thread and when
    no other interval timer is running). Yields whether the limit is enforced."""
    usable = (hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield False
        return

    def on_alarm(signum, frame):
        raise Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _tokenize(s: str) -> list[tuple[str, str]]:
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None:
            raise _Reject(s[pos])
        pos = m.end()
        num, cmd, letter, op, _space = m.groups()
        if num is not None:
            out.append(("num", num))
        elif cmd is not None:
            # "\pir" (spaces were removed): the longest known command, then letters
            name = next((cmd[:j] for j in range(len(cmd), 0, -1) if cmd[:j] in _COMMANDS), None)
            if name is None:
                raise _Reject("\\" + cmd)
            out.append(("cmd", name))
            out.extend(("let", c) for c in cmd[len(name):])
        elif letter is not None:
            out.append(("let", letter))
        elif op is not None:
            out.append(("op", op))
        if len(out) > _MAX_TOKENS:
            raise _Reject("too long")
    return out


def _check_size(e):
    """Reject exact numbers beyond :data:`_MAX_BITS`."""
    if e.is_Rational and (abs(int(e.p)).bit_length() > _MAX_BITS
                          or int(e.q).bit_length() > _MAX_BITS):
        raise _Reject("number too large")
    return e


class _Parser:
    """Recursive descent over the tokens of one expression (see :func:`read_expr`)."""

    def __init__(self, tokens, sympy):
        self.toks, self.i, self.sp = tokens, 0, sympy
        self.has_decimal = False
        self.depth = 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else (None, None)

    def take(self):
        tok = self.peek()
        if tok[0] is None:
            raise _Reject("unexpected end")
        self.i += 1
        return tok

    def expect(self, value: str):
        if self.take() != ("op", value):
            raise _Reject(f"expected {value}")

    def parse(self):
        e = self.expr()
        if self.peek()[0] is not None:
            raise _Reject(f"unexpected {self.peek()[1]}")
        return e

    def expr(self):
        sp = self.sp
        e = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            t = self.term()
            e = _check_size(sp.Add(e, t if op == "+" else sp.Mul(-1, t)))
        return e

    def starts_atom(self, tok) -> bool:
        kind, v = tok
        return (kind in ("num", "let") or (kind == "op" and v in "({[")
                or (kind == "cmd" and v not in ("cdot", "times", "div")))

    def term(self):
        sp = self.sp
        e = self.unary()
        while True:
            tok = self.peek()
            if tok in (("op", "*"), ("cmd", "cdot"), ("cmd", "times")):
                self.take()
                e = sp.Mul(e, self.unary())
            elif tok in (("op", "/"), ("cmd", "div")):
                self.take()
                d = self.unary()
                if d == 0:
                    raise _Reject("division by zero")
                e = sp.Mul(e, sp.Pow(d, -1))
            elif self.starts_atom(tok):
                e = sp.Mul(e, self.power())
            else:
                return e
            _check_size(e)

    def unary(self):
        if self.peek() == ("op", "-"):
            self.take()
            return self.sp.Mul(-1, self.unary())
        if self.peek() == ("op", "+"):
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek() == ("op", "^"):
            self.take()
            return self.pow(base, self.exponent())
        return base

    def exponent(self):
        tok = self.peek()
        if tok == ("op", "-"):
            self.take()
            return self.sp.Mul(-1, self.exponent())
        if tok == ("op", "+"):
            self.take()
            return self.exponent()
        return self.atom()

    def postfix(self):
        a = self.atom()
        while self.peek() == ("op", "!"):
            self.take()
            a = self.factorial(a)
        return a

    def factorial(self, a):
        if a.is_Integer and 0 <= int(a) <= _MAX_FACTORIAL:
            return self.sp.factorial(a)
        if a.is_Symbol:
            return self.sp.factorial(a)
        raise _Reject("factorial too large")

    def pow(self, base, ex):
        sp = self.sp
        if ex.is_number:
            try:
                mag = abs(complex(ex.evalf(15)))
            except (TypeError, ValueError, OverflowError):
                raise _Reject("exponent") from None
            trivial = base.is_number and base in (sp.Integer(0), sp.Integer(1), sp.Integer(-1))
            if mag > _MAX_EXPONENT and not trivial:
                raise _Reject("exponent too large")
            if base.is_number and not trivial and mag > 1:
                if base.is_Rational:
                    bits = max(abs(int(base.p)).bit_length(), int(base.q).bit_length())
                else:
                    try:
                        bits = abs(math.log2(abs(complex(base.evalf(15))) or 1.0)) + 1
                    except (TypeError, ValueError, OverflowError):
                        raise _Reject("base") from None
                if bits * mag > _MAX_BITS:
                    raise _Reject("power too large")
        elif any(not q.exp.is_number for q in ex.atoms(sp.Pow)) or ex.has(sp.exp):
            raise _Reject("power tower")  # x^{x^{x}}: astronomically slow to evaluate
        return _check_size(sp.Pow(base, ex))

    def group(self, close: str):
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Reject("nested too deep")
        e = self.expr()
        self.expect(close)
        self.depth -= 1
        return e

    def arg(self, whole_number: bool):
        """A command argument: ``{...}``, else one token (for ``\\frac12`` one digit)."""
        tok = self.peek()
        if tok == ("op", "{"):
            self.take()
            return self.group("}")
        if tok[0] == "num" and not whole_number and len(tok[1]) > 1 and "." not in tok[1]:
            self.toks[self.i] = ("num", tok[1][1:])
            return self.number(tok[1][0])
        return self.atom()

    def number(self, text: str):
        if len(text) > _MAX_DIGITS:
            raise _Reject("number too long")
        if "." in text:
            self.has_decimal = True
            return self.sp.Rational(text.rstrip(".") or "0")
        return self.sp.Integer(int(text))

    def subscript(self) -> str:
        """The text of ``_x``, ``_12``, ``_{ab}`` (a name, never evaluated)."""
        self.take()  # "_"
        tok = self.take()
        if tok == ("op", "{"):
            parts = []
            while self.peek() != ("op", "}"):
                kind, v = self.take()
                if kind not in ("num", "let"):
                    raise _Reject("subscript")
                parts.append(v)
            self.take()
            return "".join(parts)
        if tok[0] in ("num", "let") and "." not in tok[1]:
            return tok[1]
        raise _Reject("subscript")

    def atom(self):
        sp = self.sp
        kind, v = self.take()
        if kind == "num":
            if self.peek() == ("op", "_"):  # a base: 4210_5
                if "." in v:
                    raise _Reject("subscript")
                return sp.Symbol(f"{v}_{self.subscript()}")
            return self.number(v)
        if kind == "let":
            if self.peek() == ("op", "_"):
                return sp.Symbol(f"{v}_{self.subscript()}")
            return {"e": sp.E, "i": sp.I}.get(v) or sp.Symbol(v)
        if kind == "op":
            if v == "(":
                return self.group(")")
            if v == "[":
                return self.group("]")
            if v == "{":
                return self.group("}")
            raise _Reject(v)
        # a command
        if v == "pi":
            return sp.pi
        if v == "infty":
            return sp.oo
        if v in _GREEK:
            if self.peek() == ("op", "_"):
                return sp.Symbol(f"{v}_{self.subscript()}")
            return sp.Symbol(v)
        if v == "frac":
            num = self.arg(False)
            den = self.arg(False)
            if den == 0:
                raise _Reject("division by zero")
            return _check_size(sp.Mul(num, sp.Pow(den, -1)))
        if v == "sqrt":
            index = None
            if self.peek() == ("op", "["):
                self.take()
                index = self.group("]")
            radicand = self.arg(True)
            if index is None:
                return sp.sqrt(radicand)
            if index == 0:
                raise _Reject("root index 0")
            return self.pow(radicand, sp.Pow(index, -1))
        if v in _FUNCS:
            return self.function(v)
        raise _Reject(v)

    def function(self, name: str):
        sp = self.sp
        base = None
        if name == "log" and self.peek() == ("op", "_"):
            self.take()
            base = self.arg(False)  # \log_28: base 2 of 8
        power = None
        if self.peek() == ("op", "^"):
            self.take()
            power = self.exponent()
        tok = self.peek()
        if tok in (("op", "("), ("op", "{"), ("op", "[")):
            self.take()
            x = self.group({"(": ")", "{": "}", "[": "]"}[tok[1]])
        else:  # "\sin 2x": the implicit product that follows
            x = self.power()
            while self.starts_atom(self.peek()) and not (
                    self.peek()[0] == "cmd" and self.peek()[1] in _FUNCS):
                x = sp.Mul(x, self.power())
        inverse = {"sin": sp.asin, "cos": sp.acos, "tan": sp.atan}
        if power is not None and power == -1 and name in inverse:
            return inverse[name](x)
        fn = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "sec": sp.sec, "csc": sp.csc,
              "cot": sp.cot, "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan,
              "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "exp": sp.exp,
              "ln": sp.log, "log": sp.log}[name]
        if base is not None:
            if base == 1 or base == 0:
                raise _Reject("log base")
            out = sp.log(x, base)
        else:
            out = fn(x)
        return out if power is None else self.pow(out, power)


def read_expr(s: str):
    """``(sympy expression, has a decimal literal)`` for a normalized answer, or None.

    Reads numbers, single-letter variables (``e`` is Euler's number, ``i`` the imaginary
    unit), greek letters, ``\\pi``, ``\\infty``, ``+ - * / ^``, ``\\cdot``, ``\\times``,
    ``\\div``, implicit multiplication, ``\\frac``, ``\\sqrt`` (``[n]`` too), brackets,
    factorials, subscripts (as names: ``4210_5``, ``a_1``) and ``\\sin \\cos \\tan \\sec
    \\csc \\cot \\arcsin \\arccos \\arctan \\sinh \\cosh \\tanh \\log \\ln \\exp``.
    Anything else, or anything over the size limits, is None."""
    if not s or len(s) > _MAX_PARSE:
        return None
    try:
        import sympy
    except ImportError:  # pragma: no cover - sympy is a pinned dependency
        return None
    try:
        p = _Parser(_tokenize(s), sympy)
        e = p.parse()
    except (_Reject, RecursionError, ValueError, TypeError, ArithmeticError, AttributeError):
        return None
    if e.has(sympy.nan, sympy.zoo):
        return None
    return e, p.has_decimal
