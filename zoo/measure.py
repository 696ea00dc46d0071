"""The figures a zoo entry reports, measured from its weights on held-out data drawn with a fixed seed:
the same code runs when a recipe writes the manifest and when ``gcert zoo verify`` re-measures it.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import torch
from gcert_zoo.datasets import SOURCES, FactorSource
from gcert_zoo.mutations import REGIONS, mutation_direction
from torch import nn

from gcert.generators import invert, jacobian, measure_continuity, svd_split

HELDOUT_SEED = 20231
"""Held-out data for every figure; training draws from other seeds (and the digits test split)."""

TOLERANCE = {"abs": 2e-3, "rel": 0.02}
"""How closely ``gcert zoo verify`` must reproduce each figure: |new - old| <= abs + rel * |old|.
Re-measuring is deterministic up to float reductions that may differ with the thread count."""


@cache
def source(name: str) -> FactorSource:
    return SOURCES[name]()


@cache
def heldout(name: str, n: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Held-out (canonical, mutated, factors, state) of a source, drawn once per process."""
    return source(name).sample(n, torch.Generator().manual_seed(HELDOUT_SEED), split="test")


def _subset(state: dict, idx: slice) -> dict:
    return {k: (v[idx] if isinstance(v, torch.Tensor | np.ndarray) else v) for k, v in state.items()}


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).pow(2).mean(1).sqrt()


@torch.no_grad()
def calibrate_mutation(generator: nn.Module, encoder: nn.Module, src: FactorSource, factors: torch.Tensor,
                       state: dict, mutation: dict[str, Any]) -> dict[str, float]:
    """Which true strength does one step of ``default_delta`` along the mutation produce?

    Each sample is re-rendered with the mutated factor placed (evenly over the samples) where the
    whole check stays inside the trained range, then encoded; ``G(z + delta * direction)`` is
    compared with the ground truth re-rendered with the factor moved by ``d`` for ``d`` on a grid
    over [0, 2 delta]; the best ``d`` (refined by a parabola through its neighbours) is the
    measured strength. (Near the edge of the range a generator cannot follow; that is extrapolation,
    not calibration.)
    """
    delta = float(mutation["default_delta"])
    j = list(src.factors).index(mutation["factor"])
    lo, hi = src.centre[j] - src.scale[j], src.centre[j] + src.scale[j]
    first, last = (lo, hi - 2 * delta) if delta > 0 else (lo - 2 * delta, hi)
    factors = factors.clone()
    factors[:, j] = torch.linspace(first, last, len(factors))
    codes = encoder(src.render(state, factors))
    with torch.enable_grad():
        dirs = torch.stack([mutation_direction(generator, z, mutation) for z in codes])
    mutated = generator(codes + delta * dirs)
    grid = torch.linspace(0, 2 * delta, 9)
    errors = []
    for d in grid:
        f = factors.clone()
        f[:, j] += d
        errors.append(_rms(mutated, src.render(state, f)))
    err = torch.stack(errors, 1)  # (n, grid)
    best = err.argmin(1).clamp(1, len(grid) - 2)
    e0, e1, e2 = (err.gather(1, (best + o).unsqueeze(1)).squeeze(1) for o in (-1, 0, 1))
    curvature = e0 - 2 * e1 + e2
    shift = torch.where(curvature > 0, 0.5 * (e0 - e2) / curvature.clamp_min(1e-12), torch.zeros_like(e1))
    step = float(grid[1] - grid[0])
    measured = grid[best] + shift.clamp(-1, 1) * step
    fidelity = err.gather(1, err.argmin(1, keepdim=True)).squeeze(1)
    return {
        "delta": delta,
        "measured_mean": float(measured.mean()),
        "abs_error_mean": float((measured - delta).abs().mean()),
        "fidelity_rmse": float(fidelity.mean()),
    }


def generator_figures(entry: dict[str, Any], generator: nn.Module, encoder: nn.Module) -> dict[str, Any]:
    """Generation quality, continuity C, independence and calibration of a zoo generator."""
    torch.manual_seed(HELDOUT_SEED)
    src = source(entry["dataset_source"])
    x0, x, factors, state = heldout(src.name)
    generator, encoder = generator.eval(), encoder.eval()
    with torch.no_grad():
        codes = encoder(x)
        recon = float(_rms(generator(codes), x).mean())
    # inversion as the runner does it: encoder guess, then optimisation with restarts
    inv = [invert(generator, x[i], (codes.shape[1],), encoder=encoder, restarts=2, steps=60, seed=i)
           for i in range(8)]
    rng = torch.Generator().manual_seed(HELDOUT_SEED)
    perm = torch.randperm(len(codes), generator=rng)
    near_dir = torch.randn(codes.shape, generator=rng)
    near = codes + 0.1 * near_dir / near_dir.norm(dim=1, keepdim=True)
    cont = measure_continuity(generator, torch.cat([codes, codes]), torch.cat([codes[perm], near]))
    space = entry["control_space"]
    prior = _prior(src, 2000, rng, factors=space["content"]["first"], dim=space["dim"])
    prior_pairs = measure_continuity(generator, prior[:1000], prior[1000:])
    with torch.no_grad():
        samples = generator(prior[:256])
    diversity = float(torch.pdist(samples.flatten(1)).mean() / torch.pdist(x.flatten(1)).mean())

    ranks = [svd_split(jacobian(generator, z)).rank for z in codes[:16]]
    figures: dict[str, Any] = {
        "reconstruction_rmse": round(recon, 4),
        "inversion_rmse": round(float(np.mean([r.error for r in inv])), 4),
        "continuity": cont.to_dict(),
        "prior_collapse_share": round(prior_pairs.collapse_share, 4),
        "diversity": round(diversity, 4),
        "jacobian_rank": {"threshold": 0.01, "mean": round(float(np.mean(ranks)), 3), "min": min(ranks),
                          "max": max(ranks), "of": int(codes.shape[1])},
        "mutations": {},
    }
    n = 16
    sub = _subset(state, slice(0, n))
    effects = []
    for m in entry["mutations"]:
        cal = calibrate_mutation(generator, encoder, src, factors[:n], sub, m)
        cal = {k: round(v, 4) for k, v in cal.items()}
        with torch.enable_grad():
            d = mutation_direction(generator, codes[0], m)
            effects.append(jacobian(generator, codes[0]) @ d)
        if m.get("foreground") is not None:
            cal["background_ratio"] = round(_background_ratio(generator, codes[:n], m), 4)
        if m.get("direction") == "svd":
            cal.update(_svd_figures(generator, codes[:n], m))
        figures["mutations"][m["name"]] = cal
    e = torch.stack(effects)
    cos = (e @ e.T) / (e.norm(dim=1, keepdim=True) * e.norm(dim=1).unsqueeze(0)).clamp_min(1e-12)
    off = cos[~torch.eye(len(e), dtype=torch.bool)].abs()
    figures["independence"] = {"mean_abs_cosine_of_image_changes": round(float(off.mean()), 4),
                               "max_abs_cosine_of_image_changes": round(float(off.max()), 4)}
    return figures


def _background_ratio(generator: nn.Module, codes: torch.Tensor, mutation: dict[str, Any]) -> float:
    """Mean of ||change outside the region|| / ||change inside|| for a step of ``default_delta``."""
    mask = REGIONS[mutation["foreground"]]()
    ratios = []
    for z in codes:
        d = mutation_direction(generator, z, mutation)
        with torch.no_grad():
            change = generator((z + mutation["default_delta"] * d).unsqueeze(0)) - generator(z.unsqueeze(0))
        inside = change[0][:, mask].norm()
        outside = change[0][:, ~mask].norm()
        ratios.append(float(outside / inside.clamp_min(1e-12)))
    return float(np.mean(ratios))


def _svd_figures(generator: nn.Module, codes: torch.Tensor, mutation: dict[str, Any]) -> dict[str, float]:
    """Of an svd mutation at held-out codes: the mean rank of the leading subspace, the share of inputs
    where calibration by measurement ran, and the mean calibration factor over those."""
    from gcert_zoo.mutations import svd_direction

    found = [svd_direction(generator, z, mutation) for z in codes]
    scales = [d.scale for d in found if d.calibrated]
    return {"subspace_rank_mean": round(float(np.mean([d.rank for d in found])), 3),
            "calibrated_share": round(len(scales) / len(found), 4),
            "calibration_factor_mean": round(float(np.mean(scales)), 4) if scales else float("nan")}


def _prior(src: FactorSource, n: int, rng: torch.Generator, factors: int | None = None,
           dim: int | None = None) -> torch.Tensor:
    """The latent distribution generators are trained on: factors uniform in their range, content N(0, I).

    ``factors`` is how many of the ``dim`` coordinates lead as factors (default: the source's); 0 for a
    generator without factor coordinates (shapes-svd), whose whole latent is content."""
    nf = len(src.factors) if factors is None else factors
    f = torch.rand(n, nf, generator=rng) * 2 - 1
    content = src.content_dim if dim is None else dim - nf
    return torch.cat([f, torch.randn(n, content, generator=rng)], dim=1)


def prior_sample(src: FactorSource, n: int, rng: torch.Generator, factors: int | None = None,
                 dim: int | None = None) -> torch.Tensor:
    return _prior(src, n, rng, factors, dim)


@torch.no_grad()
def network_accuracy(network: nn.Module, images: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    labels = torch.as_tensor(labels)
    return float((network(images).argmax(1) == labels).float().mean())


def compare(old: Any, new: Any, path: str = "") -> list[str]:
    """Figures of ``new`` that differ from ``old`` beyond :data:`TOLERANCE`, one line each."""
    problems: list[str] = []
    if isinstance(old, dict):
        for k, v in old.items():
            if k not in new:
                problems.append(f"{path}{k}: not re-measured")
            else:
                problems += compare(v, new[k], f"{path}{k}.")
        return problems
    if isinstance(old, bool | str) or old is None:
        return [] if old == new else [f"{path.rstrip('.')}: {old!r} in the manifest, {new!r} now"]
    if isinstance(old, int | float):
        if isinstance(old, float) and math.isinf(old) and old == new:
            return []
        if not abs(float(new) - float(old)) <= TOLERANCE["abs"] + TOLERANCE["rel"] * abs(float(old)):
            return [f"{path.rstrip('.')}: {old} in the manifest, {new} re-measured"]
    return problems
