"""The regulation library: the PWL output layer, the continuity term (Eq. 14), BatchNorm folding, measuring C."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

from gcert.generators import PiecewiseLinearOutput, continuity_loss, fold_batchnorm, measure_continuity
from gcert_plugins.interval import output_bounds


def test_pwl_output_is_the_decreasing_clamp_for_both_ranges():
    x = torch.linspace(-3, 4, 701)
    assert torch.equal(PiecewiseLinearOutput()(x), (1 - x).clamp(0, 1))
    assert torch.allclose(PiecewiseLinearOutput((-1.0, 1.0))(x), (1 - x).clamp(-1, 1), atol=1e-6)
    with pytest.raises(ValueError):
        PiecewiseLinearOutput((0.0, 255.0))


def test_pwl_output_traces_to_two_relus_and_interval_bounds_are_exact():
    layer = PiecewiseLinearOutput()
    graph = fx.symbolic_trace(layer).graph
    assert sum(1 for n in graph.nodes if n.target is torch.relu) == 2
    lo, hi = torch.tensor([[-1.0, 0.2, 0.5, 1.5]]), torch.tensor([[-0.5, 0.4, 2.0, 3.0]])
    out = output_bounds(layer, lo, hi)
    # a decreasing map: the exact bounds are f(hi) and f(lo)
    assert torch.allclose(out.lo.float(), layer(hi), atol=1e-9) and torch.allclose(out.hi.float(), layer(lo), atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_continuity_loss_vanishes_exactly_on_affine_generators(dim, seed):
    torch.manual_seed(seed)
    g = nn.Linear(dim, 5).double()
    z0, zT = torch.randn(7, dim, dtype=torch.float64), torch.randn(7, dim, dtype=torch.float64)
    assert float(continuity_loss(g, z0, zT).detach()) < 1e-12


def test_continuity_loss_matches_a_hand_computed_bend():
    # G = ReLU on one pixel; z0 = -1, zT = +1, lambda = 1/2: zt = 0, so the term is |0.5 * 1 - 0 - 0.5 * 0| = 0.5.
    g = nn.ReLU()
    loss = continuity_loss(g, torch.tensor([[-1.0]]), torch.tensor([[1.0]]), lam=torch.tensor([0.5]))
    assert float(loss) == pytest.approx(0.5)
    # two samples, per-sample Euclidean norms averaged: sqrt(0.5^2 * 2) and 0
    z0 = torch.tensor([[-1.0, -1.0], [1.0, 2.0]])
    zT = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    loss = continuity_loss(g, z0, zT, lam=torch.tensor([0.5, 0.25]))
    assert float(loss) == pytest.approx((math.sqrt(0.5) + 0.0) / 2)


def test_continuity_loss_trains_a_generator_towards_straight_segments():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 16))
    rng = torch.Generator().manual_seed(0)
    z0, zT = torch.randn(256, 2, generator=rng), torch.randn(256, 2, generator=rng)
    lam = torch.rand(256, generator=rng)
    before = float(continuity_loss(g, z0, zT, lam))
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        loss = continuity_loss(g, torch.randn(64, 2, generator=rng), torch.randn(64, 2, generator=rng), rng=rng)
        loss.backward()
        opt.step()
    assert float(continuity_loss(g, z0, zT, lam)) < 0.5 * before


def _randomise_bn(model: nn.Module) -> None:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_fold_batchnorm_keeps_the_function_and_removes_every_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8 * 2 * 2), nn.Unflatten(1, (8, 2, 2)),
        nn.Sequential(nn.ConvTranspose2d(8, 4, 2, 2), nn.BatchNorm2d(4), nn.LeakyReLU(0.1)),
        nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), PiecewiseLinearOutput(),
    )
    _randomise_bn(model)
    model.eval()
    folded = fold_batchnorm(model)
    z = torch.randn(16, 6)
    assert torch.allclose(folded(z), model(z), atol=1e-5)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # original untouched


def test_fold_batchnorm_refuses_a_batchnorm_it_cannot_fold():
    with pytest.raises(ValueError, match="does not follow"):
        fold_batchnorm(nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)))


def test_measure_continuity_on_a_scaled_identity_gives_its_scale():
    g = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        g[0].weight.copy_(2 * torch.eye(4))
    z0, z1 = torch.randn(500, 4), torch.randn(500, 4)
    report = measure_continuity(g, z0, z1)
    assert report.ratio_min == pytest.approx(2, rel=1e-5) and report.ratio_max == pytest.approx(2, rel=1e-5)
    assert report.c == pytest.approx(2, rel=1e-5) and report.c_scaled == pytest.approx(1, rel=1e-5)
    assert report.collapse_share == 0


def test_measure_continuity_counts_pairs_that_collapse_to_one_image():
    # ReLU sends the whole negative orthant to the same image: pairs inside it collapse.
    g = nn.ReLU()
    z0 = torch.cat([-torch.rand(300, 3) - 0.1, torch.rand(100, 3) + 0.1])
    z1 = torch.cat([-torch.rand(300, 3) - 0.1, torch.rand(100, 3) + 0.1])
    report = measure_continuity(g, z0, z1)
    assert report.collapse_share == pytest.approx(0.75)
    assert report.ratio_max == pytest.approx(1, rel=1e-5)  # ReLU is the identity on the positive pairs
