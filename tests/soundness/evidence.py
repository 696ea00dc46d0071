"""What an oracle knows about one problem, in a form the judge (:mod:`.harness`) compares certifiers against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

Number = Fraction | float

# The README's float32 rounding allowance for witnesses: "the deployed network runs in float32, whose outputs
# differ by rounding (about 1e-6 relative)". We bound that as 2**-24 (float32's unit roundoff) times the number
# of rounding steps along the longest chain of sums (total fan-in + 2) times the magnitude of the computation
# (the network evaluated with |W|, |b| and |x|): the standard forward error bound of a float32 dot product chain.
U32 = 2.0**-24


@dataclass
class Evidence:
    """``oracle``: who produced it. ``points``: (t, margin) pairs evaluated at points of the region.

    ``exact_min``: the exact minimum margin over the region when known (1-D exact line), else None.
    ``share``: (value, tolerance) of the fraction of the region where the spec holds, when known.
    ``tol``: the oracle's own rounding error on a margin (0 for exact arithmetic).
    ``margin_at(t)``: the margin at a point of t; ``slack_at(t)``: float32 rounding allowance there.
    ``contains(t)``: whether t lies in the region (own check). ``witness_ok(t)``: optional extra check of a
    counterexample (VNN-LIB: the point satisfies the unsafe set), returning a reason string when it fails.
    """

    oracle: str
    points: list[tuple[tuple[Number, ...], Number]]
    margin_at: Callable[[Sequence[float]], Number]
    slack_at: Callable[[Sequence[float]], float]
    contains: Callable[[Sequence[float]], bool]
    exact_min: Fraction | None = None
    share: tuple[float, float] | None = None
    tol: float = 0.0
    witness_ok: Callable[[Sequence[float]], str | None] | None = None
    box: tuple[list[float], list[float]] | None = None  # the region's t box in float64 (for clamping witnesses)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def min_margin(self) -> Number:
        """The smallest margin seen (the exact minimum when known): an upper bound on the true minimum."""
        sampled = min(m for _, m in self.points)
        return sampled if self.exact_min is None else min(sampled, self.exact_min)

    def violating_point(self) -> tuple[tuple[Number, ...], Number] | None:
        """A point where the spec fails (margin <= 0 beyond the oracle's own rounding), if the oracle saw one."""
        worst = min(self.points, key=lambda p: p[1])
        if self.exact_min is not None and self.exact_min <= 0 and self.exact_min <= worst[1]:
            return (self.notes.get("argmin", ()), self.exact_min)
        return worst if worst[1] <= -self.tol else None
