"""The ``genprover`` certifier (after Mirman et al., PLDI 2021): sound bounds on the share of a segment
that keeps the spec, for networks that are not piecewise linear.

The piecewise-linear prefix of the network is carried exactly (ExactLine's pieces); from the first
smooth activation on, each cell of the segment (one piece, part of a piece, or a merged run of pieces
when there are more than the budget) is a box pushed through interval arithmetic. Undecided cells are
bisected in ``t`` until the budget is spent. On piecewise-linear networks the bounds are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import gcert
from gcert.bounds import Box, error_bounds, forward_boxes
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError
from gcert.line import DEFAULT_MEMORY_GB, analyse_line, forward_chunked, line_interval, line_outcome
from gcert.lowering import Activation, Lowered
from gcert.pieces import MemoryLimit, Pieces, propagate, start
from gcert.problem import Problem
from gcert.resources import GIB
from gcert.spec import Spec

Tensor = torch.Tensor


@dataclass(frozen=True)
class GenProverOptions:
    """Settings of ``genprover``."""

    max_cells: int = 4096  # cells carried through the smooth part at once (more exact pieces are merged)
    refinements: int = 12  # rounds of bisecting undecided cells
    max_pieces: int = 1_000_000  # exact pieces allowed in the piecewise-linear prefix
    max_memory_gb: float = DEFAULT_MEMORY_GB  # memory the prefix's pieces may hold

    def __post_init__(self) -> None:
        for key in ("max_cells", "max_pieces"):
            if getattr(self, key) < 1:
                raise GcertError(f"genprover.{key} must be an integer >= 1, got {getattr(self, key)}")
        if not 0 < self.max_memory_gb < float("inf"):
            raise GcertError(f"genprover.max_memory_gb must be a finite number > 0, got {self.max_memory_gb}")
        if self.refinements < 0:
            raise GcertError(f"genprover.refinements must be an integer >= 0, got {self.refinements}")


@dataclass
class Cells:
    """Cells of one segment: ``[ta, tb]`` with the live prefix values at both ends (or hulls, if merged)."""

    ta: Tensor
    tb: Tensor
    lo: dict[int, Tensor]
    hi: dict[int, Tensor]
    ends_a: dict[int, Tensor] | None  # exact end values, for cells inside one affine piece (bisectable)
    ends_b: dict[int, Tensor] | None


@dataclass
class Quantitative:
    """Sound bounds on the share of ``[lo, hi]`` where the spec holds, and whether every cell was decided."""

    lower: float
    upper: float
    all_hold: bool  # every cell's margin is provably > 0: the whole interval holds
    details: dict[str, float]


def quantitative(lowered: Lowered, spec: Spec, options: GenProverOptions, lo: float = 0.0,
                 hi: float = 1.0) -> Quantitative:
    """Sound lower and upper bounds on the share of t in ``[lo, hi]`` where the spec holds.

    The prefix values at breakpoints carry float64 rounding; every cell's box is widened by the a priori bound
    of that rounding (:func:`gcert.bounds.error_bounds`) before it enters interval arithmetic.
    """
    smooth = [i for i, n in enumerate(lowered.nodes) if isinstance(n.op, Activation) and not n.op.piecewise_linear]
    stop = smooth[0] if smooth else len(lowered.nodes)
    lo_t, hi_t = torch.tensor([[lo]], dtype=torch.float64), torch.tensor([[hi]], dtype=torch.float64)
    pieces = start(lowered, lo_t, hi_t)
    pieces.max_bytes = options.max_memory_gb * GIB
    try:
        pieces = propagate(lowered, pieces, stop=stop, max_points=options.max_pieces + 1)
    except MemoryLimit as exc:
        raise MemoryLimit(f"{exc}, over max_memory_gb={options.max_memory_gb:g}: raise it") from None
    errors = error_bounds(lowered, lo_t[0], hi_t[0], stop=stop)
    cells = _cells(pieces, options.max_cells)
    C, d = spec.C, spec.d
    lower = failed = 0.0
    all_hold = True
    evaluated = 0
    for round_ in range(options.refinements + 1):
        pad = {k: 4 * errors.error[k] + 2.0**-50 * errors.magnitude[k] for k in cells.lo}
        out = forward_boxes(lowered, {k: Box(cells.lo[k] - pad[k], cells.hi[k] + pad[k]) for k in cells.lo},
                            begin=stop)
        rows = _rows_box(out, C, d)
        margin_lo, margin_hi = spec.reduce(rows.lo), spec.reduce(rows.hi)
        evaluated += int(cells.ta.numel())
        length = cells.tb - cells.ta
        holds, fails = margin_lo > 0, margin_hi <= 0
        lower += math.fsum(length[holds].tolist())
        failed += math.fsum(length[fails].tolist())
        undecided = ~(holds | fails)
        all_hold = all_hold and not bool(fails.any())
        if not bool(undecided.any()) or round_ == options.refinements or cells.ends_a is None:
            all_hold = all_hold and not bool(undecided.any())
            break
        chosen = _widest(undecided, length, options.max_cells // 2)
        if chosen.numel() < int(undecided.sum()):
            all_hold = False  # undecided cells left out of the budget stay undecided
        cells = _bisect(cells, chosen)
    # Lengths are fractions of the parameter interval [0, 1]; sums can round a last ulp past each other or past 1.
    lower = min(lower * (1 - 2.0**-50), 1.0)
    upper = max(lower, min(1.0 - failed * (1 - 2.0**-50), 1.0))
    return Quantitative(lower, upper, all_hold, {"cells_evaluated": evaluated, "exact_prefix_nodes": stop,
                                                 "exact_prefix_pieces": pieces.count - 1})


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
    description = "sound lower/upper bounds on the share of a one-dimensional region keeping the spec (any activation)"
    Options = GenProverOptions
    regions = ("segment", "box", "lp-ball")
    max_dim = 1

    def prepare(self, problem: Problem) -> None:
        line_interval(problem.region, self.name)

    def certify(self, problem: Problem, options: GenProverOptions) -> Outcome:
        lo, hi = line_interval(problem.region, self.name)
        lowered = problem.lowered()
        try:
            if lowered.piecewise_linear:
                line = analyse_line(lowered, problem.spec, lo, hi, options.max_pieces, options.max_memory_gb)
                return line_outcome(line, problem, lowered)
            q = quantitative(lowered, problem.spec, options, lo, hi)
        except GcertError as exc:
            return Outcome("unknown", details={"reason": str(exc)})
        fraction = (q.lower, q.upper)
        if q.all_hold:  # every cell decided and holding; a share that sums to 1.0 is not enough
            return Outcome("certified", fraction=fraction, details=q.details)
        # Undecided or failing: look for a concrete counterexample on a fine grid of the region.
        ts = (lo + torch.linspace(0, 1, 2049, dtype=torch.float64) * (hi - lo)).reshape(-1, 1)
        ts[-1, 0] = hi
        margins = problem.spec.margin(forward_chunked(lowered, ts))
        best = int(margins.argmin())
        if margins[best] <= 0:
            return Outcome("falsified", fraction=fraction, margin_upper=float(margins[best]),
                           witness_t=ts[best], details=q.details)
        return Outcome("unknown", fraction=fraction, margin_upper=float(margins.min()), details=q.details)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(GenProver())
