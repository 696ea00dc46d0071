"""The lowering, exactline and genprover, checked against oracles that share none of their code:
plain float64 forward passes of the torch module, dense sampling along the segment, and each other."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gcert.errors import GcertError, UnsupportedOperatorError
from gcert.line import analyse_line
from gcert.lowering import lower
from gcert.problem import Problem
from gcert.regions import LpBall, Segment
from gcert.runner import confirm_witness
from gcert.spec import Spec
from gcert_plugins.exactline import ExactLine
from gcert_plugins.genprover import GenProver

EXACT, GENPROVER = ExactLine(), GenProver()


class Residual(nn.Module):
    """Exercises residual sums, concatenation, constant arithmetic and functional ops."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = act
        self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Linear(2 * 12 * 12, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        h = h + 0.5 * torch.relu(x - 0.25)  # broadcast 1 -> 2 channels through a constant-free residual
        h = torch.cat([h, torch.clamp(1 - x, min=0.1)], dim=1)
        h = self.act(self.up(h))
        return self.head(h.flatten(1)) / 2


def pwl_network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    kind = seed % 4
    if kind == 0:
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 12), nn.LeakyReLU(0.2),
                             nn.Linear(12, 4))
    if kind == 1:
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3).eval(), nn.ReLU(),
                             nn.MaxPool2d(2, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    if kind == 2:
        return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Hardtanh(-0.3, 0.4), nn.AvgPool2d(2), nn.Flatten(),
                             nn.Linear(3 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 4))
    return Residual(nn.ReLU())


def smooth_network(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    act = [nn.Sigmoid(), nn.Tanh()][seed % 2]
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 10), act, nn.Linear(10, 3))


def make_problem(net: nn.Module, seed: int, scale: float) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, 6, 6, generator=gen)
    x1 = x0 + scale * torch.randn(1, 6, 6, generator=gen)
    with torch.no_grad():
        label = int(net.eval()(x0[None]).argmax())
    k = int(net(x0[None]).shape[1])
    return Problem(net.eval(), nn.Identity(), Segment(x0, x1), Spec.top1(label, k), {"delta": 2.0})


def reference(problem: Problem) -> nn.Module:
    return copy.deepcopy(problem.composed()).double()


def sampled(problem: Problem, n: int = 100_001) -> tuple[torch.Tensor, torch.Tensor]:
    ts = torch.linspace(0, 1, n, dtype=torch.float64).reshape(-1, 1)
    with torch.no_grad():
        return ts, problem.spec.margin(reference(problem)(ts))


@pytest.mark.parametrize("seed", range(8))
def test_lowered_ops_compute_the_module(seed):
    net = pwl_network(seed) if seed < 4 else smooth_network(seed)
    lowered = lower(net.eval(), (1, 6, 6))
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(lowered.forward(x), copy.deepcopy(net).double()(x), atol=1e-12, rtol=0)
    assert lowered.piecewise_linear == (seed < 4)


def test_unsupported_op_is_named_with_who_handles_it():
    class Weird(nn.Module):
        def forward(self, x):
            return x * x

    with pytest.raises(UnsupportedOperatorError, match="unsupported operator 'mul'.*product of two values"):
        lower(Weird(), (3,))
    problem = make_problem(smooth_network(1), 0, 1.0)
    handlers = "certifiers that handle it: deeppoly, genprover, interval"
    with pytest.raises(UnsupportedOperatorError, match=f"'tanh'.*{handlers}"):
        EXACT.prepare(problem)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_exactline_agrees_with_dense_sampling_and_plain_forward_passes(seed, scale):
    problem = make_problem(pwl_network(seed), seed, scale)
    out = EXACT.certify(problem, EXACT.parse_options())
    ts, margins = sampled(problem)
    # verdict: sampling decides wherever its margin is clearly away from 0
    if float(margins.min()) < -1e-6:
        assert out.verdict == "falsified"
    if out.verdict == "certified":
        assert float(margins.min()) > 0
    assert out.margin_lower <= float(margins.min()) + 1e-9  # the exact minimum is at most any sample
    # the exact share against 100k points
    assert abs(out.fraction[0] - float((margins > 0).double().mean())) <= 1e-3
    # every piece is affine: the midpoint value is the mean of the endpoint values
    line = analyse_line(lower(problem.composed(), (1,)), problem.spec, 0.0, 1.0)
    ref = reference(problem)
    with torch.no_grad():
        ya, yb = ref(line.t[:-1].reshape(-1, 1)), ref(line.t[1:].reshape(-1, 1))
        ym = ref(((line.t[:-1] + line.t[1:]) / 2).reshape(-1, 1))
    assert torch.allclose(ym, (ya + yb) / 2, atol=1e-9 * (1 + float(ya.abs().max())), rtol=0)
    if out.verdict == "falsified":
        assert confirm_witness(problem, out.witness_t) is not None or out.margin_lower > -1e-6
        first = out.details["first_violation_t"]
        assert bool((margins[ts[:, 0] < first - 1e-9] > 0).all())  # nothing fails before the first violation
        assert out.details["max_delta_supremum"] == pytest.approx(2.0 * first)
        assert out.max_delta <= 2.0 * first  # a strength that is itself certified, below the supremum
    else:
        assert out.max_delta == 2.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), scale=st.sampled_from([0.5, 2.0, 6.0]))
def test_genprover_bounds_bracket_the_sampled_share(seed, scale):
    problem = make_problem(smooth_network(seed), seed, scale)
    out = GENPROVER.certify(problem, GENPROVER.parse_options())
    _, margins = sampled(problem, 20_001)
    share = float((margins > 0).double().mean())
    lo, hi = out.fraction
    assert lo - 1e-3 <= share <= hi + 1e-3  # 1e-3: the grid's own resolution
    assert lo <= hi
    if out.verdict == "certified":
        assert float(margins.min()) > 0
    if out.verdict == "falsified":
        assert confirm_witness(problem, out.witness_t) is not None


@pytest.mark.parametrize("seed", range(4))
def test_genprover_equals_exactline_on_piecewise_linear_networks(seed):
    problem = make_problem(pwl_network(seed), seed, 3.0)
    exact = EXACT.certify(problem, EXACT.parse_options())
    quant = GENPROVER.certify(problem, GENPROVER.parse_options())
    assert quant.fraction == exact.fraction and quant.verdict == exact.verdict


def test_genprover_merging_budget_stays_sound():
    problem = make_problem(smooth_network(3), 3, 6.0)
    tight = GENPROVER.certify(problem, GENPROVER.parse_options())
    merged = GENPROVER.certify(problem, GENPROVER.parse_options({"max_cells": 2, "refinements": 0}))
    _, margins = sampled(problem, 20_001)
    share = float((margins > 0).double().mean())
    assert merged.fraction[0] - 1e-3 <= share <= merged.fraction[1] + 1e-3
    assert merged.fraction[1] - merged.fraction[0] >= tight.fraction[1] - tight.fraction[0] - 1e-12


def test_exactline_gives_up_politely_beyond_its_piece_budget():
    problem = make_problem(pwl_network(0), 0, 6.0)
    out = EXACT.certify(problem, EXACT.parse_options({"max_pieces": 1}))
    assert out.verdict == "unknown" and "max_pieces" in out.details["reason"]


def test_exactline_refuses_regions_that_are_not_segments():
    problem = Problem(pwl_network(0), nn.Identity(), LpBall(torch.rand(1, 6, 6), 0.1, float("inf")),
                      Spec.top1(0, 4))
    with pytest.raises(GcertError, match="analyses one-dimensional regions; this lp-ball has 36 dimensions"):
        EXACT.prepare(problem)


def test_tolerance_is_exact_for_exactline_and_a_certified_bound_for_interval(tmp_path):
    """`gcert tolerance`: exactline's max_delta is where sampling first fails; interval's is certified."""
    from gcert.certificate import read_certificates
    from gcert.runner import Context, RunConfig, run
    from gcert.testing import BUILTINS_ONLY

    config = RunConfig(mutations=("brightness",), certifiers=("exactline", "interval"), deltas=(3.0,), limit=4,
                       tolerance_steps=8, plugins=BUILTINS_ONLY)
    out = tmp_path / "tol.jsonl"
    ctx = Context(config)
    run(config, out, workers=1, progress=False, context=ctx)
    certs = {(c.input, c.certifier): c for c in read_certificates(out)}
    assert len(certs) == 8
    for (input_id, certifier), cert in certs.items():
        index = ctx.data.ids.index(input_id)
        problem, _ = ctx.problem(ctx.tasks()[0].__class__(index, input_id, "brightness", 3.0, certifier))
        ts = torch.linspace(0, 1, 30_001, dtype=torch.float64).reshape(-1, 1)
        with torch.no_grad():
            margins = problem.spec.margin(copy.deepcopy(problem.composed()).double()(ts))
        strengths = 3.0 * ts[:, 0]
        holds_below = bool((margins[strengths < cert.max_delta - 1e-9] > 0).all())
        assert holds_below, (input_id, certifier)  # nothing fails below the reported tolerance
        if certifier == "exactline":
            assert cert.details["tolerance"]["search"] == "reported by the certifier"
            if cert.verdict == "falsified":  # and something fails just above it
                assert bool((margins[(strengths > cert.max_delta) & (strengths < cert.max_delta + 3e-3)] <= 0).any())
        else:
            assert cert.max_delta <= certs[(input_id, "exactline")].max_delta + 1e-9


def test_many_segments_travel_together_with_the_same_breakpoints():
    """The engine carries several segments in one batch; each gets exactly its own pieces."""
    from gcert.pieces import propagate, start

    net = pwl_network(1).double()
    lowered = lower(net, (1, 6, 6))
    gen = torch.Generator().manual_seed(5)
    starts = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    ends = starts + 2 * torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    together = propagate(lowered, start(lowered, starts, ends))
    for s in range(4):
        alone = propagate(lowered, start(lowered, starts[s : s + 1], ends[s : s + 1]))
        mine = together.seg == s
        assert torch.equal(together.t[mine], alone.t)
        assert torch.allclose(together.values[lowered.output][mine], alone.values[lowered.output], atol=1e-12)


def test_exactline_bounds_its_memory_and_says_how_to_raise_it():
    problem = make_problem(pwl_network(0), 0, 3.0)
    out = EXACT.certify(problem, EXACT.parse_options({"max_memory_gb": "1e-6"}))
    assert out.verdict == "unknown"
    assert "max_memory_gb=1e-06" in out.details["reason"] and "GB" in out.details["reason"]
    assert EXACT.certify(problem, EXACT.parse_options({})).verdict != "unknown"
    with pytest.raises(GcertError, match="max_memory_gb must be a finite number > 0"):
        EXACT.parse_options({"max_memory_gb": "0"})
