"""The engine of transformation-dependent randomized smoothing (General Lipschitz, Korzh et al.; TSS; Cohen et al.).

The smoothed classifier at the attacked image ``phi(x, beta)`` is ``h(beta) = P[f(phi(x, gamma(alpha, beta)))]``
with ``alpha ~ tau``. Cohen et al.'s two-sample protocol bounds ``h_c`` at the identity from below (Clopper-Pearson,
scipy); GL's Theorem 1 with Algorithms 1-2 (``xi``, ``g_hat``; Lemma 1's gradient of the log-density through
autograd) or the closed form of additive Gaussian smoothing decides whether ``h_c`` stays above 1/2 on the box.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gcert.errors import GcertError
from gcert.transforms import TransformRegion

INSTALL_HINT = "the smoothing certifier needs scipy: pip install 'gcert[smoothing]'"


def scipy_stats() -> Any:
    """``scipy.stats``, or a one-line error saying how to install it."""
    try:
        import scipy.stats
    except ImportError:
        raise GcertError(INSTALL_HINT) from None
    return scipy.stats


def clopper_pearson_lower(successes: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower confidence bound on a binomial proportion."""
    if successes <= 0:
        return 0.0
    return float(scipy_stats().beta.ppf(alpha, successes, n - successes + 1))


def count_classes(predict: Callable[[torch.Tensor], torch.Tensor], region: TransformRegion, n: int, batch: int,
                  generator: torch.Generator, num_classes: int, progress: bool = False) -> torch.Tensor:
    """Counts of the base classifier's top-1 class on ``n`` images ``phi(x, alpha)``, ``alpha ~ tau``, batched."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    bar = None
    if progress and n > 20 * batch:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="smoothing samples", unit="img", leave=False)
    done = 0
    while done < n:
        m = min(batch, n - done)
        alpha = region.sample_smoothing(m, generator)
        top = predict(alpha).argmax(dim=1).cpu()
        counts += torch.bincount(top, minlength=num_classes)
        done += m
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    return counts


# --- Lemma 1: the gradient of the log-density of theta = gamma(alpha, beta) with respect to beta -------------------


def log_density_gradient(region: TransformRegion, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``eta = grad_beta log rho_beta(theta)`` at ``theta = gamma(alpha, beta)`` for each row of ``alpha`` (m, d).

    ``rho_beta(theta) = tau(alpha) / |det d gamma / d alpha|``; with ``z(alpha, beta)`` that log-density written in
    ``(alpha, beta)``, Lemma 1 gives ``grad z = dz/dbeta - dz/dalpha (dgamma/dalpha)^-1 dgamma/dbeta``.
    """
    a = alpha.detach().double().clone().requires_grad_(True)
    b = beta.detach().double().reshape(1, -1).expand(a.shape[0], -1).clone().requires_grad_(True)
    with torch.enable_grad():
        theta = region.transform.gamma(a, b)  # rows are independent, so per-row Jacobians come from batch sums
        d = a.shape[1]
        rows_a, rows_b = [], []
        for i in range(d):
            ga, gb = torch.autograd.grad(theta[:, i].sum(), (a, b), create_graph=True, materialize_grads=True)
            rows_a.append(ga)
            rows_b.append(gb)
        dg_da, dg_db = torch.stack(rows_a, dim=1), torch.stack(rows_b, dim=1)  # (m, d, d): [m, i, j] = dtheta_i/dx_j
        z = region.log_density(a) - torch.linalg.slogdet(dg_da)[1]
        dz_da, dz_db = torch.autograd.grad(z.sum(), (a, b), materialize_grads=True)
    sol = torch.linalg.solve(dg_da.detach(), dg_db.detach())
    return dz_db - (dz_da.unsqueeze(1) @ sol).squeeze(1)


# --- Algorithms 1 and 2: xi and g_hat -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundSettings:
    samples: int = 5000  # N_s, draws of alpha per point of a path
    path_points: int = 5  # points of each path beta0 -> beta_j where the directional bound is estimated
    grid: int = 2  # points per parameter on the box's boundary (2: the corners only)
    h_points: int = 2001  # grid of h in [0, 1] for p(h) and xi(h)
    seed: int = 0
    pixel_sigma: float = 0.0  # > 0: pixel noise, eta by the Laplace approximation (Eq. 12-13), else Lemma 1


@dataclass(frozen=True)
class GLBound:
    """``xi`` tabulated on ``h`` (increasing, ``xi(1/2) = 0``) and ``g_max``, the largest ``g_hat`` on the box."""

    h: tuple[float, ...]
    xi: tuple[float, ...]
    g_max: float
    worst: tuple[float, ...]  # the boundary point where g_hat is largest

    def xi_at(self, h: float) -> float:
        h_t, xi_t = torch.tensor(self.h), torch.tensor(self.xi)
        i = int(torch.searchsorted(h_t, torch.tensor(h), right=True)) - 1
        i = max(0, min(i, len(self.h) - 1))
        return float(xi_t[i])  # the grid point at or below h: xi is increasing, so this is a lower value


LAPLACE_CHUNK = 1 << 20  # sample-pixels per Laplace evaluation (some tens of float64 copies of it in the graph)


def directional_bound(region: TransformRegion, beta: torch.Tensor, u: torch.Tensor, settings: BoundSettings,
                      generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """Algorithm 2 at one point: the largest decrease rate of ``h`` along unit ``u``, as ``w(h) = G * p(h)``.

    The worst base classifier at level h takes the h-share of samples where ``-eta . u`` is largest (Eq. 10-11);
    returns ``G = max_h w(h)`` and ``w / G`` on the ``h`` grid.
    """
    alpha = region.sample_smoothing(settings.samples, generator)
    if settings.pixel_sigma > 0:
        from gcert.laplace import laplace_log_density_gradient

        noise = torch.randn(settings.samples, region.image.numel(), generator=generator, dtype=torch.float64)
        chunk = max(1, LAPLACE_CHUNK // region.image.numel())  # samples per evaluation, its graph bounded in memory
        eta = torch.cat([laplace_log_density_gradient(region, alpha[i:i + chunk], noise[i:i + chunk], beta,
                                                      settings.pixel_sigma)
                         for i in range(0, settings.samples, chunk)])
    else:
        eta = log_density_gradient(region, alpha, beta)
    v = -(eta @ u)
    v = v[torch.isfinite(v)]
    v = v - v.mean()
    v, _ = torch.sort(v, descending=True)
    bound = torch.cat([torch.zeros(1, dtype=v.dtype), torch.cumsum(v, 0) / v.numel()])
    idx = torch.round(torch.linspace(0, 1, settings.h_points, dtype=torch.float64) * v.numel()).long()
    w = bound[idx].clamp_min(0)
    top = float(w.max())
    return top, (w / top if top > 0 else w)


def boundary_points(lower: torch.Tensor, upper: torch.Tensor, grid: int) -> torch.Tensor:
    """Points of the box's boundary: a grid of ``grid`` values per parameter, kept where one is at an end."""
    axes = [torch.linspace(float(lo), float(hi), max(grid, 2), dtype=torch.float64)
            for lo, hi in zip(lower, upper, strict=True)]
    pts = torch.cartesian_prod(*axes).reshape(-1, len(axes))
    on_edge = ((pts == lower) | (pts == upper)).any(dim=1)
    return pts[on_edge]


def gl_bound(region: TransformRegion, settings: BoundSettings) -> GLBound:
    """Algorithm 1 over the region's box: ``xi = int dh / p(h)`` and the largest ``g_hat(beta)`` on its boundary.

    ``g_hat`` grows along each ray from the identity, so its maximum over the box (or over every path from the
    identity into it) is on the boundary. ``p`` is the largest normalised shape seen on any path, and each
    interval of a path takes the larger end of ``G``, so the estimate errs on the cautious side.
    """
    key = (region.transform.name, tuple(region.lower.tolist()), tuple(region.upper.tolist()),
           tuple(tuple(d.to_record().values()) for d in region.smoothing), settings)
    if settings.pixel_sigma > 0:  # with pixel noise eta depends on the image too (Laplace, Eq. 12)
        key = (*key, hashlib.sha256(region.image.detach().double().contiguous().numpy().tobytes()).hexdigest())
    if key not in _BOUNDS:  # without pixel noise the bound depends on the transform, box and distributions only
        if len(_BOUNDS) > 64:
            _BOUNDS.clear()
        _BOUNDS[key] = _gl_bound(region, settings)
    return _BOUNDS[key]


_BOUNDS: dict[tuple, GLBound] = {}


def _gl_bound(region: TransformRegion, settings: BoundSettings) -> GLBound:
    gen = torch.Generator().manual_seed(settings.seed)
    beta0 = region.origin()
    shape = torch.zeros(settings.h_points, dtype=torch.float64)
    g_max, worst = 0.0, beta0
    ts = torch.linspace(0, 1, settings.path_points, dtype=torch.float64)
    for end in boundary_points(region.lower, region.upper, settings.grid):
        length = float((end - beta0).norm())
        if length == 0:
            continue
        u = (end - beta0) / length
        tops = []
        for t in ts:
            top, w = directional_bound(region, beta0 + t * (end - beta0), u, settings, gen)
            tops.append(top)
            shape = torch.maximum(shape, w)
        tops_t = torch.tensor(tops)
        g = length * float(torch.maximum(tops_t[1:], tops_t[:-1]).mean())
        if g > g_max:
            g_max, worst = g, end
    h = torch.linspace(0, 1, settings.h_points, dtype=torch.float64)
    # xi(h) = int_{1/2}^{h} ds / p(s), each interval taking the larger end of p (a lower value of the integral).
    p = torch.maximum(shape[1:], shape[:-1]).clamp_min(1e-12)
    steps = (h[1:] - h[:-1]) / p
    xi = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])
    xi = xi - xi[settings.h_points // 2]
    return GLBound(tuple(h.tolist()), tuple(xi.tolist()), g_max, tuple(worst.tolist()))


def additive_gaussian_radius(region: TransformRegion) -> float:
    """Closed form (Cohen et al.; TSS; GL Eq. 6 with sigma = 0): the largest ``||(beta - beta0) / kappa||_2`` on
    the box, reached at a corner; the box is certified when it is below ``Phi^-1(p_A)``."""
    beta0 = region.origin()
    kappa = torch.tensor([d.scale for d in region.smoothing], dtype=torch.float64)
    far = torch.maximum((region.lower - beta0).abs(), (region.upper - beta0).abs())
    return float((far / kappa).norm())


def is_additive_gaussian(region: TransformRegion) -> bool:
    return region.transform.additive_gaussian and all(d.family == "normal" and d.loc == 0 for d in region.smoothing)


def normal_ppf(p: float) -> float:
    return float(scipy_stats().norm.ppf(p)) if 0 < p < 1 else (math.inf if p >= 1 else -math.inf)
