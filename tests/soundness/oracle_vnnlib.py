"""An own VNN-LIB evaluator: a tiny s-expression reader and the property evaluated directly on (X, Y).

Semantics (VNN-COMP): the file states the *unsafe* set; every top-level ``assert`` is conjoined; ``and``/``or``
nest freely; constants are exact decimals (``Fraction("0.7")``, not the float nearest to it). Asserts that only
mention X are the input box; the others are the output part of the unsafe set. Shares no code with
``gcert.vnnlib`` (nor with the compiled spec rows).

The *degree* of an expression at (X, Y): a comparison ``(<= a b)`` has degree ``b - a`` (>= 0 exactly when it
holds), ``and`` takes the min, ``or`` the max. A point is unsafe exactly when the output part's degree is >= 0,
so ``-degree`` is a margin with the sign of gcert's (> 0: the property holds there); on the robustness shapes
it equals gcert's margin (rows are differences of outputs and constants with coefficients +-1).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from torch import nn

from tests.soundness.evidence import U32, Evidence
from tests.soundness.oracle_exact import evaluate, exact_layers, exact_line, magnitude

_TOKENS = re.compile(r"\(|\)|[^\s()]+")


def read_sexprs(text: str) -> list[Any]:
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    tokens = _TOKENS.findall(text)
    pos = 0

    def one() -> Any:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            out = []
            while tokens[pos] != ")":
                out.append(one())
            pos += 1
            return out
        return tok

    out = []
    while pos < len(tokens):
        out.append(one())
    return out


def _mentions(e: Any, prefix: str) -> bool:
    if isinstance(e, list):
        return any(_mentions(x, prefix) for x in e)
    return isinstance(e, str) and e.startswith(prefix)


class VnnlibProperty:
    """The parsed property: declared X and Y counts, the input asserts, and the output asserts."""

    def __init__(self, text: str):
        self.n_x = self.n_y = 0
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        for e in read_sexprs(text):
            if e[0] == "declare-const":
                name = e[1]
                idx = int(name.split("_")[1]) + 1
                if name.startswith("X_"):
                    self.n_x = max(self.n_x, idx)
                else:
                    self.n_y = max(self.n_y, idx)
            elif e[0] == "assert":
                (self.outputs if _mentions(e[1], "Y_") else self.inputs).append(e[1])

    def box(self, rounded: bool = False) -> tuple[list[Fraction], list[Fraction]]:
        """The input box from asserts ``(>= X_i c)``/``(<= X_i c)``; ``rounded``: constants as float64 reads them."""
        lo = [Fraction(-(10**30))] * self.n_x
        hi = [Fraction(10**30)] * self.n_x
        for e in self.inputs:
            op, a, b = e
            if not a.startswith("X_"):
                op, a, b = {"<=": ">=", ">=": "<="}[op], b, a
            v = Fraction(float(b)) if rounded else Fraction(b)
            i = int(a.split("_")[1])
            if op == ">=":
                lo[i] = max(lo[i], v)
            else:
                hi[i] = min(hi[i], v)
        return lo, hi

    def degree(self, e: Any, x: Sequence[Fraction], y: Sequence[Fraction]) -> Fraction:
        head = e[0]
        if head == "and":
            return min(self.degree(a, x, y) for a in e[1:])
        if head == "or":
            return max(self.degree(a, x, y) for a in e[1:])
        a, b = self.term(e[1], x, y), self.term(e[2], x, y)
        if head in ("<=", "<"):
            return b - a
        if head in (">=", ">"):
            return a - b
        raise ValueError(f"unknown head {head!r}")

    def term(self, t: Any, x: Sequence[Fraction], y: Sequence[Fraction]) -> Fraction:
        if isinstance(t, list):
            vals = [self.term(a, x, y) for a in t[1:]]
            if t[0] == "+":
                return sum(vals, Fraction(0))
            if t[0] == "-":
                return -vals[0] if len(vals) == 1 else vals[0] - sum(vals[1:], Fraction(0))
            if t[0] == "*":
                return math.prod(vals, start=Fraction(1))
            raise ValueError(t[0])
        if t.startswith("X_"):
            return x[int(t[2:])]
        if t.startswith("Y_"):
            return y[int(t[2:])]
        return Fraction(t)

    def margin(self, x: Sequence[Fraction], y: Sequence[Fraction]) -> Fraction:
        """Minus the degree of the output part: > 0 exactly when (x, y) is outside the unsafe set."""
        return -min(self.degree(e, x, y) for e in self.outputs)

    def atoms(self) -> list[tuple[list[Fraction], Fraction]]:
        """Each output comparison as an affine functional of Y (coefficients, constant)."""
        out = []

        def walk(e: Any) -> None:
            if e[0] in ("and", "or"):
                for a in e[1:]:
                    walk(a)
                return
            coef, const = [Fraction(0)] * self.n_y, Fraction(0)
            for t, sign in ((e[1], 1), (e[2], -1)):
                if t.startswith("Y_"):
                    coef[int(t[2:])] += sign
                else:
                    const += sign * Fraction(t)
            out.append((coef, const))

        for e in self.outputs:
            walk(e)
        return out


def vnnlib_evidence(text: str, net: nn.Module, seed: int = 0) -> Evidence:
    """Evidence for ``net`` against the property: exact at box points, exact line when there is one input."""
    prop = VnnlibProperty(text)
    layers = exact_layers(net)
    lo, hi = prop.box()
    rlo, rhi = prop.box(rounded=True)
    rng = random.Random(seed)

    def margin_at(t: Sequence[float]) -> Fraction:
        x = [Fraction(float(v)) for v in t]
        return prop.margin(x, evaluate(layers, x))

    def slack_at(t: Sequence[float]) -> float:
        m, fan = magnitude(layers, [float(v) for v in t])
        consts = [abs(float(c)) for _, c in prop.atoms()]
        return U32 * (fan + len(m) + 2) * (2 * max(m, default=0.0) + max(consts, default=0.0))

    def contains(t: Sequence[float]) -> bool:
        if len(t) != prop.n_x:
            return False
        for v, a, b, ra, rb in zip(t, lo, hi, rlo, rhi, strict=True):
            f = Fraction(float(v))
            tol = Fraction(4 * math.ulp(max(abs(float(a)), abs(float(b)), abs(float(v)), 1e-300)))
            if f < min(a, ra) - tol or f > max(b, rb) + tol:
                return False
        return True

    def witness_ok(t: Sequence[float]) -> str | None:
        if not contains(t):
            return f"X = {list(t)} is outside the property's input box"
        x = [Fraction(float(v)) for v in t]
        y = evaluate(layers, x)
        deg = min(prop.degree(e, x, y) for e in prop.outputs)
        if deg < -slack_at(t):
            return f"(X, Y) = ({[float(v) for v in x]}, {[float(v) for v in y]}) is not in the unsafe set " \
                   f"(degree {float(deg):.3g})"
        return None

    pts = [[(a + b) / 2 for a, b in zip(lo, hi, strict=True)]]
    pts += [list(v) for v in itertools.product(*zip(lo, hi, strict=True))]
    pts += [[a + Fraction(rng.random()) * (b - a) for a, b in zip(lo, hi, strict=True)] for _ in range(24)]
    points = [(tuple(p), prop.margin(p, evaluate(layers, p))) for p in pts]
    ev = Evidence("vnnlib-exact", points, margin_at, slack_at, contains, witness_ok=witness_ok,
                  box=([float(v) for v in lo], [float(v) for v in hi]))
    if prop.n_x == 1:
        atoms = prop.atoms()
        funcs = atoms + [([a - b for a, b in zip(f[0], g[0], strict=True)], f[1] - g[1])
                         for f, g in itertools.combinations(atoms, 2)]
        ts, ys = exact_line(layers, lo[0], hi[0], [lo[0]], [hi[0]], funcs)
        cand = list(zip(ts, ys, strict=True)) + [
            ((ts[i] + ts[i + 1]) / 2, [(a + b) / 2 for a, b in zip(ys[i], ys[i + 1], strict=True)])
            for i in range(len(ts) - 1)]
        margins = [(prop.margin([t], y), t) for t, y in cand]
        best = min(margins)
        ev.exact_min = best[0]
        ev.notes["argmin"] = (best[1],)
    return ev
