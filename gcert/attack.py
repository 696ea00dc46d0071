"""Looking for counterexamples: the host's attack, shared by the ``sampling`` falsifier and by every sound
certifier's cheap first try (:func:`cheap_answer`).

Points of the region (its origin, its corners and centre, a dense grid on one-dimensional regions, random points
elsewhere) are evaluated by plain forward passes; from the lowest ones, projected gradient descent on the spec
margin. The host confirms any point this returns before a record says ``falsified``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gcert.bounds import spec_margin_bound
from gcert.contracts import Outcome
from gcert.errors import GcertError
from gcert.problem import Problem
from gcert.regions import LpBall

Tensor = torch.Tensor


@dataclass
class Search:
    """The lowest-margin point found and how many points were evaluated."""

    point: Tensor  # (dim,) in the region's coordinates t
    margin: float
    evaluated: int


def search(problem: Problem, samples: int = 1024, steps: int = 30, starts: int = 8, batch: int = 256,
           seed: int = 0) -> Search:
    """Sample the region, then descend the margin from the ``starts`` lowest samples (unless one already fails)."""
    gen = torch.Generator().manual_seed(seed)
    points = candidates(problem, samples, gen)
    margins = torch.cat([problem.margins(chunk) for chunk in points.split(batch)])
    if steps > 0 and bool((margins > 0).all()):
        begin = points[margins.argsort()[:starts]]
        refined = descend(problem, begin, steps)
        points, margins = torch.cat([points, refined]), torch.cat([margins, problem.margins(refined)])
    best = int(margins.argmin())
    return Search(points[best], float(margins[best]), int(points.shape[0]))


def candidates(problem: Problem, n: int, gen: torch.Generator) -> Tensor:
    """The region's origin, lower and upper corners, then a grid (one dimension) or ``n - 3`` random points."""
    region = problem.region
    fixed = torch.stack([region.origin(), region.lower, region.upper]).to(region.lower.dtype)
    if region.dim == 1:
        grid = torch.linspace(0, 1, max(n, 2), dtype=region.lower.dtype).unsqueeze(1)
        return torch.cat([fixed, region.lower + grid * (region.upper - region.lower)])
    return torch.cat([region.project(fixed), region.sample(max(n - 3, 1), gen)])


def descend(problem: Problem, starts: Tensor, steps: int) -> Tensor:
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
    # The points returned are in the region exactly (float64, projected last): rounding them to the network's
    # precision moved some out of a ball; the host rounds a witness into the region itself.
    return region.project(t.detach().to(region.lower.dtype))


CHEAP = {"samples": 128, "steps": 10, "starts": 2}
"""The attack every sound certifier runs before its own bound: about a tenth of ``sampling``'s default work."""


def cheap_answer(problem: Problem, interval: bool = True) -> tuple[Outcome | None, dict[str, object]]:
    """A verdict without the expensive bound, when a cheap one exists: a counterexample from a short attack, or
    (with ``interval``) a certificate from one interval pass over the whole region, whose bound is also the
    ``margin_lower`` of a counterexample found. Returns ``(outcome or None, what was tried)``; the host confirms
    a witness as for every certifier."""
    found = search(problem, **CHEAP)
    tried: dict[str, object] = {"cheap_attack_points": found.evaluated, "cheap_attack_margin": found.margin}
    bound = None
    if interval:
        try:
            bound = spec_margin_bound(problem.lowered(), problem.spec, problem.region.lower, problem.region.upper)
            tried["cheap_interval_bound"] = bound
        except GcertError:  # a network only another engine takes (say auto_LiRPA's): no interval pass
            bound = None
    if found.margin <= 0:
        return Outcome("falsified", margin_lower=bound, margin_upper=found.margin, witness_t=found.point,
                       details={**tried, "decided_by": "cheap attack"}), tried
    if bound is not None and bound > 0:
        return Outcome("certified", margin_lower=bound, margin_upper=found.margin,
                       details={**tried, "decided_by": "interval pass"}), tried
    return None, tried
