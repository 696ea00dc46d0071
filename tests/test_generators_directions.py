"""Mutating directions from the Jacobian (Eq. 5-6) and local mutations by null-space projection (Eq. 17)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gcert.errors import GcertError
from gcert.generators import (
    NullSpaceEmptyError,
    jacobian,
    local_directions,
    mutating_directions,
    project_local,
)


def _planted(rank: int, latent: int = 8, pixels: int = 20, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A ReLU generator whose latent passes a rank-``rank`` bottleneck: J has rank <= ``rank`` everywhere."""
    torch.manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(latent, latent))
    keep = q[:, :rank].T  # the planted row space
    bottleneck = nn.Linear(latent, rank, bias=False)
    with torch.no_grad():
        bottleneck.weight.copy_(keep * torch.linspace(3, 1, rank).unsqueeze(1))
    g = nn.Sequential(bottleneck, nn.Linear(rank, 32), nn.LeakyReLU(0.2), nn.Linear(32, pixels))
    return g.double().eval(), keep.double()


def test_direction_count_equals_the_planted_rank_and_spans_the_planted_space():
    g, keep = _planted(rank=3)
    d = mutating_directions(g, torch.randn(8, dtype=torch.float64))
    assert d.rank == 3 and d.vectors.shape == (3, 8) and d.null.shape == (5, 8)
    # the same subspace: equal orthogonal projectors
    assert torch.allclose(d.vectors.T @ d.vectors, keep.T @ keep, atol=1e-8)
    assert torch.allclose(d.vectors @ d.vectors.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(d.vectors @ d.null.T, torch.zeros(3, 5, dtype=torch.float64), atol=1e-10)
    # null directions change nothing (exactly, since they are killed by the bottleneck)
    z = torch.randn(1, 8, dtype=torch.float64)
    assert torch.allclose(g(z + 0.7 * d.null[:1]), g(z), atol=1e-12)


def test_asking_for_more_directions_than_the_rank_is_an_error_not_padding():
    g, _ = _planted(rank=2)
    z = torch.randn(8, dtype=torch.float64)
    assert mutating_directions(g, z, k=2).vectors.shape == (2, 8)
    with pytest.raises(GcertError, match="rank 2"):
        mutating_directions(g, z, k=3)


def test_rank_threshold_decides_which_singular_values_are_noise():
    g = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        g.weight.copy_(torch.diag(torch.tensor([1.0, 0.1, 0.001, 0.0], dtype=torch.float64)))
    z = torch.zeros(4, dtype=torch.float64)
    assert mutating_directions(g, z).rank == 2  # default threshold 1e-2
    assert mutating_directions(g, z, rank_threshold=1e-4).rank == 3
    assert mutating_directions(g, z, rank_threshold=0.5).rank == 1


def test_jacobian_rows_follow_the_mask():
    g = nn.Sequential(nn.Linear(3, 2 * 2 * 2), nn.Unflatten(1, (2, 2, 2))).double()
    z = torch.randn(3, dtype=torch.float64)
    full = jacobian(g, z)
    assert full.shape == (8, 3) and torch.allclose(full, g[0].weight)
    mask = torch.tensor([[True, False], [False, True]])  # (H, W), broadcast over both channels
    assert torch.allclose(jacobian(g, z, mask), g[0].weight[[0, 3, 4, 7]])


class _TwoRegions(nn.Module):
    """Top row (foreground) reads the whole latent; the rest (background) reads only a 3-dim projection."""

    def __init__(self, latent: int = 6) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.front = nn.Sequential(nn.Linear(latent, 16), nn.ReLU(), nn.Linear(16, 4))
        self.back = nn.Sequential(nn.Linear(latent, 3, bias=False), nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 12))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.front(z), self.back(z)], dim=1).reshape(-1, 1, 4, 4)


FOREGROUND = torch.zeros(4, 4, dtype=torch.bool)
FOREGROUND[0] = True


def test_local_directions_leave_the_background_unchanged_to_first_order():
    g = _TwoRegions().double().eval()
    z = torch.randn(6, dtype=torch.float64)
    local = local_directions(g, z, FOREGROUND)
    assert local.background_null_dim == 3
    assert local.vectors.shape[0] >= 1
    assert torch.allclose(local.vectors @ local.vectors.T, torch.eye(local.vectors.shape[0], dtype=torch.float64),
                          atol=1e-10)  # re-orthogonalised
    assert float(local.background_gain.max()) < 1e-8 * float(local.foreground_gain.max())
    assert float(local.foreground_gain.min()) > 1e-6
    # and in a real step: background pixels do not move (first order; here exactly), foreground ones do
    step = 1e-3 * local.vectors[0]
    before, after = g(z.unsqueeze(0))[0, 0], g((z + step).unsqueeze(0))[0, 0]
    assert torch.allclose(after[1:], before[1:], atol=1e-12)
    assert (after[0] - before[0]).abs().max() > 1e-6


def test_project_local_keeps_the_foreground_change_of_the_direction():
    g = _TwoRegions().double().eval()
    z = torch.randn(6, dtype=torch.float64)
    v = torch.randn(6, dtype=torch.float64)
    s = project_local(g, z, v, FOREGROUND)
    jac_b = jacobian(g, z, ~FOREGROUND)
    jac_f = jacobian(g, z, FOREGROUND)
    assert (jac_b @ s).norm() < 1e-8 * (jac_b @ v).norm()
    # the least-squares scale: the foreground change of s is the projection of v's change onto it
    fs, fv = jac_f @ s, jac_f @ v
    assert torch.allclose(fs @ fv, fs @ fs, rtol=1e-8)


def test_local_directions_fail_clearly_when_the_background_null_space_is_empty():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(4, 16), nn.Unflatten(1, (1, 4, 4))).double()  # every pixel reads every latent
    with pytest.raises(NullSpaceEmptyError, match="full rank"):
        local_directions(g, torch.zeros(4, dtype=torch.float64), FOREGROUND)
