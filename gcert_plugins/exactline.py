"""The ``exactline`` certifier (Sotoudeh and Thakur 2019): the exact answer on a segment.

The composed network is split into the pieces of the segment on which it is affine; on each piece
every spec row is affine too, so the minimum margin, the first violating ``t`` and the share of the
segment that keeps the spec are exact (up to float64 rounding, which the record reports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import gcert
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError, UnsupportedOperatorError
from gcert.lowering import SMOOTH_CAPABLE, Lowered
from gcert.pieces import Pieces, propagate, start
from gcert.problem import Problem
from gcert.spec import Spec

Tensor = torch.Tensor


@dataclass(frozen=True)
class ExactLineOptions:
    """Settings of ``exactline``."""

    max_pieces: int = 1_000_000  # give up (verdict unknown) beyond this many affine pieces


@dataclass
class LineAnalysis:
    """The exact partition of one segment and the spec along it."""

    t: Tensor  # (P,) breakpoints in [0, 1]
    margins: Tensor  # (P,) spec margin at each breakpoint (a direct forward pass)
    piece_holds: Tensor  # (P-1,) whether the spec holds inside each piece
    interpolation_error: float  # max |interpolated - recomputed| output at the breakpoints

    @property
    def pieces(self) -> int:
        return int(self.t.numel()) - 1

    @property
    def share(self) -> float:
        """The exact fraction of the segment on which the spec holds."""
        lengths = self.t[1:] - self.t[:-1]
        return float((lengths * self.piece_holds).sum() / (self.t[-1] - self.t[0]))

    @property
    def min_margin(self) -> float:
        """The exact minimum of the margin over the segment (attained at a breakpoint)."""
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


def lower_composed(problem: Problem, certifier: str) -> Lowered:
    if problem.region.dim != 1:
        raise GcertError(
            f"{certifier} certifies segments (one-dimensional regions); this problem's region is a "
            f"{problem.region.dim}-dimensional {problem.region.kind}: use interval, sampling or crown for it"
        )
    return problem.lowered()


def analyse_segment(lowered: Lowered, spec: Spec, lo: float = 0.0, hi: float = 1.0,
                    max_pieces: int = 1_000_000) -> LineAnalysis:
    """Exact analysis of ``lowered`` (a piecewise-linear network of one input) on ``t`` in [lo, hi]."""
    pieces = start(lowered, torch.tensor([[lo]], dtype=torch.float64), torch.tensor([[hi]], dtype=torch.float64))
    pieces = propagate(lowered, pieces, max_points=max_pieces + 1)
    return _spec_along(lowered, pieces, spec, lo, hi, max_pieces)


def _spec_along(lowered: Lowered, pieces: Pieces, spec: Spec, lo: float, hi: float, max_pieces: int) -> LineAnalysis:
    C, d = spec.C.double(), spec.d.double()
    y = pieces.values[lowered.output].reshape(pieces.count, -1)
    (y,) = pieces.split(y @ C.T + d, [y], max_points=max_pieces + 1)
    t = lo + pieces.t * (hi - lo)
    direct = lowered.forward(t.reshape(-1, 1)).reshape(t.numel(), -1)
    interpolation_error = float((direct - y).abs().max()) if y.numel() else 0.0
    rows = direct @ C.T + d
    mid_rows = (rows[:-1] + rows[1:]) / 2  # each row is affine on a piece and does not change sign inside it
    return LineAnalysis(t, rows.min(dim=1).values, mid_rows.min(dim=1).values > 0, interpolation_error)


class ExactLine(Certifier):
    name = "exactline"
    guarantee = "complete"
    description = "ExactLine: exact verdict, share and largest certified delta on segments (piecewise-linear N)"
    Options = ExactLineOptions

    def prepare(self, problem: Problem) -> None:
        lowered = lower_composed(problem, self.name)
        smooth = lowered.smooth_nodes()
        if smooth:
            raise UnsupportedOperatorError(
                smooth[0].op.kind, f"the composed network (layer {smooth[0].source}); exactline needs a piecewise-"
                "linear network", supported_by=SMOOTH_CAPABLE)

    def certify(self, problem: Problem, options: ExactLineOptions) -> Outcome:
        self.prepare(problem)
        lowered = lower_composed(problem, self.name)
        try:
            line = analyse_segment(lowered, problem.spec, max_pieces=options.max_pieces)
        except GcertError as exc:
            return Outcome("unknown", details={"reason": str(exc)})
        return outcome_of(line, problem, lowered)


def outcome_of(line: LineAnalysis, problem: Problem, lowered: Lowered) -> Outcome:
    delta = float(problem.meta.get("delta", 1.0))
    first = line.first_violation()
    details: dict[str, Any] = {"interpolation_error": line.interpolation_error,
                               "first_violation_t": first, "min_margin": line.min_margin}
    common = dict(margin_lower=line.min_margin, margin_upper=line.min_margin, fraction=(line.share, line.share),
                  pieces=line.pieces, details=details)
    if first is None and line.min_margin > 0:
        return Outcome("certified", max_delta=delta, **common)
    mids = (line.t[:-1] + line.t[1:]) / 2
    mid_margins = problem.spec.margin(lowered.forward(mids.reshape(-1, 1)))
    candidates = torch.cat([line.t, mids])
    margins = torch.cat([line.margins, mid_margins.to(line.margins.dtype)])
    witness = candidates[int(margins.argmin())].reshape(1)
    return Outcome("falsified", max_delta=delta * (first if first is not None else 0.0), witness_t=witness, **common)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(ExactLine())
