"""Dense float64 grids: the torch module itself (``module.double()``), evaluated at many points of the region.

Shares no code with gcert's certifiers: controls are computed from the region *description* (not gcert's
embedding), the network is a float64 copy of the user's module run by torch, and the spec is evaluated from
its description. On one-dimensional regions the share of the grid where the spec holds estimates the share
of the region, with a tolerance of (sign changes seen + 2) grid cells.

Its own rounding: a float64 forward pass is exact to about 1e-15 of the magnitudes involved; a margin counts
as a violation only below ``-tol``, with tol = 1e-9 times the largest |row term| seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tests.soundness.evidence import Evidence
from tests.soundness.strategies import BallDesc, BoxDesc, Case, RegionDesc, SegmentDesc, SpecDesc, float64_copy

GRID_1D = 4097


def spec_margin64(spec: SpecDesc, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 margins (batch,) and the magnitude of the row terms (batch,), from the spec description."""
    y = y.reshape(y.shape[0], -1).double()
    k = spec.k
    if spec.kind == "top1":
        others = [j for j in range(k) if j != spec.label]
        rows = y[:, [spec.label]] - y[:, others]
        mag = y[:, [spec.label]].abs() + y[:, others].abs()
        return rows.min(dim=1).values, mag.max(dim=1).values
    if spec.kind == "regression":
        v = y[:, spec.label]
        rows = torch.stack([(spec.reference - v) + spec.tau, (v - spec.reference) + spec.tau], dim=1)
        mag = v.abs() + abs(spec.reference) + abs(spec.tau)
        return rows.min(dim=1).values, mag
    C = torch.tensor(spec.C, dtype=torch.float64)
    d = torch.tensor(spec.d, dtype=torch.float64)
    rows = y @ C.T + d
    mag = (y.abs() @ C.abs().T + d.abs()).max(dim=1).values
    clauses = spec.clauses if spec.clauses is not None else [(r,) for r in range(C.shape[0])]
    per = torch.stack([rows[:, list(c)].max(dim=1).values for c in clauses], dim=1)
    return per.min(dim=1).values, mag


def controls64(region: RegionDesc, t: torch.Tensor) -> torch.Tensor:
    """Controls (batch, *shape) at points t (batch, dim), float64, from the description."""
    if isinstance(region, SegmentDesc):
        dt = getattr(torch, region.dtype)
        s = torch.tensor(region.start, dtype=dt).double()
        e = torch.tensor(region.end, dtype=dt).double()
        x = s + t[:, :1] * (e - s)
    else:
        x = t
    shape = region.shape if region.shape is not None else (x.shape[1],)
    return x.reshape(x.shape[0], *shape)


def t_box64(region: RegionDesc) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(region, SegmentDesc):
        return torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    if isinstance(region, BoxDesc):
        return torch.tensor(region.lower, dtype=torch.float64), torch.tensor(region.upper, dtype=torch.float64)
    c = torch.tensor(region.center, dtype=torch.float64)
    lo, hi = c - region.eps, c + region.eps
    if region.clip is not None:
        lo, hi = lo.clamp(*region.clip), hi.clamp(*region.clip)
    return lo, hi


def sample64(region: RegionDesc, n: int, gen: torch.Generator) -> torch.Tensor:
    """Grid (1-D) or random points (n, dim) of the region, float64, inside it by construction."""
    lo, hi = t_box64(region)
    dim = lo.numel()
    if dim == 1:
        u = torch.linspace(0, 1, GRID_1D, dtype=torch.float64).unsqueeze(1)
        return torch.cat([lo + u * (hi - lo), hi.reshape(1, 1)])
    if isinstance(region, BallDesc) and region.p != math.inf:
        c = torch.tensor(region.center, dtype=torch.float64)
        g = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        if region.p == 1:
            g = g ** 3
        norm = g.norm(p=region.p, dim=1, keepdim=True).clamp_min(1e-300) * (1 + 1e-12)
        r = torch.rand(n, 1, generator=gen, dtype=torch.float64)
        pts = c + region.eps * r * g / norm
        axis = torch.cat([torch.eye(dim, dtype=torch.float64), -torch.eye(dim, dtype=torch.float64)]) * region.eps
        pts = torch.cat([c.reshape(1, -1), c + axis, pts])
        return pts.clamp(*region.clip) if region.clip is not None else pts
    u = torch.rand(n, dim, generator=gen, dtype=torch.float64)
    corners = (torch.rand(min(2**dim, 64), dim, generator=gen) < 0.5).double()
    return torch.cat([((lo + hi) / 2).reshape(1, -1), lo + corners * (hi - lo), lo + u * (hi - lo)])


def contains64(region: RegionDesc, t: Sequence[float]) -> bool:
    from tests.soundness.oracle_exact import contains

    return contains(region, t)


def grid_evidence(case: Case, net: nn.Module, gen: nn.Module, n: int = 2000, seed: int = 0) -> Evidence:
    region, spec = case.region, case.spec
    assert region is not None and spec is not None
    net64, gen64 = float64_copy(net), float64_copy(gen)

    @torch.no_grad()
    def margins(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return spec_margin64(spec, net64(gen64(controls64(region, t))))

    pts = sample64(region, n, torch.Generator().manual_seed(seed))
    m, mag = margins(pts)
    scale = float(mag.max()) if mag.numel() else 1.0
    tol = 1e-9 * (1.0 + scale)

    def margin_at(t: Sequence[float]) -> float:
        return float(margins(torch.tensor([list(map(float, t))], dtype=torch.float64))[0][0])

    def slack_at(t: Sequence[float]) -> float:
        _, mg = margins(torch.tensor([list(map(float, t))], dtype=torch.float64))
        return 1e-5 * (1.0 + float(mg[0]))

    points = [(tuple(p), float(v)) for p, v in zip(pts.tolist(), m.tolist(), strict=True)]
    lo64, hi64 = t_box64(region)
    ev = Evidence("grid64", points, margin_at, slack_at, lambda t: contains64(region, t), tol=tol,
                  box=(lo64.tolist(), hi64.tolist()))
    if pts.shape[1] == 1:
        lo, hi = t_box64(region)
        if float(hi[0]) > float(lo[0]):
            grid = pts[:-1]
            holds = (m[:-1] > 0).double()
            changes = int((holds[1:] != holds[:-1]).sum())
            ev.share = (float(holds.mean()), (changes + 2) / (grid.shape[0] - 1))
    return ev
