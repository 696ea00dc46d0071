"""exactline's margins at breakpoints come from the interpolated outputs of the propagation, not a forward pass
per breakpoint: checked against plain float64 forward passes of the torch module at every breakpoint (the old
path), within the a priori bounds, on random networks, intervals other than [0, 1] and a zoo problem."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gcert.line as line_mod
from gcert.bounds import error_bounds, interpolation_bounds
from gcert.errors import GcertError
from gcert.line import analyse_line, line_outcome
from gcert.lowering import lower
from gcert.problem import Problem
from gcert.regions import Segment
from gcert.runner import confirm_witness
from gcert.spec import Spec
from tests.test_exact import make_problem, pwl_network


def _reference_margins(problem: Problem, t: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(problem.composed()).double()
    with torch.no_grad():
        return problem.spec.margin(ref(t.reshape(-1, 1)))


CASES = [(seed, scale, lo, hi) for seed in range(8) for scale, lo, hi in
         [(1.0, 0.0, 1.0), (3.0, 0.1, 0.7), (0.3, -2.5, 4.0)]]


@pytest.mark.parametrize(("seed", "scale", "lo", "hi"), CASES)
def test_interpolated_margins_match_forward_passes_within_their_bound(seed, scale, lo, hi):
    problem = make_problem(pwl_network(seed), seed, scale)
    lowered = lower(problem.composed(), (1,))
    line = analyse_line(lowered, problem.spec, lo, hi)
    assert float(line.t[0]) == lo and float(line.t[-1]) == hi and bool((line.t[1:] >= line.t[:-1]).all())
    direct = _reference_margins(problem, line.t)
    lo_t, hi_t = torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)
    ref_bound = float(error_bounds(lowered, lo_t, hi_t).rows(lowered, problem.spec.C, problem.spec.d).max())
    # at the stored breakpoints (the rounding of each stored input counted too)
    located = float(interpolation_bounds(lowered, lo_t, hi_t, at_stored_inputs=True).rows(
        lowered, problem.spec.C, problem.spec.d).max())
    assert float((line.margins - direct).abs().max()) <= located + ref_bound
    assert located >= line.rounding >= ref_bound * 0.5  # of the forward pass's order, not zero
    # The verdict the old path (a forward pass at every breakpoint) would give, and the share by its signs.
    old_min = float(direct.min())
    old = "certified" if old_min > line.pad else "unknown" if old_min > 0 else "falsified"
    new = "certified" if line.min_margin > line.pad else "unknown" if line.min_margin > 0 else "falsified"
    assert new == old or abs(old_min) <= 2 * line.pad
    lengths = line.t[1:] - line.t[:-1]
    mids = _reference_margins(problem, (line.t[:-1] + line.t[1:]) / 2)
    old_share = float((lengths * (mids > 0)).sum() / (hi - lo))
    assert line.share == pytest.approx(old_share, abs=1e-9)
    assert line.checked >= min(line.t.numel(), 2)


@pytest.mark.parametrize("seed", range(4))
def test_falsified_witness_is_a_rechecked_point(seed):
    problem = make_problem(pwl_network(seed), seed, 3.0)
    lowered = problem.lowered()
    line = analyse_line(lowered, problem.spec, 0.0, 1.0)
    out = line_outcome(line, problem, lowered)
    if out.verdict != "falsified":
        pytest.skip("this case holds")
    assert confirm_witness(problem, out.witness_t) is not None
    assert float(_reference_margins(problem, out.witness_t)[0]) <= 0


def test_interpolation_bound_grows_with_the_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    lowered = lower(net.eval(), (1,))
    C, d = torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    small = interpolation_bounds(lowered, torch.tensor([0.0]).double(), torch.tensor([1.0]).double())
    big = interpolation_bounds(lowered, torch.tensor([-1e6]).double(), torch.tensor([1e6]).double())
    assert float(big.rows(lowered, C, d).max()) > 1e5 * float(small.rows(lowered, C, d).max()) > 0


def test_a_wrong_interpolation_is_caught_not_certified(monkeypatch):
    problem = make_problem(pwl_network(0), 0, 1.0)
    lowered = problem.lowered()
    real = line_mod.propagate

    def corrupt(*args, **kwargs):
        pieces = real(*args, **kwargs)
        pieces.values[lowered.output] = pieces.values[lowered.output] + 1e-3  # a bug the check must see
        return pieces

    monkeypatch.setattr(line_mod, "propagate", corrupt)
    with pytest.raises(GcertError, match="beyond their error bound"):
        analyse_line(lowered, problem.spec, 0.0, 1.0)


def test_zoo_digits_rotate_matches_forward_passes_at_every_breakpoint():
    from gcert.runner import Context, RunConfig

    ctx = Context(RunConfig(mutations=("rotate",), certifiers=("exactline",), limit=2))
    for task in ctx.tasks()[-2:]:
        problem, _ = ctx.problem(task)
        lowered = problem.lowered()
        line = analyse_line(lowered, problem.spec, 0.0, 1.0)
        direct = problem.spec.margin(line_mod.forward_chunked(lowered, line.t.reshape(-1, 1)))
        lo_t, hi_t = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        ref_bound = float(error_bounds(lowered, lo_t, hi_t).rows(lowered, problem.spec.C, problem.spec.d).max())
        assert float((line.margins - direct).abs().max()) <= line.rounding + ref_bound
        assert line.pieces > 1


def test_float32_unrepresentable_ends_stay_exact():
    net = pwl_network(0)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 6, 6, generator=gen)
    problem = Problem(net.eval(), nn.Identity(), Segment(x0, x0 + torch.randn(1, 6, 6, generator=gen)),
                      Spec.top1(0, 4), {"delta": 1.0})
    line = analyse_line(problem.lowered(), problem.spec, 0.1, 0.3)  # neither is a float32
    assert float(line.t[0]) == 0.1 and float(line.t[-1]) == 0.3


@pytest.mark.parametrize("seed", range(4))
def test_interpolation_bounds_contain_the_forward_pass_bounds(seed):
    problem = make_problem(pwl_network(seed), seed, 1.0)
    lowered = problem.lowered()
    lo, hi = torch.tensor([-0.5], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    direct = error_bounds(lowered, lo, hi)
    for located in (False, True):
        interp = interpolation_bounds(lowered, lo, hi, at_stored_inputs=located)
        for k in range(len(lowered.nodes)):
            assert bool((interp.error[k] >= direct.error[k]).all()), k  # the gap check relies on it
