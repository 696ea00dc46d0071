"""Reading VNN-LIB properties (VNN-COMP): an input box and the unsafe output set, as a gcert box and spec.

The top-level assertions of a file are conjoined; each is a formula of ``and``/``or`` over comparisons of
variables and constants. Their conjunction is brought to its disjunctive normal form, a disjunction of
conjunctions of comparisons. Comparisons that mention only inputs ``X_i`` give the input box (they must be the
same in every disjunct); the rest form the unsafe set, a disjunction of conjunctions of output comparisons.
gcert certifies its complement: a conjunction (one clause per disjunct) of disjunctions of strict linear rows,
which :class:`gcert.spec.Spec` holds as ``clauses``.

Constants are read exactly (as fractions) and rounded once to float64 in the conservative direction: input
bounds outward (the box certified contains the property's), spec offsets downward (the spec certified is never
weaker than the property's). :meth:`Property.violated` evaluates the original formula tree at a point in exact
arithmetic, independently of the compiled rows: the runner checks every counterexample with it.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from gcert.errors import InputError
from gcert.spec import Spec

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")
_COMPARISONS = ("<=", ">=", "<", ">")
MAX_DISJUNCTS = 10_000

Atom = tuple[str, Any, Any]  # (op, lhs, rhs): lhs/rhs are variable names, Fractions or Linear terms


@dataclass(frozen=True)
class Linear:
    """A linear term ``sum coef * var + const`` read from ``(+ ...)``, ``(- ...)`` and ``(* c v)`` (exact)."""

    terms: tuple[tuple[str, Fraction], ...]
    const: Fraction = Fraction(0)


@dataclass
class Property:
    lower: torch.Tensor  # (n,) input lower bounds, X_0 .. X_{n-1} (float64, rounded outward)
    upper: torch.Tensor
    spec: Spec  # the complement of the unsafe set
    source: str
    num_outputs: int = 0  # how many outputs Y_j it declares
    assertions: list[Any] = field(default_factory=list)  # the parsed top-level assertion bodies
    inner_lower: torch.Tensor | None = None  # the input box rounded inward: every float64 point in it is in the box
    inner_upper: torch.Tensor | None = None

    def violated(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Whether every top-level assertion holds at inputs ``x`` and outputs ``y`` (exact arithmetic):
        the point lies in the input set and its outputs in the unsafe set."""
        xs = [Fraction(float(v)) for v in x.reshape(-1).tolist()]
        ys = [Fraction(float(v)) for v in y.reshape(-1).tolist()]
        return all(_evaluate(a, xs, ys, self.source) for a in self.assertions)


def read_vnnlib(path: str | os.PathLike[str]) -> Property:
    """Parse a VNN-LIB 1.0 file (VNN-COMP 2021-2024); every problem with it is one line of :class:`InputError`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read VNN-LIB file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a VNN-LIB text file (it is not UTF-8 text)") from None
    if "\x00" in text:
        raise InputError(f"{path} is not a VNN-LIB text file (it holds binary data)")
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    tokens = _TOKEN.findall(text)
    tokens.reverse()
    exprs = []
    while tokens:
        exprs.append(_parse(tokens, path))
    declared: dict[str, set[int]] = {"X": set(), "Y": set()}
    assertions: list[Any] = []
    for e in exprs:
        if not isinstance(e, list) or not e:
            raise InputError(f"{path}: expected (declare-const ...) or (assert ...), got {_show(e)}")
        if e[0] == "declare-const":
            if len(e) != 3:
                raise InputError(f"{path}: malformed declaration {_show(e)}")
            kind, idx = _var(e[1], path)
            declared[kind].add(idx)
        elif e[0] == "assert":
            if len(e) != 2:
                raise InputError(f"{path}: an assert takes one formula, got {_show(e)}")
            assertions.append(e[1])
        else:
            raise InputError(f"{path}: unsupported command {e[0]!r}; VNN-LIB files hold declare-const and assert")
    if not assertions:
        raise InputError(f"{path}: no assertions; a property needs input bounds and an unsafe output set")
    n_x, n_y = _count(declared["X"], "X", path), _count(declared["Y"], "Y", path)
    dnf = [[]]  # the conjunction of all top-level assertions
    for a in assertions:
        dnf = _and(dnf, _dnf(a, declared, path), path)
    boxes, unsafe = set(), []
    for conj in dnf:
        x_atoms = [a for a in conj if _kinds(a) == {"X"}]
        y_atoms = [a for a in conj if _kinds(a) != {"X"}]
        if any("X" in _kinds(a) for a in y_atoms) or any(not _kinds(a) for a in conj):
            bad = next(a for a in conj if ("X" in _kinds(a) and "Y" in _kinds(a)) or not _kinds(a))
            raise InputError(f"{path}: comparison {_show(list(bad))} mixes inputs and outputs or has no variable; "
                             "gcert reads input bounds and output constraints")
        boxes.add(frozenset(x_atoms))
        unsafe.append(y_atoms)
    if len(boxes) != 1:
        raise InputError(f"{path}: the property has {len(boxes)} different input boxes (a disjunction over inputs); "
                         "split it into one file per box")
    (lower, upper), inner = _box(next(iter(boxes)), n_x, path)
    spec = _safe_spec(unsafe, n_y, path)
    return Property(lower, upper, spec, str(path), n_y, assertions, *inner)


# --- parsing -----------------------------------------------------------------------------------------


def _parse(tokens: list[str], path: object) -> object:
    tok = tokens.pop()
    if tok == "(":
        out = []
        while tokens and tokens[-1] != ")":
            out.append(_parse(tokens, path))
        if not tokens:
            raise InputError(f"{path}: unbalanced parentheses (a '(' is never closed)")
        tokens.pop()
        return out
    if tok == ")":
        raise InputError(f"{path}: unbalanced parentheses (an unexpected ')')")
    return tok


def _show(e: object) -> str:
    def text(x: object) -> str:
        return "(" + " ".join(text(y) for y in x) + ")" if isinstance(x, list) else str(x)

    s = text(e)
    return s if len(s) <= 60 else s[:57] + "..."


def _var(token: object, path: object) -> tuple[str, int]:
    m = _VAR.match(str(token))
    if not m:
        raise InputError(f"{path}: expected a variable X_i or Y_j, got {_show(token)}")
    return m.group(1), int(m.group(2))


def _count(indices: set[int], kind: str, path: object) -> int:
    if not indices:
        raise InputError(f"{path}: no {kind} variables declared (declare-const {kind}_0 Real)")
    n = max(indices) + 1
    if len(indices) != n:
        missing = min(set(range(n)) - indices)
        raise InputError(f"{path}: {kind}_{missing} is not declared but {kind}_{n - 1} is")
    return n


def _term(token: object, declared: dict[str, set[int]], path: object) -> str | Fraction | Linear:
    if isinstance(token, list):
        return _linear(token, declared, path)
    m = _VAR.match(str(token))
    if m:
        if int(m.group(2)) not in declared[m.group(1)]:
            raise InputError(f"{path}: {token} is used but not declared")
        return token
    try:
        value = Fraction(token)
    except (ValueError, ZeroDivisionError):
        raise InputError(f"{path}: expected a variable or a finite number, got {token!r}") from None
    return value


def _linear(e: list[Any], declared: dict[str, set[int]], path: object) -> Linear:
    """A compound operand: sums, differences and products by a constant of variables and numbers."""
    head, args = (e[0] if e else None), e[1:]
    parts = [_as_linear(_term(a, declared, path)) for a in args]
    if head == "+" and parts:
        coefs: dict[str, Fraction] = {}
        for p in parts:
            for v, c in p.terms:
                coefs[v] = coefs.get(v, Fraction(0)) + c
        return Linear(tuple(coefs.items()), sum((p.const for p in parts), Fraction(0)))
    if head == "-" and len(parts) in (1, 2):
        neg = _scaled(parts[-1], Fraction(-1))
        return neg if len(parts) == 1 else _sum(parts[0], neg)
    if head == "*" and len(parts) == 2:
        a, b = parts
        if not a.terms:
            return _scaled(b, a.const)
        if not b.terms:
            return _scaled(a, b.const)
        raise InputError(f"{path}: {_show(e)} multiplies two variables; VNN-LIB properties are linear")
    raise InputError(f"{path}: unsupported term {_show(e)}; gcert reads variables, numbers, (+ ...), (- ...) "
                     "and (* number variable)")


def _as_linear(t: str | Fraction | Linear) -> Linear:
    if isinstance(t, Linear):
        return t
    return Linear(((t, Fraction(1)),)) if isinstance(t, str) else Linear((), t)


def _scaled(t: Linear, k: Fraction) -> Linear:
    return Linear(tuple((v, c * k) for v, c in t.terms), t.const * k)


def _sum(a: Linear, b: Linear) -> Linear:
    coefs = dict(a.terms)
    for v, c in b.terms:
        coefs[v] = coefs.get(v, Fraction(0)) + c
    return Linear(tuple(coefs.items()), a.const + b.const)


def _dnf(e: object, declared: dict[str, set[int]], path: object) -> list[list[Atom]]:
    """A formula as a list of conjunctions of atoms (its disjunctive normal form)."""
    if not isinstance(e, list) or not e:
        raise InputError(f"{path}: expected a formula, got {_show(e)}")
    head = e[0]
    if head in _COMPARISONS:
        if len(e) != 3:
            raise InputError(f"{path}: a comparison takes two operands, got {_show(e)}")
        return [[(head, _term(e[1], declared, path), _term(e[2], declared, path))]]
    if head == "and":
        out: list[list[Atom]] = [[]]
        for part in e[1:]:
            out = _and(out, _dnf(part, declared, path), path)
        return out
    if head == "or":
        if len(e) < 2:
            raise InputError(f"{path}: (or) needs at least one formula")
        return [conj for part in e[1:] for conj in _dnf(part, declared, path)]
    raise InputError(f"{path}: unsupported formula ({head} ...); gcert reads and, or, <=, >=, <, >")


def _and(a: list[list[Atom]], b: list[list[Atom]], path: object) -> list[list[Atom]]:
    if len(a) * len(b) > MAX_DISJUNCTS:
        raise InputError(f"{path}: the property expands to more than {MAX_DISJUNCTS} disjuncts")
    return [x + y for x, y in itertools.product(a, b)]


def _kinds(atom: Atom) -> set[str]:
    out = {t[0] for t in atom[1:] if isinstance(t, str)}
    return out | {v[0] for t in atom[1:] if isinstance(t, Linear) for v, _ in t.terms}


# --- the box and the spec ------------------------------------------------------------------------------


Bounds = tuple[torch.Tensor, torch.Tensor]


def _box(atoms: frozenset[Atom], n_x: int, path: object) -> tuple[Bounds, Bounds]:
    """The input box rounded outward (the region certified) and inward (where counterexamples are taken)."""
    lo: list[Fraction | None] = [None] * n_x
    hi: list[Fraction | None] = [None] * n_x
    for op, a, b in atoms:
        if isinstance(a, Linear) or isinstance(b, Linear):
            raise InputError(f"{path}: input constraint ({op} ...) is a linear term; gcert reads input boxes, each "
                             "bound comparing one X_i with a number")
        if isinstance(a, str) and isinstance(b, str):
            raise InputError(f"{path}: input constraint ({op} {a} {b}) relates two inputs; gcert reads input boxes")
        var, value, upper = (a, b, op in ("<=", "<")) if isinstance(a, str) else (b, a, op in (">=", ">"))
        i = _var(var, path)[1]
        if upper:
            hi[i] = value if hi[i] is None else min(hi[i], value)
        else:
            lo[i] = value if lo[i] is None else max(lo[i], value)
    for i in range(n_x):
        if lo[i] is None or hi[i] is None:
            raise InputError(f"{path}: every input X_i needs a lower and an upper bound; X_{i} lacks one")
        if lo[i] > hi[i]:
            raise InputError(f"{path}: X_{i} has lower bound {float(lo[i])} > upper bound {float(hi[i])}")
    lower = torch.tensor([_round(v, down=True) for v in lo], dtype=torch.float64)
    upper = torch.tensor([_round(v, down=False) for v in hi], dtype=torch.float64)
    if not (bool(torch.isfinite(lower).all()) and bool(torch.isfinite(upper).all())):
        raise InputError(f"{path}: an input bound is too large for float64")
    inner_lo = torch.tensor([_round(v, down=False) for v in lo], dtype=torch.float64)
    inner_hi = torch.tensor([_round(v, down=True) for v in hi], dtype=torch.float64)
    # A box narrower than one float64 has no inner float64 box: keep the outer one (witnesses may then fail the
    # exact check, and are reported as rejected).
    empty = inner_lo > inner_hi
    inner_lo, inner_hi = torch.where(empty, lower, inner_lo), torch.where(empty, upper, inner_hi)
    return (lower, upper), (inner_lo, inner_hi)


def _safe_spec(unsafe: list[list[Atom]], n_y: int, path: object) -> Spec:
    """The complement of the unsafe set: for each disjunct, one of its comparisons fails (a clause of rows)."""
    rows: dict[tuple[tuple[float, ...], float], int] = {}
    clauses: list[tuple[int, ...]] = []
    for conj in unsafe:
        clause = []
        if not conj:
            raise InputError(f"{path}: a disjunct of the unsafe set has no output constraint, so every input in the "
                             "box is unsafe; check the property")
        for op, a, b in conj:
            # unsafe a <= b (or a < b): safe, strictly, a - b > 0. unsafe a >= b (or a > b): safe b - a > 0.
            pos, neg = (a, b) if op in ("<=", "<") else (b, a)
            coeffs = [Fraction(0)] * n_y
            const = Fraction(0)
            for term, sign in ((pos, 1), (neg, -1)):
                for var, coef in _as_linear(term).terms:
                    coeffs[_var(var, path)[1]] += sign * coef
                const += sign * _as_linear(term).const
            inexact = next((c for c in coeffs if Fraction(float(c)) != c), None)
            if inexact is not None:
                raise InputError(f"{path}: output coefficient {inexact} is not exactly a float64 number; write "
                                 "coefficients a float64 holds (e.g. 0.5, not 0.1)")
            key = (tuple(float(c) for c in coeffs), _round(const, down=True))
            if not math.isfinite(key[1]):
                raise InputError(f"{path}: an output constant is too large for float64")
            clause.append(rows.setdefault(key, len(rows)))
        clauses.append(tuple(dict.fromkeys(clause)))
    C = torch.tensor([list(k[0]) for k in rows], dtype=torch.float64)
    d = torch.tensor([k[1] for k in rows], dtype=torch.float64)
    return Spec(C, d, "vnnlib", {"file": Path(str(path)).name}, clauses=tuple(clauses))


def _round(value: Fraction, down: bool) -> float:
    """The float64 nearest ``value`` in the given direction (never past it)."""
    try:
        f = float(value)
    except OverflowError:
        return -math.inf if value < 0 else math.inf
    if down and Fraction(f) > value:
        f = math.nextafter(f, -math.inf)
    elif not down and Fraction(f) < value:
        f = math.nextafter(f, math.inf)
    return f


# --- exact evaluation of the original formulas ------------------------------------------------------------


def _evaluate(e: Any, xs: list[Fraction], ys: list[Fraction], path: object) -> bool:
    head = e[0]
    if head == "and":
        return all(_evaluate(p, xs, ys, path) for p in e[1:])
    if head == "or":
        return any(_evaluate(p, xs, ys, path) for p in e[1:])
    a, b = (_value(t, xs, ys) for t in e[1:])
    return {"<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b}[head]


def _value(token: Any, xs: list[Fraction], ys: list[Fraction]) -> Fraction:
    if isinstance(token, list):
        head, args = token[0], [_value(a, xs, ys) for a in token[1:]]
        if head == "+":
            return sum(args, Fraction(0))
        if head == "-":
            return -args[0] if len(args) == 1 else args[0] - args[1]
        return args[0] * args[1]  # "*": the reader accepted only a number times a term
    m = _VAR.match(token)
    if m is None:
        return Fraction(token)
    values = xs if m.group(1) == "X" else ys
    return values[int(m.group(2))]
