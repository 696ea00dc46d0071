"""The ``sampling`` falsifier: searches the region for a counterexample and never claims "certified".

A dense grid on segments, random points and projected gradient descent on the spec margin
elsewhere. When it finds nothing, ``margin_upper`` is the smallest margin it saw: an upper bound
on the true minimum, useful to judge how loose a sound certifier's ``margin_lower`` is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import gcert
from gcert.contracts import Certifier, Outcome
from gcert.problem import Problem
from gcert.regions import LpBall


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
        gen = torch.Generator().manual_seed(options.seed)
        points = _candidates(problem, options.samples, gen)
        margins = torch.cat([problem.margins(chunk) for chunk in points.split(options.batch)])
        if options.steps > 0 and (margins > 0).all():
            starts = points[margins.argsort()[: options.starts]]
            refined = _descend(problem, starts, options.steps)
            points, margins = torch.cat([points, refined]), torch.cat([margins, problem.margins(refined)])
        best = int(margins.argmin())
        evaluated = {"evaluated": int(points.shape[0])}
        if margins[best] <= 0:
            return Outcome("falsified", margin_upper=float(margins[best]), witness_t=points[best], details=evaluated)
        return Outcome("unknown", margin_upper=float(margins[best]), details=evaluated)


def _candidates(problem: Problem, n: int, gen: torch.Generator) -> torch.Tensor:
    region = problem.region
    fixed = torch.stack([region.origin(), region.lower, region.upper]).to(region.lower.dtype)
    if region.dim == 1:
        grid = torch.linspace(0, 1, max(n, 2), dtype=region.lower.dtype).unsqueeze(1)
        return torch.cat([fixed, region.lower + grid * (region.upper - region.lower)])
    return torch.cat([region.project(fixed), region.sample(max(n - 3, 1), gen)])


def _descend(problem: Problem, starts: torch.Tensor, steps: int) -> torch.Tensor:
    """Projected gradient descent on the margin; the step shrinks from a quarter of the region's width."""
    region, network, spec = problem.region, problem.composed(), problem.spec
    width = (region.upper - region.lower).to(problem.dtype)
    p = region.p if isinstance(region, LpBall) else math.inf
    t = starts.clone().to(problem.dtype)
    for k in range(steps):
        t.requires_grad_(True)
        with torch.enable_grad():
            margin = spec.margin(network(t)).sum()
            (grad,) = torch.autograd.grad(margin, t)
        size = 0.25 * (1 - k / steps) + 1e-3
        with torch.no_grad():
            if p == math.inf:
                step = -grad.sign() * width * size
            else:
                scale = region.eps if isinstance(region, LpBall) else float(width.norm())
                step = -grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30) * scale * size
            t = region.project((t + step).to(region.lower.dtype)).to(problem.dtype)
    return t.detach().to(region.lower.dtype)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(SamplingFalsifier())
