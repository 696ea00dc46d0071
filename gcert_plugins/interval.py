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
from gcert.bounds import Box, forward_boxes, spec_margin_bound
from gcert.contracts import Certifier, Outcome
from gcert.errors import GcertError
from gcert.lowering import lower
from gcert.problem import Problem
from gcert.splitting import decide


@dataclass(frozen=True)
class IntervalOptions:
    """Settings of ``interval``."""

    splits: int = 32  # one-dimensional regions: most pieces when bisecting t (1 = no splitting)
    cheap_first: bool = True  # a short attack and one pass over the whole region before bisecting

    def __post_init__(self) -> None:
        if self.splits < 1:
            raise GcertError(f"interval.splits must be an integer >= 1 (1 = no splitting), got {self.splits}")


class IntervalCertifier(Certifier):
    name = "interval"
    guarantee = "sound"
    description = "interval bound propagation (IBP), float64 with outward rounding; fast and loose"
    Options = IntervalOptions

    def prepare(self, problem: Problem) -> None:
        problem.lowered()

    def certify(self, problem: Problem, options: IntervalOptions) -> Outcome:
        problem.lowered()  # an op it cannot lower is refused before anything
        return decide(problem, lambda lo, hi: margin_bound(problem, lo, hi), options.splits,
                      cheap_first=options.cheap_first)


def margin_bound(problem: Problem, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """A sound lower bound of the spec margin of N over the box [lo, hi] of t."""
    return spec_margin_bound(problem.lowered(), problem.spec, lo, hi)


@torch.no_grad()
def output_bounds(network: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> Box:
    """Sound bounds of ``network`` over the box ``[lo, hi]`` (a batch of boxes of shape (B, *input))."""
    lowered = lower(network, tuple(lo.shape[1:]))
    return forward_boxes(lowered, {-1: Box(lo.double(), hi.double())})


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(IntervalCertifier())
