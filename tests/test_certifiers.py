"""Soundness of ``interval`` against dense sampling (an oracle sharing none of its code), and ``sampling``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gcert.errors import UnsupportedOperatorError
from gcert.problem import Problem
from gcert.regions import Box, LpBall, Segment
from gcert.runner import confirm_witness
from gcert.spec import Spec
from gcert.testing import make_registry, random_network, random_region
from gcert_plugins.interval import output_bounds

REG = make_registry()
INTERVAL, SAMPLING = REG.certifier("interval"), REG.certifier("sampling")

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), conv=st.booleans(), kind=st.sampled_from(["segment", "box", "linf", "l2"]))
def test_interval_bounds_contain_every_sampled_output(seed, conv, kind):
    gen = torch.Generator().manual_seed(seed)
    net = random_network(seed, conv)
    region = random_region(kind, gen)
    problem = Problem(net, nn.Identity(), region, Spec.top1(0, 4))
    bounds = output_bounds(problem.composed(), region.lower[None], region.upper[None])
    pts = torch.cat([region.sample(3000, gen), region.lower[None], region.upper[None]])
    with torch.no_grad():
        y = problem.composed().double()(pts.double())
    assert (y >= bounds.lo).all() and (y <= bounds.hi).all()
    outcome = INTERVAL.certify(problem, INTERVAL.parse_options())
    sampled_min = float(problem.spec.margin(y.float()).min())
    assert outcome.margin_lower is None or outcome.margin_lower <= sampled_min + 1e-5
    if outcome.verdict == "certified":
        assert sampled_min > 0
    if outcome.verdict == "falsified":
        assert confirm_witness(problem, outcome.witness_t) is not None


def test_interval_is_exact_on_a_single_affine_layer():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5]]))
        lin.bias.copy_(torch.tensor([0.1, 0.0]))
    b = output_bounds(lin, torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    bias = lin.bias.detach().double()  # the float32 value of 0.1, exactly
    exact_lo = torch.tensor([[-2.0, 0.0]], dtype=torch.float64) + bias
    exact_hi = torch.tensor([[1.0, 1.0]], dtype=torch.float64) + bias
    assert torch.allclose(b.lo, exact_lo, atol=1e-12) and torch.allclose(b.hi, exact_hi, atol=1e-12)
    assert (b.lo <= exact_lo).all() and (b.hi >= exact_hi).all()  # rounding padding points outward


def test_interval_certifies_a_robust_point_and_falsifies_a_broken_one():
    net = nn.Linear(1, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.bias.zero_()
    robust = Problem(net, nn.Identity(), Segment(torch.tensor([0.5]), torch.tensor([1.0])), Spec.top1(0, 2))
    assert INTERVAL.certify(robust, INTERVAL.parse_options()).verdict == "certified"
    broken = Problem(net, nn.Identity(), Segment(torch.tensor([0.5]), torch.tensor([-1.0])), Spec.top1(0, 2))
    out = INTERVAL.certify(broken, INTERVAL.parse_options())
    assert out.verdict == "falsified"
    witness = confirm_witness(broken, out.witness_t)
    assert witness is not None and witness.margin <= 0


def test_interval_names_an_unsupported_layer_and_who_handles_it():
    class Weird(nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).real

    problem = Problem(nn.Sequential(nn.Flatten(), Weird()), nn.Identity(),
                      Box(torch.zeros(4), torch.ones(4)), Spec.top1(0, 4))
    with pytest.raises(UnsupportedOperatorError, match="unsupported operator 'fft_fft'.*that handle it: sampling"):
        INTERVAL.prepare(problem)


def test_sampling_finds_a_planted_counterexample_and_never_certifies():
    # The decision flips only in a thin slab near t = 0.731 of the segment.
    class Slab(nn.Module):
        def forward(self, x):
            t = x[:, :1]
            bump = torch.relu(0.01 - (t - 0.731).abs()) * 200
            return torch.cat([torch.ones_like(t), bump], dim=1)

    problem = Problem(Slab(), nn.Identity(), Segment(torch.tensor([0.0]), torch.tensor([1.0])), Spec.top1(0, 2))
    out = SAMPLING.certify(problem, SAMPLING.parse_options())
    assert out.verdict == "falsified"
    assert abs(float(out.witness_t[0]) - 0.731) < 0.01
    assert confirm_witness(problem, out.witness_t) is not None
    safe = Problem(nn.Linear(1, 2), nn.Identity(), Segment(torch.tensor([0.0]), torch.tensor([0.0])),
                   Spec.top1(int(nn.Linear(1, 2)(torch.zeros(1, 1)).argmax()), 2))
    assert SAMPLING.certify(safe, SAMPLING.parse_options()).verdict in ("unknown", "falsified")


def test_sampling_gradient_search_breaks_a_pixel_ball():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.rand(1, 4, 4)
    label = int(net(x[None]).argmax())
    with torch.no_grad():
        margin = float(Spec.top1(label, 2).margin(net(x[None])))
    w = net[1].weight[label] - net[1].weight[1 - label]
    eps = 1.5 * margin / float(w.abs().sum())  # an L-inf ball that holds a counterexample (if unclipped)
    problem = Problem(net, nn.Identity(), LpBall(x, eps, math.inf, clip=None), Spec.top1(label, 2))
    out = SAMPLING.certify(problem, SAMPLING.parse_options({"samples": "16"}))
    assert out.verdict == "falsified" and confirm_witness(problem, out.witness_t) is not None


def test_a_witness_outside_the_region_or_holding_the_spec_is_rejected():
    net = nn.Linear(1, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.bias.zero_()
    problem = Problem(net, nn.Identity(), Segment(torch.tensor([0.5]), torch.tensor([1.0])), Spec.top1(0, 2))
    assert confirm_witness(problem, torch.tensor([0.5])) is None  # inside, but the spec holds there
    assert confirm_witness(problem, torch.tensor([-3.0])) is None  # violates, but outside t in [0, 1]
