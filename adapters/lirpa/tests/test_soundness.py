"""Soundness of crown, alpha-crown and ibp-lirpa against dense sampling, and how they compare with ``interval``."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from gcert.problem import Problem
from gcert.regions import Box, LpBall, Segment
from gcert.runner import confirm_witness
from gcert.spec import Spec
from gcert.testing import make_registry, random_network, random_region
from gcert_lirpa import plugin

pytestmark = pytest.mark.usefixtures("lirpa")

REG = make_registry(plugin)
INTERVAL = REG.certifier("interval")
LIRPA = {name: REG.certifier(name) for name in ("crown", "alpha-crown", "ibp-lirpa")}
# A small budget keeps the suite fast; soundness does not need more. These tests look at auto_LiRPA's own bounds,
# so the early answer every sound certifier tries first (a short attack, an interval pass) is off.
OPTIONS = {"alpha-crown": {"iterations": "5", "cheap_first": "false"}, "crown": {"cheap_first": "false"},
           "ibp-lirpa": {"cheap_first": "false"}}

def sampled_margins(problem: Problem, gen: torch.Generator, n: int = 3000) -> torch.Tensor:
    """Margins at ``n`` random points and the box corners, computed in float64 (the precision of the bounds)."""
    region = problem.region
    pts = torch.cat([region.sample(n, gen), region.lower[None], region.upper[None], region.origin()[None]])
    pts = region.project(pts)
    net = copy.deepcopy(problem.composed()).double()
    with torch.no_grad():
        return problem.spec.margin(net(pts.double()))


def problem_at_label(net: nn.Module, region: Segment | Box | LpBall) -> Problem:
    """The top-1 problem for the class the network gives the region's origin."""
    probe = Problem(net, nn.Identity(), region, Spec.top1(0, 4))
    return Problem(net, nn.Identity(), region, Spec.top1(int(probe.outputs(region.origin()[None]).argmax()), 4))


# gcert.testing.random_network picks the activation by seed % 5 (ReLU, sigmoid, tanh, leaky ReLU, hardtanh) and,
# for CNNs, max- (odd seed) or average-pooling: these seeds cover each activation, and both poolings for ReLU.
NETWORKS = [(0, False), (1, False), (2, False), (3, False), (4, False), (5, True), (10, True), (6, True), (7, True)]
CASES = [(seed, conv, region) for seed, conv in NETWORKS for region in ("segment", "box", "linf", "l2")]


@pytest.mark.parametrize(("seed", "conv", "region_kind"), CASES)
def test_bounds_hold_at_every_sampled_point(seed, conv, region_kind):
    gen = torch.Generator().manual_seed(seed)
    net = random_network(seed, conv)
    region = random_region(region_kind, gen)
    problem = problem_at_label(net, region)
    sampled_min = float(sampled_margins(problem, gen).min())
    for name, certifier in LIRPA.items():
        outcome = certifier.certify(problem, certifier.parse_options(OPTIONS.get(name)))
        # Bounds are float64 without rounding padding: allow float64 rounding, nothing more.
        assert outcome.margin_lower <= sampled_min + 1e-9, (name, outcome.margin_lower, sampled_min)
        if outcome.verdict == "certified":
            assert sampled_min > 0
        if outcome.verdict == "falsified":
            assert confirm_witness(problem, outcome.witness_t) is not None
        if region_kind == "l2" and name != "ibp-lirpa":  # ibp-lirpa bounds the ball's box only (plugin.is_box)
            assert "l2-ball" not in outcome.details.get("margin_lower_over", {})  # 0.3 is unsound over balls: box only


@pytest.mark.parametrize(("seed", "conv"), [(0, False), (7, True), (6, True)])  # ReLU MLP, tanh and sigmoid CNNs
def test_crown_is_nearly_exact_on_a_tiny_box(seed, conv):
    # Soundness alone would pass with a bound of -inf; on a tiny region CROWN must also be close to the truth,
    # which pins the spec wiring (C, d, label) and the input box.
    gen = torch.Generator().manual_seed(seed)
    net = random_network(seed, conv)
    region = random_region("box", gen, size=1e-3)
    problem = problem_at_label(net, region)
    sampled_min = float(sampled_margins(problem, gen).min())
    crown = LIRPA["crown"].certify(problem, LIRPA["crown"].parse_options())
    assert sampled_min - 2e-3 < crown.margin_lower <= sampled_min + 1e-9


@pytest.mark.parametrize("seed", range(0, 40, 5))  # seed % 5 == 0: ReLU networks
def test_crown_is_never_looser_than_interval_on_relu_networks(seed):
    # One bound over the whole region (no splitting of t), as the claim is about the relaxations.
    gen = torch.Generator().manual_seed(seed)
    net = random_network(seed, conv=bool(seed % 2))
    region = random_region(["segment", "box", "linf"][seed % 3], gen, size=2.0)
    problem = Problem(net, nn.Identity(), region, Spec.top1(seed % 4, 4))
    whole = {"splits": "1", "cheap_first": "false"}  # the bounds themselves, not an early answer
    interval = INTERVAL.certify(problem, INTERVAL.parse_options(whole)).margin_lower
    crown = LIRPA["crown"].certify(problem, LIRPA["crown"].parse_options(whole)).margin_lower
    ibp = LIRPA["ibp-lirpa"].certify(problem, LIRPA["ibp-lirpa"].parse_options(whole)).margin_lower
    alpha = LIRPA["alpha-crown"].certify(problem, LIRPA["alpha-crown"].parse_options(whole | OPTIONS["alpha-crown"]))
    assert crown >= interval - 1e-6
    assert alpha.margin_lower >= crown - 1e-9
    # auto_LiRPA's IBP merges the spec into the last linear layer, gcert's applies it to the output box:
    # never looser, and on these networks usually tighter.
    assert ibp >= interval - 1e-6


def test_plain_crown_can_be_looser_than_ibp_so_crown_takes_both(lirpa):
    # x in [-1, 2] -> relu -> identity: the adaptive relaxation picks slope 1 (u > -l), so plain CROWN
    # bounds relu(x) below by x >= -1 while IBP gives 0. Hence "CROWN is never looser than IBP" is false,
    # and the crown certifier returns the larger of the two bounds.
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        net[2].bias.copy_(torch.tensor([0.0, -0.5]))
    problem = Problem(net, nn.Identity(), Box(torch.tensor([-1.0]), torch.tensor([2.0])), Spec.top1(0, 2))
    bounded = plugin.bounded_module(problem)
    x = next(iter(plugin.perturbations(problem, lirpa)))[1]
    C = problem.spec.C.double()[None]
    plain = float(plugin.compute(bounded, x, C, "CROWN")[0])  # relu(x) + 0.5 >= x + 0.5 >= -0.5
    ibp = float(plugin.compute(bounded, x, C, "IBP")[0])  # relu(x) + 0.5 >= 0.5
    assert plain == pytest.approx(-0.5) and ibp == pytest.approx(0.5)
    outcome = LIRPA["crown"].certify(problem, LIRPA["crown"].parse_options())
    assert outcome.verdict == "certified" and outcome.margin_lower == pytest.approx(0.5)


def test_a_violated_spec_is_falsified_with_a_confirmed_witness():
    net = nn.Linear(1, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net.bias.zero_()
    problem = Problem(net, nn.Identity(), Segment(torch.tensor([0.5]), torch.tensor([-1.0])), Spec.top1(0, 2))
    for name, certifier in LIRPA.items():
        out = certifier.certify(problem, certifier.parse_options(OPTIONS.get(name)))
        assert out.verdict == "falsified", name
        assert out.margin_lower == pytest.approx(-2.0)  # exact on an affine network: 2 t at t = -1
        witness = confirm_witness(problem, out.witness_t)
        assert witness is not None and witness.margin <= 0


def test_the_bounded_module_is_built_once_per_network_and_not_kept_alive(monkeypatch):
    builds = []
    build = plugin.build
    monkeypatch.setattr(plugin, "build", lambda *a: builds.append(1) or build(*a))
    net = random_network(0, conv=False)
    problem = Problem(net, nn.Identity(), random_region("box", torch.Generator().manual_seed(0)), Spec.top1(0, 4))
    for name in ("crown", "ibp-lirpa", "crown", "alpha-crown"):
        LIRPA[name].certify(problem, LIRPA[name].parse_options(OPTIONS.get(name)))
    assert len(builds) == 1
    network = weakref.ref(problem.composed())
    del problem
    gc.collect()
    assert network() is None  # the cache keeps no strong reference to the network it is keyed by


def test_the_vertex_minimising_crowns_linear_bound_is_tried_as_a_counterexample():
    # margin = x0 - x1 + 0.1 on the box 0.5 +- 0.1: +0.1 at the center and both listed corners, -0.1 at (0.4, 0.6).
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        net.bias.copy_(torch.tensor([0.1, 0.0]))
    problem = Problem(net, nn.Identity(), Box(torch.full((2,), 0.4), torch.full((2,), 0.6)), Spec.top1(0, 2))
    crown = LIRPA["crown"]
    out = crown.certify(problem, crown.parse_options(OPTIONS["crown"]))
    assert out.verdict == "falsified" and out.margin_lower == pytest.approx(-0.1)
    assert out.witness_t.tolist() == pytest.approx([0.4, 0.6])
    assert confirm_witness(problem, out.witness_t) is not None
    assert crown.certify(problem, crown.parse_options({"probes": "0", **OPTIONS["crown"]})).verdict == "unknown"
    alpha = LIRPA["alpha-crown"].certify(problem, LIRPA["alpha-crown"].parse_options({"cheap_first": "false"}))
    assert alpha.verdict == "falsified" and alpha.details["alpha_iterations"] == 0  # no optimisation needed
