"""The ``sampling`` falsifier: searches the region for a counterexample and never claims "certified".

A dense grid on segments, random points and projected gradient descent on the spec margin
elsewhere. When it finds nothing, ``margin_upper`` is the smallest margin it saw: an upper bound
on the true minimum, useful to judge how loose a sound certifier's ``margin_lower`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import gcert
from gcert.attack import search
from gcert.contracts import Certifier, Outcome
from gcert.problem import Problem


@dataclass(frozen=True)
class SamplingOptions:
    """Settings of ``sampling``."""

    samples: int = 1024  # points evaluated (a uniform grid when the region is one-dimensional)
    steps: int = 30  # projected-gradient steps from the best starts (0: sampling only)
    starts: int = 8  # how many of the lowest-margin samples start a descent
    batch: int = 256
    seed: int = 0


class SamplingFalsifier(Certifier):
    name = "sampling"
    guarantee = "falsifier"
    description = "dense sampling + projected gradient search for counterexamples; never certifies"
    Options = SamplingOptions

    def certify(self, problem: Problem, options: SamplingOptions) -> Outcome:
        found = search(problem, options.samples, options.steps, options.starts, options.batch, options.seed)
        evaluated: dict[str, object] = {"evaluated": found.evaluated}
        if problem.region.dim == 1:
            evaluated["samples"] = plotted_samples(problem)
        if found.margin <= 0:
            return Outcome("falsified", margin_upper=found.margin, witness_t=found.point, details=evaluated)
        return Outcome("unknown", margin_upper=found.margin, details=evaluated)


PLOTTED_SAMPLES = 64


def plotted_samples(problem: Problem, n: int = PLOTTED_SAMPLES) -> dict[str, list[float]]:
    """The margin at ``n`` evenly spaced points of a one-dimensional region, for the report's plot (cheap: one
    batch of forward passes)."""
    region = problem.region
    grid = torch.linspace(0, 1, n, dtype=torch.float64).reshape(-1, 1)
    t = (region.lower.double() + grid * (region.upper.double() - region.lower.double())).to(region.lower.dtype)
    with torch.no_grad():
        margins = problem.margins(t)
    return {"t": [float(f"{v:.9g}") for v in t.reshape(-1).tolist()],
            "margin": [float(f"{v:.9g}") for v in margins.double().tolist()]}


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(SamplingFalsifier())
