"""The record fields the report plots: exactline's ``margin_curve`` and a bisection's ``piece_bounds``, checked
against dense sampling of a plain float64 copy of the network (an oracle sharing no code with either)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from gcert.line import LineAnalysis, margin_curve
from gcert.problem import Problem
from gcert.regions import Segment
from gcert.spec import Spec
from gcert.splitting import bisect, piece_bounds
from gcert_plugins.deeppoly import DeepPoly
from gcert_plugins.exactline import ExactLine


def _problem(seed: int, scale: float = 0.8) -> Problem:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 12), nn.ReLU(),
                        nn.Linear(12, 4)).eval()
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, 6, 6, generator=gen)
    x1 = x0 + scale * torch.randn(1, 6, 6, generator=gen)
    with torch.no_grad():
        label = int(net(x0[None]).argmax())
    return Problem(net, nn.Identity(), Segment(x0, x1), Spec.top1(label, 4), {"delta": 1.0})


def _dense(problem: Problem, n: int = 20_001) -> tuple[torch.Tensor, torch.Tensor]:
    ts = torch.linspace(0, 1, n, dtype=torch.float64).reshape(-1, 1)
    with torch.no_grad():
        return ts.reshape(-1), problem.spec.margin(copy.deepcopy(problem.composed()).double()(ts))


@pytest.mark.parametrize("seed", range(4))
def test_margin_curve_matches_dense_sampling(seed):
    problem = _problem(seed)
    outcome = ExactLine().certify(problem, ExactLine().parse_options())
    curve = outcome.details["margin_curve"]
    json.dumps(curve)  # a record field: plain JSON
    t, m = torch.tensor(curve["t"], dtype=torch.float64), torch.tensor(curve["margin"], dtype=torch.float64)
    assert curve["exact"] and t[0] == 0 and t[-1] == 1 and bool((t[1:] >= t[:-1]).all())
    assert len(t) == outcome.pieces + 1
    ts, dense = _dense(problem)
    with torch.no_grad():  # at each breakpoint, the value a plain forward pass gives
        direct = problem.spec.margin(copy.deepcopy(problem.composed()).double()(t.reshape(-1, 1)))
    assert torch.allclose(m, direct, rtol=1e-7, atol=1e-7)
    # every spec row is affine between breakpoints and the margin is their minimum, so it is concave there:
    # never below the chord through the breakpoints, and its minimum is a breakpoint's
    chord = torch.from_numpy(np.interp(ts.numpy(), t.numpy(), m.numpy()))
    assert bool((dense >= chord - 1e-6).all())
    assert float(m.min()) <= float(dense.min()) + 1e-6


def test_margin_curve_subsampled_keeps_both_ends_the_minimum_and_every_sign_change():
    n = 5000
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    m = torch.sin(40 * t) + 0.3  # 13 sign changes
    m[3217] = -5.0
    line = LineAnalysis(t, m, m[:-1] > 0, 0.0, 0.0)
    curve = margin_curve(line, cap=200)
    assert not curve["exact"] and len(curve["t"]) <= 200
    kept = set(curve["t"])
    assert curve["t"][0] == 0.0 and curve["t"][-1] == 1.0 and min(curve["margin"]) == -5.0
    flips = ((m[:-1] > 0) != (m[1:] > 0)).nonzero().reshape(-1).tolist()
    assert len(flips) >= 13
    for i in flips:
        assert float(f"{float(t[i]):.9g}") in kept and float(f"{float(t[i + 1]):.9g}") in kept


@pytest.mark.parametrize("seed", range(4))
def test_piece_bounds_of_deeppoly_are_sound_on_each_piece(seed):
    problem = _problem(seed, scale=1.5)
    outcome = DeepPoly().certify(problem, DeepPoly().parse_options({"splits": 16, "cheap_first": False}))
    pieces = outcome.details.get("piece_bounds")
    assert pieces, outcome
    json.dumps(pieces)
    ts, dense = _dense(problem)
    assert pieces[0][0] == 0.0 and pieces[-1][1] == 1.0
    for (a, b, bound), nxt in zip(pieces, [*pieces[1:], None], strict=True):
        if nxt is not None:
            assert nxt[0] == b  # the pieces tile the segment
        inside = dense[(ts >= a) & (ts <= b)]
        assert bound <= float(inside.min()) + 1e-9


def test_piece_bounds_cap_merges_neighbours_keeping_the_smaller_bound():
    def lower(a: float, b: float) -> float:
        return min(abs(a - 0.3), abs(b - 0.3)) - 0.5 * (b - a) - 1e-3 if not a <= 0.3 <= b else -(b - a)

    result = bisect(lower, lambda ts: (ts - 0.3).abs().reshape(-1) + 1e-9, 0.0, 1.0, 64)
    full = piece_bounds([(m, a, b) for a, b, m in result.piece_bounds], cap=10_000)
    capped = piece_bounds([(m, a, b) for a, b, m in full], cap=5)
    assert len(capped) <= 5 and capped[0][0] == 0.0 and capped[-1][1] == 1.0
    for a, b, bound in capped:
        assert bound == min(m for x, y, m in full if a <= x and y <= b)

