"""``marabou`` against oracles that share no code with it: gcert's exactline (exact on one-dimensional regions)
and dense sampling, on random piecewise-linear networks, regions beyond [0, 1], several-row clauses and a zoo
problem; every falsified answer carries a witness the host re-checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gcert.problem import Problem
from gcert.regions import Box, Segment
from gcert.spec import Spec
from gcert.testing import make_registry
from gcert.timeouts import TaskTimeout, time_limit
from gcert.witness import apply_outcome
from gcert_marabou import plugin


def _net(seed: int, n_in: int, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(n_in, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.1) if seed % 3 == 0 else nn.ReLU(),
              nn.Linear(8, k)]
    return nn.Sequential(*layers).eval()


def _decide(name: str, problem: Problem) -> str:
    from gcert.certificate import Certificate

    registry = make_registry(plugin)
    certifier = registry.certifier(name)
    outcome = certifier.certify(problem, certifier.parse_options())
    cert = Certificate(input="x", mutation="m", delta=0.0, certifier=name, guarantee=certifier.guarantee,
                       verdict="unknown")
    apply_outcome(cert, outcome, problem, certifier.guarantee)
    assert cert.error is None, cert.error
    if cert.verdict == "falsified":
        assert cert.witness is not None and cert.witness.margin <= 0
    return cert.verdict


def _sampled_min(problem: Problem, n: int = 20_000) -> float:
    points = problem.region.sample(n, torch.Generator().manual_seed(0))
    points = torch.cat([points, problem.region.lower.reshape(1, -1), problem.region.upper.reshape(1, -1)])
    return float(problem.margins(points).min())


@pytest.mark.parametrize("seed", range(12))
def test_marabou_and_exactline_agree_on_random_segments(marabou, seed):
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(4, generator=gen)
    end = start + 2.0 * torch.randn(4, generator=gen)
    net = _net(seed, 4)
    label = int(net(start.reshape(1, -1)).argmax())
    problem = Problem(net, nn.Identity(), Segment(start, end), Spec.top1(label, 3))
    assert _decide("marabou", problem) == _decide("exactline", problem)


@pytest.mark.parametrize("seed", range(6))
def test_marabou_on_boxes_beyond_the_unit_interval_agrees_with_sampling(marabou, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    center = torch.randn(3, generator=gen) * 5
    width = 0.05 + 0.5 * (seed % 3)
    net = _net(seed, 3)
    label = int(net(center.reshape(1, -1)).argmax())
    problem = Problem(net, nn.Identity(), Box(center - width, center + width), Spec.top1(label, 3))
    verdict = _decide("marabou", problem)
    sampled = _sampled_min(problem)
    if sampled <= 0:
        assert verdict == "falsified"  # a complete certifier finds what sampling found
    else:
        assert verdict in ("certified", "falsified")  # falsified only with a re-checked witness (in _decide)


def test_several_row_clauses_and_general_rows(marabou):
    """Unsafe set (y0 - y1 <= 0 and y0 - y2 <= 0.5) or (0.5 y2 - y1 + 1 <= 0): a VNN-LIB-style spec."""
    for seed in range(4):
        net = _net(seed, 1)
        C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, -1.0, 0.5]], dtype=torch.float64)
        d = torch.tensor([0.0, -0.5, 1.0], dtype=torch.float64)
        spec = Spec(C, d, clauses=((0, 1), (2,)))
        problem = Problem(net, nn.Identity(), Box(torch.tensor([-4.0]), torch.tensor([3.0])), spec)
        assert _decide("marabou", problem) == _decide("exactline", problem)


def test_a_point_that_does_not_recheck_is_unknown_with_the_reason(marabou, monkeypatch):
    net = _net(1, 1)
    problem = Problem(net, nn.Identity(), Box(torch.tensor([-50.0]), torch.tensor([50.0])), Spec.top1(0, 3))
    assert _decide("exactline", problem) == "falsified"
    monkeypatch.setattr(plugin, "check_witness", lambda p, t: (None, "the spec holds there, by a margin of 1e-12"))
    certifier = plugin.MarabouCertifier()
    outcome = certifier.certify(problem, certifier.parse_options())
    assert outcome.verdict == "unknown" and outcome.witness_t is None
    assert outcome.details["reason"] == ("Marabou's point does not re-check with a plain forward pass: the spec "
                                         "holds there, by a margin of 1e-12")


def test_queries_over_max_variables_are_unknown_before_solving(marabou):
    net = _net(0, 4)
    problem = Problem(net, nn.Identity(), Segment(torch.zeros(4), torch.ones(4)), Spec.top1(0, 3))
    certifier = plugin.MarabouCertifier()
    outcome = certifier.certify(problem, certifier.parse_options({"max_variables": "10"}))
    assert outcome.verdict == "unknown" and outcome.details["reason"].startswith("Marabou's query has ")
    assert "over marabou.max_variables=10" in outcome.details["reason"]


def test_the_task_limit_stops_marabou(marabou):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 10)).eval()
    center = torch.zeros(6)
    label = int(net(center.reshape(1, -1)).argmax())
    problem = Problem(net, nn.Identity(), Box(center - 1.0, center + 1.0), Spec.top1(label, 10))
    certifier = plugin.MarabouCertifier()
    import time

    start = time.monotonic()
    with pytest.raises(TaskTimeout), time_limit(1.0):
        outcome = certifier.certify(problem, certifier.parse_options())
        if outcome.verdict != "unknown":  # solved within a second: not the case this test is about
            pytest.skip("Marabou solved the query within the limit")
    assert time.monotonic() - start < 20


@pytest.mark.slow
def test_marabou_and_exactline_agree_on_a_zoo_problem(marabou):
    from gcert.runner import Context, RunConfig

    ctx = Context(RunConfig(mutations=("shapes-rotate",), certifiers=("exactline",), limit=1, deltas=(15.0,)))
    problem, _ = ctx.problem(ctx.tasks()[0])
    assert _decide("marabou", problem) == _decide("exactline", problem)
