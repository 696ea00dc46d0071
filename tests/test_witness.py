"""Counterexamples are never thrown away (issue 18): a witness within rounding of the region's boundary is clamped
in and kept; one truly outside is rejected with the distance; every sound certifier tries the cheap answer first."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gcert.certificate import Certificate
from gcert.contracts import Outcome
from gcert.problem import Problem
from gcert.regions import Box
from gcert.spec import Spec
from gcert.testing import make_registry
from gcert.witness import apply_outcome, check_witness

REGISTRY = make_registry()


def linear_problem() -> Problem:
    """y0 = x0 + x1, y1 = 1.5: label 1 fails where x0 + x1 >= 1.5, i.e. only near the corner (1, 1) of [0, 1]^2."""
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        net.bias.copy_(torch.tensor([0.0, 1.5]))
    lo = torch.tensor([0.1, 0.1], dtype=torch.float64)  # 0.1 is not a float32: rounding moves it outside or in
    return Problem(net.requires_grad_(False), nn.Identity(), Box(lo, torch.ones(2, dtype=torch.float64)),
                   Spec.top1(1, 2))


def test_a_witness_rounded_just_outside_the_region_is_clamped_in_and_kept():
    problem = linear_problem()
    corner = torch.tensor([1.0 + 1.5e-7, 1.0 + 1e-7], dtype=torch.float64)  # float32 rounding, outside by 1.5e-7
    witness, reason = check_witness(problem, corner)
    assert witness is not None, reason
    assert witness.t == [1.0, 1.0] and witness.margin <= 0
    cert = Certificate("x", "vnnlib", 0.0, "sampling", "falsifier", "unknown")
    apply_outcome(cert, Outcome("falsified", witness_t=corner.float()), problem, "falsifier")
    assert cert.verdict == "falsified" and cert.error is None


def test_a_witness_truly_outside_is_rejected_with_the_distance():
    problem = linear_problem()
    cert = Certificate("x", "vnnlib", 0.0, "sampling", "falsifier", "unknown")
    apply_outcome(cert, Outcome("falsified", witness_t=torch.tensor([1.25, 1.0])), problem, "falsifier")
    assert cert.verdict == "unknown"
    assert "outside the region by 0.25" in cert.error


def test_a_witness_where_the_spec_holds_is_rejected_with_the_margin():
    problem = linear_problem()
    witness, reason = check_witness(problem, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert witness is None and "the spec holds there, by a margin of 0.5" in reason


def test_the_point_is_rounded_into_the_region_in_the_networks_precision():
    problem = linear_problem()
    # x0 = 0.1 - 1e-9 is outside [0.1, 1] by rounding only: clamped to 0.1, then float32(0.1) would be 0.10000000149
    # (inside) -- and a float64 point just below 1.0 must not round up past it
    witness, reason = check_witness(problem, torch.tensor([1.0 - 1e-12, 1.0], dtype=torch.float64))
    assert witness is not None and witness.t[0] <= 1.0, reason
    thin = Problem(problem.network, nn.Identity(), Box(torch.tensor([0.1, 1.0], dtype=torch.float64),
                                                       torch.tensor([0.1, 1.0], dtype=torch.float64)), problem.spec)
    witness, reason = check_witness(thin, torch.tensor([0.1, 1.0], dtype=torch.float64))
    assert witness is None and "no point of the network's precision" in reason  # no float32 equals 0.1


@pytest.mark.parametrize("name", ["interval", "deeppoly"])
def test_sound_certifiers_try_the_cheap_answer_first(name):
    problem = linear_problem()
    certifier = REGISTRY.certifier(name)
    out = certifier.certify(problem, certifier.parse_options({}))
    assert out.verdict == "falsified" and out.details["decided_by"] == "cheap attack"
    assert out.margin_lower is not None and out.margin_lower <= -0.5 + 1e-9  # the interval pass's bound
    assert check_witness(problem, out.witness_t)[0] is not None
    # and certify by one interval pass when that suffices, before any back-substitution
    easy = Problem(problem.network, nn.Identity(), Box(torch.zeros(2), torch.full((2,), 0.5)), Spec.top1(1, 2))
    out = certifier.certify(easy, certifier.parse_options({}))
    assert out.verdict == "certified" and out.details["decided_by"] == "interval pass"
    off = certifier.certify(easy, certifier.parse_options({"cheap_first": "false"}))
    assert off.verdict == "certified" and "decided_by" not in off.details
    assert math.isfinite(off.margin_lower)
