"""The ``exactline`` certifier (Sotoudeh and Thakur 2019): the exact answer on a one-dimensional region.

The composed network is split into the pieces of ``[lo, hi]`` (the region's own interval: a segment's [0, 1],
or a one-input VNN-LIB box) on which it is affine; on each piece every spec row is affine too, so the minimum
margin, the first violating ``t`` and the share of the region that keeps the spec are exact. The engine is the
host's (:mod:`gcert.line`); a margin within its float64 rounding bound of 0 is reported as unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gcert
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError, UnsupportedOperatorError
from gcert.line import DEFAULT_MEMORY_GB, analyse_line, line_interval, line_outcome
from gcert.lowering import SMOOTH_CAPABLE
from gcert.problem import Problem


@dataclass(frozen=True)
class ExactLineOptions:
    """Settings of ``exactline``."""

    max_pieces: int = 1_000_000  # give up (verdict unknown) beyond this many affine pieces
    max_memory_gb: float = DEFAULT_MEMORY_GB  # or beyond as many as this much memory holds (each carries every value)

    def __post_init__(self) -> None:
        if self.max_pieces < 1:
            raise GcertError(f"exactline.max_pieces must be an integer >= 1, got {self.max_pieces}")
        if not 0 < self.max_memory_gb < float("inf"):
            raise GcertError(f"exactline.max_memory_gb must be a finite number > 0, got {self.max_memory_gb}")


class ExactLine(Certifier):
    name = "exactline"
    guarantee = "complete"
    description = "ExactLine: exact verdict, share and largest certified delta on one-dimensional regions (PWL N)"
    Options = ExactLineOptions
    regions = ("segment", "box", "lp-ball")
    max_dim = 1

    def prepare(self, problem: Problem) -> None:
        line_interval(problem.region, self.name)
        smooth = problem.lowered().smooth_nodes()
        if smooth:
            raise UnsupportedOperatorError(
                smooth[0].op.kind, f"the composed network (layer {smooth[0].source}); exactline needs a piecewise-"
                "linear network", supported_by=SMOOTH_CAPABLE + ("deeppoly",))

    def certify(self, problem: Problem, options: ExactLineOptions) -> Outcome:
        self.prepare(problem)
        lo, hi = line_interval(problem.region, self.name)
        lowered = problem.lowered()
        try:
            line = analyse_line(lowered, problem.spec, lo, hi, options.max_pieces, options.max_memory_gb)
        except GcertError as exc:
            return Outcome("unknown", details={"reason": str(exc)})
        return line_outcome(line, problem, lowered)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(ExactLine())
