"""The ``smoothing`` certifier: General Lipschitz randomized smoothing over a resolvable transform's parameter box.

Probabilistic: with confidence ``1 - alpha``, the smoothed classifier (the majority vote of the network under the
transform's smoothing distribution) keeps the spec's class for every parameter in the box. Only forward passes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

import gcert
from gcert import smoothing as engine
from gcert.contracts import TRANSFORM_REGION, Certifier, Outcome
from gcert.errors import GcertError
from gcert.laplace import check_pixel_sigma
from gcert.problem import Problem
from gcert.transforms import TransformRegion

METHODS = ("auto", "numerical", "closed-form")


@dataclass(frozen=True)
class SmoothingOptions:
    """Settings of ``smoothing`` (Cohen et al.'s protocol; GL's N = 1,000 and alpha* = 1e-3 by default)."""

    n: int = 1000  # estimation samples: bound h_c from below (Clopper-Pearson)
    n0: int = 100  # selection samples: pick the class
    alpha: float = 1e-3  # the certificate fails with probability at most alpha
    seed: int = 0  # seeds both samples (and the bound's own Monte Carlo): same seed, same answer
    batch: int = 500  # images per forward pass
    method: str = "auto"  # auto: closed form for additive Gaussian smoothing, else GL's numerical xi / g_hat
    bound_samples: int = 5000  # N_s of Algorithm 2, per point of a path
    path_points: int = 5  # points per path from the identity where the directional bound is estimated
    grid: int = 2  # points per parameter on the box boundary where g_hat is evaluated (2: the corners)
    device: str = "auto"  # where the forward passes run: auto (cuda when there is one), cpu, cuda, cuda:1, ...
    pixel_sigma: float = 0.0  # std of additive pixel noise eps in y = phi(x, alpha) + eps (GL Eq. 5); 0: none

    def __post_init__(self) -> None:
        for name in ("n", "n0", "batch", "bound_samples"):
            if getattr(self, name) < 1:
                raise GcertError(f"smoothing.{name} must be an integer >= 1, got {getattr(self, name)}")
        if self.path_points < 2 or self.grid < 2:
            raise GcertError("smoothing.path_points and smoothing.grid must be integers >= 2")
        if not 0 < self.alpha < 1:
            raise GcertError(f"smoothing.alpha must be in (0, 1), got {self.alpha} (e.g. 0.001)")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise GcertError(f"smoothing.device {self.device!r} is not auto, cpu or cuda[:N]")
        if not (math.isfinite(self.pixel_sigma) and self.pixel_sigma >= 0):
            raise GcertError(f"smoothing.pixel_sigma must be a finite number >= 0, got {self.pixel_sigma} (e.g. 0.1)")
        if self.method not in METHODS:
            raise GcertError(f"smoothing.method {self.method!r} is not one of {', '.join(METHODS)}")


class Smoothing(Certifier):
    name = "smoothing"
    guarantee = "probabilistic"
    description = "General Lipschitz randomized smoothing over resolvable transforms (confidence 1 - alpha)"
    Options = SmoothingOptions
    regions = (TRANSFORM_REGION,)

    def prepare(self, problem: Problem) -> None:
        engine.scipy_stats()
        if not isinstance(problem.region, TransformRegion):
            raise GcertError("smoothing needs a transform mutation (e.g. -m contrast-brightness)")
        if problem.spec.num_outputs < 2:
            raise GcertError("smoothing certifies classifiers (a top-1 spec); the model has one output")

    def certify(self, problem: Problem, options: SmoothingOptions) -> Outcome:
        self.prepare(problem)
        region: TransformRegion = problem.region  # type: ignore[assignment]
        start = time.perf_counter()
        if options.method == "closed-form" and not engine.is_additive_gaussian(region):
            raise GcertError(f"transform {region.transform.name!r} has no closed form here; use smoothing.method="
                             "numerical or auto")
        closed = options.method == "closed-form" or (options.method == "auto" and engine.is_additive_gaussian(region))
        if not closed:
            check_pixel_sigma(region, options.pixel_sigma)
        spec, k = problem.spec, problem.spec.num_outputs
        gen = torch.Generator().manual_seed(options.seed)
        beta0 = region.origin()
        device = _device(options.device)
        net = problem.composed() if device.type == "cpu" else copy.deepcopy(problem.composed()).to(device)

        @torch.no_grad()
        def predict(alpha: torch.Tensor) -> torch.Tensor:
            theta = region.transform.gamma(alpha, beta0.expand_as(alpha)).to(device=device, dtype=problem.dtype)
            if options.pixel_sigma == 0:
                return net(theta).cpu()
            image = net.generator(net.embed(theta))  # y = phi(x, alpha) + eps (Eq. 5), eps from the seeded stream
            eps = options.pixel_sigma * torch.randn(image.shape, generator=gen, dtype=torch.float64)
            return net.network(image + eps.to(device=device, dtype=image.dtype)).cpu()

        def holds(alpha: torch.Tensor) -> torch.Tensor:
            # class 1 where the spec holds: the event whose probability h_c is bounded
            return torch.stack([torch.zeros(alpha.shape[0]), (spec.margin(predict(alpha)) > 0).double()], dim=1)

        top1 = spec.kind == "top1"
        selection = engine.count_classes(predict if top1 else holds, region, options.n0, options.batch, gen,
                                         k if top1 else 2)
        chosen = int(selection.argmax())
        record: dict[str, Any] = {
            "transform": region.transform.name, "certified_set": [
                {"name": p.name, "unit": p.unit, "range": [float(lo), float(hi)]}
                for p, lo, hi in zip(region.transform.params, region.lower, region.upper, strict=True)],
            "distribution": [d.to_record() for d in region.smoothing], "pixel_sigma": options.pixel_sigma,
            "n": options.n, "n0": options.n0,
            "alpha": options.alpha, "confidence": 1 - options.alpha, "seed": options.seed,
            "selection_counts": selection.tolist(),
        }
        wanted = int(spec.params["label"]) if top1 else 1
        if chosen != wanted:
            record["smoothed_prediction"] = chosen
            why = (f"the smoothed classifier predicts class {chosen}, not {wanted}" if top1 else
                   "the spec fails on most selection samples")
            return Outcome("unknown", details={"reason": why, "smoothing": record})
        hits = int(engine.count_classes(holds, region, options.n, options.batch, gen, 2, progress=True)[1])
        p_lower = engine.clopper_pearson_lower(hits, options.n, options.alpha)
        record.update(estimation_hits=hits, h_lower=p_lower, sampling_seconds=round(time.perf_counter() - start, 6))
        if p_lower <= 0.5:
            return Outcome("unknown", details={"reason": f"abstain: lower bound {p_lower:.4f} on h is not above 1/2",
                                               "smoothing": record})
        if closed:  # with pixel noise too: h is the kappa-smoothing of E_eps f, so the kappa radius stays sound
            need, have = engine.additive_gaussian_radius(region), engine.normal_ppf(p_lower)
            record.update(method="closed-form", radius_needed=need, radius_certified=have)
        else:
            settings = engine.BoundSettings(options.bound_samples, options.path_points, options.grid,
                                            seed=options.seed, pixel_sigma=options.pixel_sigma)
            bound = engine.gl_bound(region, settings)
            need, have = bound.g_max, bound.xi_at(p_lower)
            record.update(method="numerical", g_hat_max=need, xi=have, g_hat_worst_point=list(bound.worst),
                          bound_settings=asdict(settings))
        if have > need:
            return Outcome("certified", details={"smoothing": record})
        return Outcome("unknown", details={"reason": "the certification condition fails: g_hat(beta) = "
                                           f"{need:.4g} is not below xi(h) - xi(1/2) = {have:.4g}",
                                           "smoothing": record})


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GcertError(f"smoothing.device={name} but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(name)


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(Smoothing())
