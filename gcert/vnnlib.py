"""Reading VNN-LIB properties (VNN-COMP): an input box and the unsafe output set, as a gcert box and spec.

A property states the *unsafe* set. gcert certifies its complement, which is a conjunction of strict linear
rows exactly when the unsafe set is a disjunction of single comparisons (every robustness property of
VNN-COMP 2021 is). Other shapes are refused with a one-line error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gcert.errors import InputError
from gcert.spec import Spec

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


@dataclass
class Property:
    lower: torch.Tensor  # (n,) input lower bounds, X_0 .. X_{n-1}
    upper: torch.Tensor
    spec: Spec  # the complement of the unsafe set
    source: str


def read_vnnlib(path: str | os.PathLike[str]) -> Property:
    text = Path(path).read_text()
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    tokens = _TOKEN.findall(text)
    exprs = []
    while tokens:
        exprs.append(_parse(tokens, path))
    n_x = n_y = 0
    bounds: dict[int, list[float]] = {}
    unsafe: list[list[tuple[str, object, object]]] = []
    for e in exprs:
        if not isinstance(e, list) or not e:
            continue
        if e[0] == "declare-const":
            kind, idx = _var(e[1], path)
            if kind == "X":
                n_x = max(n_x, idx + 1)
            else:
                n_y = max(n_y, idx + 1)
        elif e[0] == "assert":
            body = e[1]
            comparison = _comparison(body)
            if comparison and _mentions_only(body, "X"):
                op, a, b = comparison
                var, value, is_upper = (a, b, op == "<=") if isinstance(a, str) else (b, a, op == ">=")
                _, idx = _var(var, path)
                slot = bounds.setdefault(idx, [float("-inf"), float("inf")])
                slot[1 if is_upper else 0] = float(value)
            elif comparison:
                unsafe.append([comparison])  # a single top-level comparison is one disjunct
            elif body[0] == "or":
                unsafe.extend(_conjunction(d, path) for d in body[1:])
            elif body[0] == "and":
                unsafe.append(_conjunction(body, path))
            else:
                raise InputError(f"{path}: unsupported assertion ({body[0]} ...)")
    if n_x == 0 or len(bounds) != n_x or any(not all(map(_finite, b)) for b in bounds.values()):
        raise InputError(f"{path}: every input X_i needs a lower and an upper bound")
    if not unsafe:
        raise InputError(f"{path}: no output constraint (the unsafe set) found")
    if any(len(disjunct) != 1 for disjunct in unsafe):
        raise InputError(f"{path}: a disjunct of the unsafe set is a conjunction of comparisons; its complement "
                         "is a disjunction, which gcert's specs (all rows > 0) cannot express")
    rows = [disjunct[0] for disjunct in unsafe]
    C = torch.zeros(len(rows), n_y, dtype=torch.float64)
    d = torch.zeros(len(rows), dtype=torch.float64)
    for r, (op, a, b) in enumerate(rows):
        # unsafe: a >= b (or a <= b). safe, strictly: b - a > 0 (or a - b > 0).
        lhs, rhs = (b, a) if op == ">=" else (a, b)
        for term, sign in ((lhs, 1.0), (rhs, -1.0)):
            if isinstance(term, str):
                kind, idx = _var(term, path)
                if kind != "Y":
                    raise InputError(f"{path}: output constraints may only mention Y variables")
                C[r, idx] += sign
            else:
                d[r] += sign * float(term)
    lower = torch.tensor([bounds[i][0] for i in range(n_x)], dtype=torch.float64)
    upper = torch.tensor([bounds[i][1] for i in range(n_x)], dtype=torch.float64)
    if bool((lower > upper).any()):
        raise InputError(f"{path}: some input has lower bound > upper bound")
    return Property(lower, upper, Spec(C.float(), d.float(), "vnnlib", {"file": Path(path).name}), str(path))


def _parse(tokens: list[str], path: object) -> object:
    tok = tokens.pop(0)
    if tok == "(":
        out = []
        while tokens and tokens[0] != ")":
            out.append(_parse(tokens, path))
        if not tokens:
            raise InputError(f"{path}: unbalanced parentheses")
        tokens.pop(0)
        return out
    if tok == ")":
        raise InputError(f"{path}: unexpected ')'")
    try:
        return float(tok)
    except ValueError:
        return tok


def _var(token: object, path: object) -> tuple[str, int]:
    m = _VAR.match(str(token))
    if not m:
        raise InputError(f"{path}: expected a variable X_i or Y_j, got {token!r}")
    return m.group(1), int(m.group(2))


def _comparison(e: object) -> tuple[str, object, object] | None:
    if isinstance(e, list) and len(e) == 3 and e[0] in ("<=", ">="):
        if any(isinstance(t, list) for t in e[1:]):
            return None
        return e[0], e[1], e[2]
    return None


def _conjunction(e: object, path: object) -> list[tuple[str, object, object]]:
    comparison = _comparison(e)
    if comparison:
        return [comparison]
    if isinstance(e, list) and e and e[0] == "and":
        parts = [_comparison(x) for x in e[1:]]
        if all(parts):
            return [p for p in parts if p]
    raise InputError(f"{path}: unsupported output constraint {e!r:.60}")


def _mentions_only(e: object, kind: str) -> bool:
    names = [t for t in (e[1], e[2]) if isinstance(t, str)] if isinstance(e, list) else []
    return bool(names) and all(str(n).startswith(kind + "_") for n in names)


def _finite(v: float) -> bool:
    return v not in (float("inf"), float("-inf"))
