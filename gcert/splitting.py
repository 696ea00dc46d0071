"""Splitting on t: best-first bisection of a one-dimensional region for sound certifiers.

A sound bound on a sub-interval ``[a, b]`` of ``t`` is tighter the shorter it is, so on segments a sound
certifier approaches completeness by bisecting where its bound is worst, until every piece is certified,
a concrete point violates the spec, or the budget of pieces is spent.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gcert.attack import cheap_answer
from gcert.contracts import Outcome
from gcert.problem import Problem

Tensor = torch.Tensor


@dataclass
class SplitResult:
    verdict: str
    margin_lower: float
    pieces: int
    witness_t: Tensor | None = None
    margin_upper: float | None = None
    piece_bounds: list[list[float]] | None = None  # [[lo_t, hi_t, margin lower bound], ...] (for plots)


PIECE_BOUNDS_CAP = 256
"""Pieces a record's ``piece_bounds`` lists at most: beyond, neighbours merge (keeping the smaller bound)."""


def piece_bounds(heap: list[tuple[float, float, float]], cap: int = PIECE_BOUNDS_CAP) -> list[list[float]]:
    """The pieces of a bisection sorted along t, ``[lo_t, hi_t, lower bound]`` each, at most ``cap`` of them;
    merged neighbours keep the smaller bound, so every entry stays a sound bound on its interval."""
    pieces = [[a, b, bound] for bound, a, b in sorted(heap, key=lambda p: p[1])]
    while len(pieces) > cap:
        pieces = [[p[0], q[1], min(p[2], q[2])] if q else p
                  for p, q in zip(pieces[::2], pieces[1::2] + [None], strict=False)]
    return [[float(a), float(b), float(m)] for a, b, m in pieces]  # unrounded: each stays a bound on its piece


def bisect(lower_bound: Callable[[float, float], float], margins_at: Callable[[Tensor], Tensor],
           lo: float, hi: float, budget: int) -> SplitResult:
    """Certify ``[lo, hi]`` from ``lower_bound(a, b)`` (a sound lower bound of the margin on [a, b]).

    ``margins_at(ts)`` evaluates the network's margin at points (n, 1) concretely; the midpoint of each
    piece about to be split is tried, so a counterexample stops the search early.
    """
    first = lower_bound(lo, hi)
    heap = [(first, lo, hi)]
    best_seen: float | None = None
    while heap and heap[0][0] <= 0 and len(heap) < max(budget, 1):
        bound, a, b = heapq.heappop(heap)
        mid = (a + b) / 2
        probe = margins_at(torch.tensor([[a], [mid], [b]], dtype=torch.float64))
        k = int(probe.argmin())
        best_seen = float(probe[k]) if best_seen is None else min(best_seen, float(probe[k]))
        if probe[k] <= 0:
            return SplitResult("falsified", min(bound, *(p[0] for p in heap)) if heap else bound, len(heap) + 2,
                               torch.tensor([(a, mid, b)[k]], dtype=torch.float64), float(probe[k]),
                               piece_bounds([*heap, (bound, a, b)]))
        if not a < mid < b:  # the interval cannot shrink further in float64
            heapq.heappush(heap, (bound, a, b))
            break
        heapq.heappush(heap, (lower_bound(a, mid), a, mid))
        heapq.heappush(heap, (lower_bound(mid, b), mid, b))
    worst = min(p[0] for p in heap)
    return SplitResult("certified" if worst > 0 else "unknown", worst, len(heap), None, best_seen,
                       piece_bounds(heap))


def as_outcome(result: SplitResult, details: dict[str, object] | None = None) -> Outcome:
    details = dict(details or {})
    if result.piece_bounds is not None:
        details.setdefault("piece_bounds", result.piece_bounds)
    return Outcome(result.verdict, margin_lower=result.margin_lower, margin_upper=result.margin_upper,
                   witness_t=result.witness_t, pieces=result.pieces, details=details)


def decide(problem: Problem, bound: Callable[[Tensor, Tensor], float], splits: int, cheap_first: bool = True
           ) -> Outcome:
    """The verdict of a sound certifier from ``bound(lo, hi)``, a lower bound of the margin over a sub-box of t.

    With ``cheap_first``, a short attack and one interval pass come before any call of ``bound``
    (:func:`gcert.attack.cheap_answer`). Then one-dimensional regions are bisected best-first (up to
    ``splits`` pieces); elsewhere the whole region is bounded once and, when that does not certify, a few
    concrete points (the unmutated input, the box corners and centre, projected into the region) are tried.
    """
    tried: dict[str, object] = {}
    if cheap_first:
        early, tried = cheap_answer(problem)
        if early is not None:
            return early
    outcome = _decide(problem, bound, splits)
    outcome.details = {**tried, **outcome.details}
    return outcome


def _decide(problem: Problem, bound: Callable[[Tensor, Tensor], float], splits: int) -> Outcome:
    region = problem.region
    if region.dim == 1 and splits > 1:
        lowered = problem.lowered()
        f64 = torch.float64  # sub-interval ends stay float64: float32 would round some of them inward
        result = bisect(lambda a, b: bound(torch.tensor([a], dtype=f64), torch.tensor([b], dtype=f64)),
                        lambda ts: problem.spec.margin(lowered.forward(ts)),
                        float(region.lower[0]), float(region.upper[0]), splits)
        return as_outcome(result)
    margin_lower = bound(region.lower, region.upper)
    if margin_lower > 0:
        return Outcome("certified", margin_lower=margin_lower)
    points = [region.origin(), region.lower, region.upper, (region.lower + region.upper) / 2]
    probes = region.project(torch.stack(points).to(region.lower.dtype))
    margins = problem.margins(probes)
    best = int(margins.argmin())
    if margins[best] <= 0:
        return Outcome("falsified", margin_lower=margin_lower, margin_upper=float(margins[best]),
                       witness_t=probes[best])
    return Outcome("unknown", margin_lower=margin_lower, margin_upper=float(margins.min()))
