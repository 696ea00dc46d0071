"""The ``genprover`` certifier (after Mirman et al., PLDI 2021): sound bounds on the share of a segment
that keeps the spec, for networks that are not piecewise linear.

The piecewise-linear prefix of the network is carried exactly (ExactLine's pieces); from the first
smooth activation on, each cell of the segment (one piece, part of a piece, or a merged run of pieces
when there are more than the budget) is a box pushed through interval arithmetic. Undecided cells are
bisected in ``t`` until the budget is spent. On piecewise-linear networks the bounds are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import gcert
from gcert.bounds import Box, forward_boxes
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError
from gcert.lowering import Activation, Lowered
from gcert.pieces import Pieces, propagate, start
from gcert.problem import Problem
from gcert.spec import Spec
from gcert_plugins.exactline import analyse_segment, lower_composed, outcome_of

Tensor = torch.Tensor


@dataclass(frozen=True)
class GenProverOptions:
    """Settings of ``genprover``."""

    max_cells: int = 4096  # cells carried through the smooth part at once (more exact pieces are merged)
    refinements: int = 12  # rounds of bisecting undecided cells
    max_pieces: int = 1_000_000  # exact pieces allowed in the piecewise-linear prefix


@dataclass
class Cells:
    """Cells of one segment: ``[ta, tb]`` with the live prefix values at both ends (or hulls, if merged)."""

    ta: Tensor
    tb: Tensor
    lo: dict[int, Tensor]
    hi: dict[int, Tensor]
    ends_a: dict[int, Tensor] | None  # exact end values, for cells inside one affine piece (bisectable)
    ends_b: dict[int, Tensor] | None


def quantitative(lowered: Lowered, spec: Spec, options: GenProverOptions) -> tuple[float, float, dict[str, float]]:
    """Sound lower and upper bounds on the share of t in [0, 1] where the spec holds."""
    smooth = [i for i, n in enumerate(lowered.nodes) if isinstance(n.op, Activation) and not n.op.piecewise_linear]
    stop = smooth[0] if smooth else len(lowered.nodes)
    pieces = start(lowered, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    pieces = propagate(lowered, pieces, stop=stop, max_points=options.max_pieces + 1)
    cells = _cells(pieces, options.max_cells)
    C, d = spec.C.double(), spec.d.double()
    lower = failed = 0.0
    evaluated = 0
    for round_ in range(options.refinements + 1):
        out = forward_boxes(lowered, {k: Box(cells.lo[k], cells.hi[k]) for k in cells.lo}, begin=stop)
        rows = _rows_box(out, C, d)
        margin_lo, margin_hi = rows.lo.min(dim=1).values, rows.hi.min(dim=1).values
        evaluated += int(cells.ta.numel())
        length = cells.tb - cells.ta
        holds, fails = margin_lo > 0, margin_hi <= 0
        lower += float(length[holds].sum())
        failed += float(length[fails].sum())
        undecided = ~(holds | fails)
        if not bool(undecided.any()) or round_ == options.refinements or cells.ends_a is None:
            break
        chosen = _widest(undecided, length, options.max_cells // 2)
        cells = _bisect(cells, chosen)  # undecided cells left out of the budget simply stay undecided
    # Undecided cells count toward the upper bound only. Sums of cell lengths can round a last ulp past each
    # other or past 1; the share is a fraction of [0, 1] with lower <= upper.
    lower = min(lower, 1.0)
    return lower, max(lower, min(1.0 - failed, 1.0)), {"cells_evaluated": evaluated, "exact_prefix_nodes": stop,
                                    "exact_prefix_pieces": pieces.count - 1}


def _rows_box(out: Box, C: Tensor, d: Tensor) -> Box:
    lo, hi = out.lo.reshape(out.lo.shape[0], -1), out.hi.reshape(out.hi.shape[0], -1)
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    center, radius = mid @ C.T + d, rad @ C.abs().T
    pad = (C.shape[1] + 2) * 2.0**-53 * ((mid.abs() + rad) @ C.abs().T + d.abs()) + 1e-300
    return Box(center - radius - pad, center + radius + pad)


def _cells(pieces: Pieces, max_cells: int) -> Cells:
    """One cell per exact piece, or merged runs of pieces (boxes = hulls) when there are too many."""
    values = pieces.values
    n = pieces.count - 1
    if n <= max_cells:
        a, b = slice(0, n), slice(1, n + 1)
        ends_a = {k: v[a] for k, v in values.items()}
        ends_b = {k: v[b] for k, v in values.items()}
        lo = {k: torch.minimum(ends_a[k], ends_b[k]) for k in values}
        hi = {k: torch.maximum(ends_a[k], ends_b[k]) for k in values}
        return Cells(pieces.t[:-1], pieces.t[1:], lo, hi, ends_a, ends_b)
    # Merge runs of consecutive pieces: on each piece values are affine, so the hull of the run's
    # breakpoints bounds every value on the run.
    bounds = torch.linspace(0, n, max_cells + 1).round().long().unique()
    group = torch.bucketize(torch.arange(pieces.count), bounds[1:-1], right=True)
    # a breakpoint shared by two runs belongs to both
    lo, hi = {}, {}
    for k, v in values.items():
        flat = v.reshape(v.shape[0], -1)
        g = group.unsqueeze(1).expand_as(flat)
        shape = (len(bounds) - 1, flat.shape[1])
        lo_k = torch.full(shape, float("inf"), dtype=v.dtype).scatter_reduce(0, g, flat, "amin")
        hi_k = torch.full(shape, float("-inf"), dtype=v.dtype).scatter_reduce(0, g, flat, "amax")
        right = bounds[1:-1]  # first breakpoint of the next run closes this run
        lo_k[:-1] = torch.minimum(lo_k[:-1], flat[right])
        hi_k[:-1] = torch.maximum(hi_k[:-1], flat[right])
        lo[k], hi[k] = lo_k.reshape(-1, *v.shape[1:]), hi_k.reshape(-1, *v.shape[1:])
    return Cells(pieces.t[bounds[:-1]], pieces.t[bounds[1:]], lo, hi, None, None)


def _widest(which: Tensor, length: Tensor, budget: int) -> Tensor:
    """Indices of the chosen cells to halve: all of them, or the widest ``budget`` (others stay undecided)."""
    idx = which.nonzero().reshape(-1)
    if idx.numel() > budget:
        idx = idx[length[idx].argsort(descending=True)[: max(1, budget)]]
    return idx


def _bisect(cells: Cells, idx: Tensor) -> Cells:
    """Halve cells ``idx`` (each inside one affine piece, so midpoint values are interpolated exactly)."""
    assert cells.ends_a is not None and cells.ends_b is not None
    ta, tb = cells.ta[idx], cells.tb[idx]
    tm = (ta + tb) / 2
    ea = {k: v[idx] for k, v in cells.ends_a.items()}
    eb = {k: v[idx] for k, v in cells.ends_b.items()}
    em = {k: (ea[k] + eb[k]) / 2 for k in ea}
    new_a = {k: torch.cat([ea[k], em[k]]) for k in ea}
    new_b = {k: torch.cat([em[k], eb[k]]) for k in ea}
    lo = {k: torch.minimum(new_a[k], new_b[k]) for k in ea}
    hi = {k: torch.maximum(new_a[k], new_b[k]) for k in ea}
    return Cells(torch.cat([ta, tm]), torch.cat([tm, tb]), lo, hi, new_a, new_b)


class GenProver(Certifier):
    name = "genprover"
    guarantee = "quantitative"
    description = "sound lower/upper bounds on the share of a segment keeping the spec (any activation)"
    Options = GenProverOptions

    def prepare(self, problem: Problem) -> None:
        lower_composed(problem, self.name)

    def certify(self, problem: Problem, options: GenProverOptions) -> Outcome:
        lowered = lower_composed(problem, self.name)
        try:
            if lowered.piecewise_linear:
                line = analyse_segment(lowered, problem.spec, max_pieces=options.max_pieces)
                return outcome_of(line, problem, lowered)
            lower, upper, details = quantitative(lowered, problem.spec, options)
        except GcertError as exc:
            return Outcome("unknown", details={"reason": str(exc)})
        fraction = (lower, upper)
        if lower >= 1.0:
            return Outcome("certified", fraction=fraction, details=details)
        # Undecided or failing: look for a concrete counterexample on a fine grid.
        ts = torch.linspace(0, 1, 2049, dtype=torch.float64).reshape(-1, 1)
        margins = problem.spec.margin(lowered.forward(ts))
        best = int(margins.argmin())
        if margins[best] <= 0:
            return Outcome("falsified", fraction=fraction, margin_upper=float(margins[best]),
                           witness_t=ts[best], details=details)
        return Outcome("unknown", fraction=fraction, margin_upper=float(margins.min()), details=details)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(GenProver())
