"""The ``interval`` certifier: interval bound propagation (IBP) through the composed network.

Sound and incomplete: it runs over gcert's native lowering (:mod:`gcert.lowering`) in float64 with
outward padding for rounding (:mod:`gcert.bounds`), so the bounds hold for the network in real arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import gcert
from gcert.bounds import Box, affine_box, forward_boxes
from gcert.contracts import Certifier, Outcome
from gcert.lowering import Affine, lower
from gcert.problem import Problem
from gcert.splitting import as_outcome, bisect


@dataclass(frozen=True)
class IntervalOptions:
    """Settings of ``interval``."""

    probes: int = 5  # concrete points tried for a counterexample when bounds do not certify
    splits: int = 32  # one-dimensional regions: most pieces when bisecting t (1 = no splitting)


class IntervalCertifier(Certifier):
    name = "interval"
    guarantee = "sound"
    description = "interval bound propagation (IBP), float64 with outward rounding; fast and loose"
    Options = IntervalOptions

    def prepare(self, problem: Problem) -> None:
        problem.lowered()

    def certify(self, problem: Problem, options: IntervalOptions) -> Outcome:
        region, lowered = problem.region, problem.lowered()
        if region.dim == 1 and options.splits > 1:
            result = bisect(lambda a, b: margin_bound(problem, torch.tensor([a]), torch.tensor([b])),
                            lambda ts: problem.spec.margin(lowered.forward(ts)),
                            float(region.lower[0]), float(region.upper[0]), options.splits)
            return as_outcome(result)
        margin_lower = margin_bound(problem, region.lower, region.upper)
        if margin_lower > 0:
            return Outcome("certified", margin_lower=margin_lower)
        probes = _probe_points(problem, options.probes)
        margins = problem.margins(probes)
        best = int(margins.argmin())
        if margins[best] <= 0:
            return Outcome("falsified", margin_lower=margin_lower, margin_upper=float(margins[best]),
                           witness_t=probes[best])
        return Outcome("unknown", margin_lower=margin_lower, margin_upper=float(margins.min()))


def margin_bound(problem: Problem, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """A sound lower bound of the spec margin of N over the box [lo, hi] of t."""
    out = forward_boxes(problem.lowered(), {-1: Box(lo.reshape(1, -1).double(), hi.reshape(1, -1).double())})
    C, d = problem.spec.C.double(), problem.spec.d.double()
    rows = affine_box(Affine(lambda x: x @ C.T, d, lambda x: x @ C.abs().T, C.shape[1]),
                      Box(out.lo.reshape(1, -1), out.hi.reshape(1, -1)))
    return float(rows.lo.min())


def _probe_points(problem: Problem, n: int) -> torch.Tensor:
    region = problem.region
    points = [region.origin(), region.lower, region.upper, (region.lower + region.upper) / 2]
    return region.project(torch.stack(points[: max(n, 1)]).to(region.lower.dtype))


@torch.no_grad()
def output_bounds(network: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> Box:
    """Sound bounds of ``network`` over the box ``[lo, hi]`` (a batch of boxes of shape (B, *input))."""
    lowered = lower(network, tuple(lo.shape[1:]))
    return forward_boxes(lowered, {-1: Box(lo.double(), hi.double())})


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(IntervalCertifier())
