"""Exact rational arithmetic on small fully-connected networks, and an own exact line for 1-D regions.

Shares no code with gcert's certifiers: it reads the torch module's layers (weights converted exactly from
their float values with ``fractions.Fraction``) and the region/spec *descriptions* of :mod:`.strategies`; it
never imports gcert.lowering, gcert.pieces, gcert.bounds, gcert.splitting or gcert_plugins.

Semantics it implements (the reals, which certificates speak about):

* Linear ``W x + b``; ReLU ``max(x, 0)``; leaky ReLU ``x if x >= 0 else s * x`` for any slope s;
  ``torch.clamp(x, lo, hi) = min(max(x, lo), hi)`` (so ``hi`` everywhere when lo > hi), Hardtanh and ReLU6 alike.
* Segment: ``t in [0, 1] -> start + t * (end - start)`` with start/end the values the tensors hold; Box: t in
  [lower, upper]; LpBall: ``||t - center||_p <= eps`` intersected with the clip box, with exact center and eps.
* Spec: rows ``C y + d`` with the description's constants taken exactly (a regression row is
  ``reference + tau - y``, not its float rounding); margin = min over clauses of max over their rows.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn

from tests.soundness.evidence import U32, Evidence
from tests.soundness.strategies import (
    BallDesc,
    BoxDesc,
    Case,
    Clamp,
    FCNet,
    LeakyFn,
    RegionDesc,
    SegmentDesc,
    SpecDesc,
    _Fn,
)

Vec = list[Fraction]
Layer = tuple


class NotExact(Exception):
    """The module has a layer this oracle cannot evaluate exactly (e.g. a sigmoid)."""


# --- networks ------------------------------------------------------------------------------------------------


def exact_layers(module: nn.Module) -> list[Layer]:
    """The module's layers as exact ops: ('affine', W, b), ('leaky', s), ('clamp', lo, hi)."""
    out: list[Layer] = []
    if isinstance(module, nn.Sequential):
        for m in module:
            out += exact_layers(m)
        return out
    if isinstance(module, nn.Linear):
        w = [[Fraction(v) for v in row] for row in module.weight.detach().double().tolist()]
        b = [Fraction(v) for v in module.bias.detach().double().tolist()] if module.bias is not None else \
            [Fraction(0)] * len(w)
        return [("affine", w, b)]
    if isinstance(module, nn.ReLU) or (isinstance(module, _Fn) and module.fn is torch.relu):
        return [("leaky", Fraction(0))]
    if isinstance(module, nn.LeakyReLU | LeakyFn):
        return [("leaky", Fraction(float(module.negative_slope)))]
    if isinstance(module, nn.ReLU6):
        return [("clamp", Fraction(0), Fraction(6))]
    if isinstance(module, nn.Hardtanh):
        return [("clamp", Fraction(float(module.min_val)), Fraction(float(module.max_val)))]
    if isinstance(module, Clamp):
        lo = None if module.lo is None else Fraction(float(module.lo))
        hi = None if module.hi is None else Fraction(float(module.hi))
        return [("clamp", lo, hi)]
    if isinstance(module, nn.Identity | nn.Flatten):
        return []
    raise NotExact(type(module).__name__)


def clamp(v: Fraction, lo: Fraction | None, hi: Fraction | None) -> Fraction:
    if lo is not None:
        v = max(v, lo)
    if hi is not None:
        v = min(v, hi)
    return v


def apply(layer: Layer, x: Vec) -> Vec:
    if layer[0] == "affine":
        _, w, b = layer
        return [sum((wi * xi for wi, xi in zip(row, x, strict=True)), bi) for row, bi in zip(w, b, strict=True)]
    if layer[0] == "leaky":
        s = layer[1]
        return [v if v >= 0 else s * v for v in x]
    _, lo, hi = layer
    return [clamp(v, lo, hi) for v in x]


def evaluate(layers: Sequence[Layer], x: Vec) -> Vec:
    for layer in layers:
        x = apply(layer, x)
    return x


def magnitude(layers: Sequence[Layer], x: Sequence[float]) -> tuple[list[float], int]:
    """The network run with |W|, |b| and |x| (a bound on every partial sum's size), and the total fan-in."""
    m = [abs(float(v)) for v in x]
    fan = 0
    for layer in layers:
        if layer[0] == "affine":
            _, w, b = layer
            m = [sum(abs(float(wi)) * mi for wi, mi in zip(row, m, strict=True)) + abs(float(bi))
                 for row, bi in zip(w, b, strict=True)]
            fan += len(w[0]) + 1
        elif layer[0] == "leaky":
            m = [max(1.0, abs(float(layer[1]))) * v for v in m]
        else:
            bounds = [abs(float(v)) for v in layer[1:] if v is not None]
            m = [max([v, *bounds]) for v in m]
    return m, fan


# --- specs --------------------------------------------------------------------------------------------------


def spec_rows(spec: SpecDesc) -> tuple[list[list[Fraction]], list[Fraction], list[list[int]]]:
    """Exact rows (C, d) and clauses of a spec description."""
    k = spec.k
    if spec.kind == "top1":
        C, d = [], []
        for j in range(k):
            if j != spec.label:
                row = [Fraction(0)] * k
                row[spec.label], row[j] = Fraction(1), Fraction(-1)
                C.append(row)
                d.append(Fraction(0))
    elif spec.kind == "regression":
        ref, tau = Fraction(spec.reference), Fraction(spec.tau)
        lo_row, hi_row = [Fraction(0)] * k, [Fraction(0)] * k
        lo_row[spec.label], hi_row[spec.label] = Fraction(-1), Fraction(1)
        C, d = [lo_row, hi_row], [ref + tau, tau - ref]
    else:
        C = [[Fraction(v) for v in row] for row in spec.C]
        d = [Fraction(v) for v in spec.d]
    clauses = [list(c) for c in spec.clauses] if spec.clauses is not None else [[r] for r in range(len(C))]
    return C, d, clauses


def margin_of(rows: tuple[list[list[Fraction]], list[Fraction], list[list[int]]], y: Sequence[Fraction]) -> Fraction:
    C, d, clauses = rows
    vals = [sum((c * v for c, v in zip(row, y, strict=True)), di) for row, di in zip(C, d, strict=True)]
    return min(max(vals[r] for r in clause) for clause in clauses)


# --- regions ------------------------------------------------------------------------------------------------


def stored(values: Sequence[float], dtype: str) -> list[Fraction]:
    """The exact values a tensor of ``dtype`` holds for ``values``."""
    return [Fraction(v) for v in torch.tensor(values, dtype=getattr(torch, dtype)).double().tolist()]


def t_bounds(region: RegionDesc) -> tuple[Vec, Vec]:
    """Exact bounds of t (the region's box in the composed network's input coordinates)."""
    if isinstance(region, SegmentDesc):
        return [Fraction(0)], [Fraction(1)]
    if isinstance(region, BoxDesc):
        return [Fraction(v) for v in region.lower], [Fraction(v) for v in region.upper]
    eps = Fraction(region.eps)
    lo = [Fraction(c) - eps for c in region.center]
    hi = [Fraction(c) + eps for c in region.center]
    if region.clip is not None:
        a, b = Fraction(region.clip[0]), Fraction(region.clip[1])
        lo, hi = [min(max(v, a), b) for v in lo], [min(max(v, a), b) for v in hi]
    return lo, hi


def control(region: RegionDesc, t: Sequence[Fraction]) -> Vec:
    """The control (the generator's input) at t."""
    if isinstance(region, SegmentDesc):
        s, e = stored(region.start, region.dtype), stored(region.end, region.dtype)
        return [a + t[0] * (b - a) for a, b in zip(s, e, strict=True)]
    return list(t)


def contains(region: RegionDesc, t: Sequence[float], ulps: int = 4) -> bool:
    """Whether t lies in the region, allowing ``ulps`` float64 ulps of the bounds' size (not float32 rounding)."""
    tf = [Fraction(float(v)) for v in t]
    lo, hi = t_bounds(region)
    if len(tf) != len(lo):
        return False
    size = max([abs(float(v)) for v in [*lo, *hi, *tf]] + [1e-300])
    tol = Fraction(ulps * math.ulp(size))
    if any(v < a - tol or v > b + tol for v, a, b in zip(tf, lo, hi, strict=True)):
        return False
    if isinstance(region, BallDesc):
        c, eps = [Fraction(v) for v in region.center], Fraction(region.eps)
        diff = [abs(v - ci) for v, ci in zip(tf, c, strict=True)]
        if region.p == math.inf:
            return max(diff) <= eps + tol
        if region.p == 1:
            return sum(diff) <= eps + tol * len(diff)
        return sum(x * x for x in diff) <= (eps + tol * len(diff)) ** 2
    return True


def region_points(region: RegionDesc, rng: random.Random, n_random: int = 24) -> list[Vec]:
    """Points of the region, exact: ends and vertices of its box (balls: centre, axis points), random points."""
    lo, hi = t_bounds(region)
    dim = len(lo)
    pts: list[Vec] = []
    mid = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
    if isinstance(region, BallDesc) and region.p != math.inf:
        c, eps = [Fraction(v) for v in region.center], Fraction(region.eps)
        pts.append(_clip(region, c))
        for i in range(dim):
            for sign in (1, -1):
                p = list(c)
                p[i] += sign * eps
                pts.append(_clip(region, p))
        for _ in range(n_random):
            g = [rng.gauss(0, 1) for _ in range(dim)]
            if region.p == 1:
                g = [x ** 3 for x in g]
            g = [Fraction(x) for x in g]
            norm = sum(abs(x) for x in g) if region.p == 1 else \
                Fraction(math.sqrt(float(sum(x * x for x in g))) * (1 + 1e-12))
            if norm == 0:
                continue
            r = Fraction(rng.random())
            pts.append(_clip(region, [ci + eps * r * x / norm for ci, x in zip(c, g, strict=True)]))
        return [p for p in pts if contains(region, [float(v) for v in p], ulps=0) or _exact_in(region, p)]
    pts.append(mid)
    if dim <= 6:
        pts += [list(v) for v in itertools.product(*zip(lo, hi, strict=True))]
    else:
        pts += [[(a if rng.random() < 0.5 else b) for a, b in zip(lo, hi, strict=True)] for _ in range(32)]
    for _ in range(n_random):
        pts.append([a + Fraction(rng.random()) * (b - a) for a, b in zip(lo, hi, strict=True)])
    return pts


def _clip(region: BallDesc, p: Vec) -> Vec:
    if region.clip is None:
        return p
    a, b = Fraction(region.clip[0]), Fraction(region.clip[1])
    return [min(max(v, a), b) for v in p]


def _exact_in(region: BallDesc, p: Vec) -> bool:
    c, eps = [Fraction(v) for v in region.center], Fraction(region.eps)
    diff = [abs(v - ci) for v, ci in zip(p, c, strict=True)]
    return (sum(diff) if region.p == 1 else sum(x * x for x in diff)) <= (eps if region.p == 1 else eps * eps)


# --- the exact line -------------------------------------------------------------------------------------------


def _kinks(layer: Layer) -> list[Fraction]:
    if layer[0] == "leaky":
        return [Fraction(0)]
    if layer[0] == "clamp":
        return [v for v in layer[1:] if v is not None]
    return []


def _split(ts: list[Fraction], vals: list[Vec], funcs: list[tuple[list[Fraction], Fraction]]) -> tuple[
        list[Fraction], list[Vec]]:
    """Insert the points where some ``f(v) = coef . v + const`` crosses 0 strictly inside a piece (v affine there)."""
    out_t, out_v = [ts[0]], [vals[0]]
    for i in range(len(ts) - 1):
        t0, t1, v0, v1 = ts[i], ts[i + 1], vals[i], vals[i + 1]
        cuts = set()
        for coef, const in funcs:
            f0 = sum((c * x for c, x in zip(coef, v0, strict=True)), const)
            f1 = sum((c * x for c, x in zip(coef, v1, strict=True)), const)
            if (f0 < 0 < f1) or (f1 < 0 < f0):
                cuts.add(f0 / (f0 - f1))  # fraction of the piece
        for lam in sorted(cuts):
            out_t.append(t0 + lam * (t1 - t0))
            out_v.append([a + lam * (b - a) for a, b in zip(v0, v1, strict=True)])
        out_t.append(t1)
        out_v.append(v1)
    return out_t, out_v


def exact_line(layers: Sequence[Layer], t0: Fraction, t1: Fraction, x0: Vec, x1: Vec,
               funcs: list[tuple[list[Fraction], Fraction]]) -> tuple[list[Fraction], list[Vec]]:
    """Breakpoints t and output values of a piecewise-linear network along x(t) affine, x(t0)=x0, x(t1)=x1.

    Between consecutive breakpoints the outputs are affine in t, and so is every functional in ``funcs``
    (those are split at their zero crossings too).
    """
    ts, vals = [t0, t1], [list(x0), list(x1)]
    for layer in layers:
        kinks = _kinks(layer)
        if kinks:
            n = len(vals[0])
            unit = [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]
            ts, vals = _split(ts, vals, [(unit[i], -k) for i in range(n) for k in kinks])
        vals = [apply(layer, v) for v in vals]
    return _split(ts, vals, funcs) if funcs else (ts, vals)


def row_functionals(rows: tuple[list[list[Fraction]], list[Fraction], list[list[int]]]) -> list[
        tuple[list[Fraction], Fraction]]:
    """Each row, and the difference of each pair of rows of one clause (where a clause's max changes row)."""
    C, d, clauses = rows
    funcs = list(zip(C, d, strict=True))
    for clause in clauses:
        for a, b in itertools.combinations(clause, 2):
            funcs.append(([x - y for x, y in zip(C[a], C[b], strict=True)], d[a] - d[b]))
    return funcs


# --- the oracle ------------------------------------------------------------------------------------------------


def case_layers(case: Case, net: nn.Module, gen: nn.Module) -> list[Layer]:
    if not isinstance(case.network, FCNet):
        raise NotExact("ConvNet")
    return exact_layers(gen) + exact_layers(net)


def exact_evidence(case: Case, net: nn.Module, gen: nn.Module, seed: int = 0) -> Evidence:
    """Evidence from exact arithmetic at many points, plus the exact line on 1-D regions of PL networks."""
    layers = case_layers(case, net, gen)
    region, spec = case.region, case.spec
    assert region is not None and spec is not None
    rows = spec_rows(spec)
    rng = random.Random(seed)

    def margin_at(t: Sequence[float]) -> Fraction:
        return margin_of(rows, evaluate(layers, control(region, [Fraction(float(v)) for v in t])))

    def slack_at(t: Sequence[float]) -> float:
        m, fan = magnitude(layers, [float(v) for v in control(region, [Fraction(float(v)) for v in t])])
        C, d, _ = rows
        row_mag = max(sum(abs(float(c)) * v for c, v in zip(row, m, strict=True)) + abs(float(di))
                      for row, di in zip(C, d, strict=True))
        return U32 * (fan + len(m) + 2) * row_mag

    points = [(tuple(p), margin_of(rows, evaluate(layers, control(region, p)))) for p in region_points(region, rng)]
    lo, hi = t_bounds(region)
    ev = Evidence("exact", points, margin_at, slack_at, lambda t: contains(region, t),
                  box=([float(v) for v in lo], [float(v) for v in hi]))
    if len(lo) == 1:
        x0, x1 = control(region, lo), control(region, hi)
        ts, ys = exact_line(layers, lo[0], hi[0], x0, x1, row_functionals(rows))
        margins = [margin_of(rows, y) for y in ys]
        k = min(range(len(ts)), key=lambda i: margins[i])
        ev.exact_min = margins[k]
        ev.notes["argmin"] = (ts[k],)
        ev.notes["pieces"] = len(ts) - 1
        if hi[0] > lo[0]:
            held = sum((ts[i + 1] - ts[i] for i in range(len(ts) - 1)
                        if margin_of(rows, [(a + b) / 2 for a, b in zip(ys[i], ys[i + 1], strict=True)]) > 0),
                       Fraction(0))
            ev.share = (float(held / (hi[0] - lo[0])), 0.0)
            ev.notes["share_exact"] = held / (hi[0] - lo[0])
    return ev
