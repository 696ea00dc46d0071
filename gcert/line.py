"""The exact analysis of a one-dimensional region: the host's segment engine, shared by every certifier that uses it.

A one-dimensional region (a GCert segment, a VNN-LIB box or an Lp ball of one input) is the interval
``[lo, hi]`` of ``t``. :func:`analyse_line` splits it into the pieces on which the lowered network and every spec
row are affine (:mod:`gcert.pieces`), takes the rows at the breakpoints from the outputs the propagation carried
there (interpolated, so exact on each affine piece), bounds their float64 error a priori
(:func:`gcert.bounds.interpolation_bounds`), and checks them against a direct float64 forward pass at the
breakpoints that decide the verdict. :func:`line_outcome` turns the analysis into a verdict that never certifies
within that bound of 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from gcert.bounds import interpolation_bounds
from gcert.contracts import Outcome
from gcert.errors import GcertError
from gcert.lowering import Lowered
from gcert.pieces import MemoryLimit, Pieces, propagate, start
from gcert.problem import Problem
from gcert.regions import Region
from gcert.resources import GIB
from gcert.spec import Spec

Tensor = torch.Tensor
FORWARD_BUDGET = 1 << 24  # float64 values held at once when re-evaluating breakpoints (128 MB)
CHECKED_POINTS = 32  # breakpoints re-evaluated directly, besides the decisive ones (minimum, sign changes)
DEFAULT_MEMORY_GB = 2.0  # what the pieces of one analysis may hold (exactline.max_memory_gb, genprover's too)


def line_interval(region: Region, certifier: str) -> tuple[float, float]:
    """``(lo, hi)`` of a one-dimensional region, in float64; other regions are refused in one line."""
    if region.dim != 1:
        raise GcertError(f"{certifier} analyses one-dimensional regions; this {region.kind} has {region.dim} "
                         "dimensions")
    return float(region.lower.double()[0]), float(region.upper.double()[0])


@dataclass
class LineAnalysis:
    """The exact partition of ``[lo, hi]`` and the spec along it."""

    t: Tensor  # (P,) breakpoints, lo .. hi
    margins: Tensor  # (P,) spec margin at each breakpoint (interpolated; within ``rounding`` of the exact one)
    piece_holds: Tensor  # (P-1,) whether the spec holds inside each piece
    rounding: float  # bound on the float64 error of every margin above
    interpolation_error: float  # max |interpolated - recomputed| output at the checked breakpoints (a diagnostic)
    checked: int = 0  # how many breakpoints a direct forward pass re-evaluated
    mid_margins: Tensor | None = None  # (P-1,) the margin at each piece's midpoint, from the rows at its ends

    @property
    def lo(self) -> float:
        return float(self.t[0])

    @property
    def hi(self) -> float:
        return float(self.t[-1])

    @property
    def pieces(self) -> int:
        return int(self.t.numel()) - 1

    @property
    def pad(self) -> float:
        """How far from 0 a margin must be for its sign to be trusted: the rounding bound, with room to spare."""
        return 4 * self.rounding + 2 * self.interpolation_error

    @property
    def share(self) -> float:
        """The fraction of the interval on which the spec holds (1.0 for a single point that holds)."""
        if self.pieces == 0 or self.hi == self.lo:
            return float(bool(self.margins.min() > 0))
        lengths = self.t[1:] - self.t[:-1]
        return float((lengths * self.piece_holds).sum() / (self.t[-1] - self.t[0]))

    def share_bounds(self) -> tuple[float, float]:
        """Sound bounds on :attr:`share` under rounding: on each piece the margin is affine between its ends, each
        known within :attr:`pad`; the part of the piece where it exceeds ``pad`` surely holds, below ``-pad``
        surely fails, and the rest is undecided."""
        if self.pieces == 0 or self.hi == self.lo:
            m = self.min_margin
            return (1.0, 1.0) if m > self.pad else (0.0, 0.0) if m < -self.pad else (0.0, 1.0)
        ma, mb = self.margins[:-1], self.margins[1:]
        lengths = self.t[1:] - self.t[:-1]
        total = float(self.t[-1] - self.t[0])
        holds = float((lengths * _part_above(ma, mb, self.pad)).sum()) / total
        fails = float((lengths * _part_above(-ma, -mb, self.pad)).sum()) / total
        return max(0.0, holds * (1 - 2.0**-50)), min(1.0, 1.0 - fails * (1 - 2.0**-50))

    @property
    def min_margin(self) -> float:
        """The minimum of the margin over the interval (attained at a breakpoint)."""
        return float(self.margins.min())

    def first_violation(self) -> float | None:
        """The infimum of the ``t`` where the spec fails, or None if it holds everywhere."""
        candidates = []
        bad_points = (self.margins <= 0).nonzero()
        if bad_points.numel():
            candidates.append(float(self.t[bad_points[0, 0]]))
        bad_pieces = (~self.piece_holds).nonzero()
        if bad_pieces.numel():
            candidates.append(float(self.t[bad_pieces[0, 0]]))
        return min(candidates) if candidates else None

    def certified_up_to(self) -> float | None:
        """A ``t`` such that the margin exceeds :attr:`pad` on all of ``[lo, t]`` (None if not even at ``lo``).

        Inside the first piece whose end is not clear of the pad, the margin is affine: step back from the
        point where it would reach 2 * pad, further still by a millionth of the piece's relative slope, so that
        the same strength recomputed through float32 controls is certified again.
        """
        pad = self.pad
        low = (self.margins <= pad).nonzero()
        if not low.numel():
            return self.hi
        i = int(low[0, 0])
        if i == 0:
            return None
        ta, tb = float(self.t[i - 1]), float(self.t[i])
        ma, mb = float(self.margins[i - 1]), float(self.margins[i])
        slope = (ma - mb) / max(tb - ta, 1e-300)
        target = 2 * pad + 1e-6 * slope * max(abs(tb), abs(ta), 1e-300)
        if ma <= target:
            return ta
        return ta + (tb - ta) * (ma - target) / (ma - mb)


def _part_above(ma: Tensor, mb: Tensor, c: float) -> Tensor:
    """The fraction of each piece where the affine function from ``ma`` to ``mb`` is above ``c``."""
    above_a, above_b = ma > c, mb > c
    cross = (c - ma) / torch.where(mb == ma, torch.ones_like(ma), mb - ma)
    part = torch.where(above_a & above_b, torch.ones_like(ma), torch.zeros_like(ma))
    part = torch.where(above_a & ~above_b, cross.clamp(0, 1), part)
    return torch.where(~above_a & above_b, 1 - cross.clamp(0, 1), part)


def analyse_line(lowered: Lowered, spec: Spec, lo: float, hi: float, max_pieces: int = 1_000_000,
                 memory_gb: float = DEFAULT_MEMORY_GB) -> LineAnalysis:
    """Exact analysis of ``lowered`` (piecewise linear, one input) on ``t`` in ``[lo, hi]`` (float64 ends)."""
    if lowered.input_shape != (1,):
        raise GcertError(f"exact line analysis needs a network of one input value, got shape {lowered.input_shape}")
    pieces = start(lowered, torch.tensor([[lo]], dtype=torch.float64), torch.tensor([[hi]], dtype=torch.float64))
    pieces.max_bytes = memory_gb * GIB
    try:
        pieces = propagate(lowered, pieces, max_points=max_pieces + 1, keep_input=True)
        return spec_along(lowered, pieces, spec, lo, hi, max_pieces)
    except MemoryLimit as exc:
        raise MemoryLimit(f"{exc}, over max_memory_gb={memory_gb:g}: raise it, or use a sound certifier "
                          "(deeppoly, interval, crown)") from None


def spec_along(lowered: Lowered, pieces: Pieces, spec: Spec, lo: float, hi: float, max_pieces: int) -> LineAnalysis:
    """Split the propagated pieces (propagated with ``keep_input``) where a spec row (or, inside a clause, the
    order of two rows) changes; the rows at every breakpoint are the interpolated outputs', checked directly at
    the breakpoints that decide the verdict."""
    C, d = spec.C, spec.d
    y = pieces.values[lowered.output].reshape(pieces.count, -1)
    rows = y @ C.T + d
    g = rows
    if spec.clauses is not None:
        pairs = [(a, b) for clause in spec.clauses for i, a in enumerate(clause) for b in clause[i + 1:]]
        if pairs:
            g = torch.cat([rows, rows[:, [a for a, _ in pairs]] - rows[:, [b for _, b in pairs]]], dim=1)
    (y,) = pieces.split(g, [y], max_points=max_pieces + 1)
    # The breakpoints: the inputs carried with the values (each within its rounding of the exact point its values
    # belong to, see interpolation_bounds); the ends are exact, a split only adds points inside pieces.
    t = pieces.values[-1].reshape(-1).clone()
    t[0], t[-1] = lo, hi
    rows = y @ C.T + d
    margins = spec.reduce(rows)
    mid_margins = spec.reduce((rows[:-1] + rows[1:]) / 2)  # rows are affine on each piece, their order fixed
    lo_t, hi_t = torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)
    interpolated = interpolation_bounds(lowered, lo_t, hi_t)
    rounding = float(interpolated.rows(lowered, C, d).max())
    if not math.isfinite(rounding):
        raise GcertError("the network's values are too large for a float64 rounding bound; no exact verdict")
    sample = decisive_points(margins, CHECKED_POINTS)
    direct = forward_chunked(lowered, t[sample].reshape(-1, 1)).reshape(sample.numel(), -1)
    gap = (direct - y[sample]).abs()
    # A forward pass at the stored inputs is within error_bounds of the network there, and those bounds are at most
    # these (the same recurrences, without the splits' increments): twice them bounds the gap.
    out_bound = 2 * interpolation_bounds(lowered, lo_t, hi_t, at_stored_inputs=True).error[lowered.output]
    if bool((gap > out_bound.reshape(1, -1)).any()):
        raise GcertError(f"the outputs interpolated along the pieces differ from a direct forward pass by "
                         f"{float(gap.max()):.3g}, beyond their error bound: the pieces are not exact here "
                         "(please report it); no exact verdict")
    interpolation_error = float(gap.max()) if gap.numel() else 0.0
    return LineAnalysis(t, margins, mid_margins > 0, rounding, interpolation_error, int(sample.numel()), mid_margins)


def decisive_points(margins: Tensor, spread: int) -> Tensor:
    """Indices of the breakpoints whose margins decide a verdict: the ends, the smallest margins, both sides of
    every sign change (at most ``spread`` of them, nearest the minimum first) and ``spread`` evenly spaced."""
    p = margins.numel()
    low = torch.topk(margins, min(p, 8), largest=False).indices
    sign = margins > 0
    change = (sign[1:] != sign[:-1]).nonzero().reshape(-1)
    if change.numel() > spread:
        change = change[torch.topk(margins[change].abs(), spread, largest=False).indices]
    even = torch.linspace(0, p - 1, min(p, spread)).round().long()
    ends = torch.tensor([0, p - 1])
    return torch.unique(torch.cat([ends, low, change, change + 1, even]))


MARGIN_CURVE_POINTS = 1000
"""Breakpoints a record's ``margin_curve`` keeps at most (beyond, it is subsampled and marked not exact)."""


def margin_curve(line: LineAnalysis, cap: int = MARGIN_CURVE_POINTS) -> dict[str, Any]:
    """The margin at the breakpoints, for plots: ``{"t": [...], "margin": [...], "exact": bool}``.

    The values are the analysis's own (direct float64 forward passes, to 9 significant digits). Between two
    breakpoints every spec row is affine and its sign fixed, so the margin (their minimum) is concave there: at
    least the straight line between its values at the ends, with its minimum at a breakpoint. Over ``cap``
    breakpoints it keeps both ends, the minimum, each pair around a sign change and evenly spaced others, and says
    ``exact: false``.
    """
    t, m = line.t.double(), line.margins.double()
    n = int(t.numel())
    exact = n <= cap
    if exact:
        keep = torch.arange(n)
    else:
        must = {0, n - 1, int(m.argmin())}
        flips = ((m[:-1] > 0) != (m[1:] > 0)).nonzero().reshape(-1).tolist()
        for i in flips[: cap // 4]:
            must.update((i, i + 1))
        spread = torch.linspace(0, n - 1, max(2, cap - len(must))).round().long().tolist()
        keep = torch.tensor(sorted(must.union(spread)))
    return {"t": [float(f"{v:.9g}") for v in t[keep].tolist()],
            "margin": [float(f"{v:.9g}") for v in m[keep].tolist()], "exact": exact}


def forward_chunked(lowered: Lowered, x: Tensor) -> Tensor:
    """``lowered.forward(x)`` in batches small enough that all values of one batch hold ``FORWARD_BUDGET`` numbers."""
    live = sum(math.prod(n.shape) for n in lowered.nodes) + math.prod(lowered.input_shape)  # at most all at once
    chunk = max(1, FORWARD_BUDGET // max(1, live))
    if x.shape[0] <= chunk:
        return lowered.forward(x)
    return torch.cat([lowered.forward(part) for part in x.split(chunk)])


def line_outcome(line: LineAnalysis, problem: Problem, lowered: Lowered) -> Outcome:
    """The verdict of an exact line analysis: certified only when the smallest margin clears the rounding pad.

    ``max_delta`` (segments only) is a strength that is itself certified; the supremum of certified strengths
    (where the first violation starts) is ``details['max_delta_supremum']``.
    """
    first = line.first_violation()
    details: dict[str, Any] = {"interpolation_error": line.interpolation_error, "rounding_bound": line.pad,
                               "first_violation_t": first, "min_margin": line.min_margin}
    details["share"] = line.share  # the share by the signs of the computed margins
    details["margin_curve"] = margin_curve(line)
    common: dict[str, Any] = dict(margin_lower=line.min_margin - line.pad, margin_upper=line.min_margin,
                                  fraction=line.share_bounds(), pieces=line.pieces, details=details)
    segment = problem.region.kind == "segment"
    delta = float(problem.meta.get("delta", 1.0))
    max_delta = None
    if segment:
        up_to = line.certified_up_to()
        max_delta = 0.0 if up_to is None else delta * up_to
        details["max_delta_supremum"] = delta * (first if first is not None else 1.0)
    if line.min_margin > line.pad:
        return Outcome("certified", max_delta=delta if segment else None, **common)
    if line.min_margin > 0:
        details["reason"] = (f"the smallest margin {line.min_margin:.3g} is within the float64 rounding bound "
                             f"{line.pad:.3g} of 0: neither verdict can be trusted")
        return Outcome("unknown", max_delta=max_delta, **common)
    mids = (line.t[:-1] + line.t[1:]) / 2
    candidates = torch.cat([line.t, mids])
    margins = torch.cat([line.margins, line.mid_margins if line.mid_margins is not None else line.margins[:0]])
    # The witness is a point whose margin a direct forward pass finds <= 0: the lowest interpolated ones first.
    order = torch.topk(margins, min(64, margins.numel()), largest=False).indices
    direct = problem.spec.margin(forward_chunked(lowered, candidates[order].reshape(-1, 1)))
    if not bool((direct <= 0).any()):  # all within rounding of 0: look at every candidate
        order = torch.arange(candidates.numel())
        direct = problem.spec.margin(forward_chunked(lowered, candidates.reshape(-1, 1)))
    witness = candidates[order[int(direct.argmin())]].reshape(1)
    return Outcome("falsified", max_delta=max_delta, witness_t=witness, **common)
