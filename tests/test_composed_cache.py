"""The lowering of f o G shared between tasks: the same function and verdicts as lowering each composition
whole, and never reused for other modules or modified weights."""

from __future__ import annotations

import torch
from torch import nn

from gcert.composed_cache import inner_lowering, lowered_composition
from gcert.lowering import lower
from gcert.problem import ComposedNetwork, Problem
from gcert.regions import Embed, Segment
from gcert.runner import Context, RunConfig
from gcert.spec import Spec
from gcert_plugins.exactline import ExactLine


def _nets(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    gen = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 16), nn.Unflatten(1, (1, 4, 4)), nn.ReLU())
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    return gen.eval(), net.eval()


def test_assembled_lowering_computes_the_whole_composition():
    gen, net = _nets(0)
    for dim in (1, 2):
        embed = Embed(torch.randn(3, dim, dtype=torch.float64), torch.randn(3, dtype=torch.float64), (3,))
        fast = lowered_composition(embed, gen, net, dim)
        whole = lower(ComposedNetwork(embed, gen, net).eval(), (dim,))
        t = torch.randn(7, dim, dtype=torch.float64)
        assert torch.allclose(fast.forward(t), whole.forward(t), atol=1e-12, rtol=0)


def test_cache_is_reused_only_for_the_same_unmodified_modules():
    gen, net = _nets(1)
    first = inner_lowering(gen, net, (3,))
    assert inner_lowering(gen, net, (3,)) is first
    _, other_net = _nets(2)
    assert inner_lowering(gen, other_net, (3,)) is not first
    c = torch.randn(2, 3, dtype=torch.float64)
    before = first.forward(c)
    with torch.no_grad():
        net[3].bias.add_(1.0)  # an in-place edit must not hit the stale lowering
    edited = inner_lowering(gen, net, (3,))
    assert edited is not first
    assert torch.allclose(edited.forward(c), before + 1.0, atol=1e-12)
    net[3].bias = nn.Parameter(torch.zeros(3))  # a new tensor, too
    assert inner_lowering(gen, net, (3,)) is not edited


def test_zoo_tasks_answer_as_with_a_fresh_lowering():
    ctx = Context(RunConfig(mutations=("rotate", "scale"), certifiers=("exactline",), limit=2))
    exact = ExactLine()
    for task in ctx.tasks():
        problem, _ = ctx.problem(task)
        fresh = Problem(problem.network, problem.generator, problem.region, problem.spec, problem.meta)
        fresh._lowered = lower(fresh.composed(), (problem.region.dim,))
        a, b = exact.certify(problem, exact.parse_options()), exact.certify(fresh, exact.parse_options())
        assert (a.verdict, a.pieces) == (b.verdict, b.pieces), task
        assert abs(a.margin_upper - b.margin_upper) <= 1e-9
        assert abs(a.max_delta - b.max_delta) <= 1e-9 * (1 + abs(b.max_delta))


def test_other_regions_lower_whole():
    gen, net = _nets(3)
    region = Segment(torch.zeros(3), torch.ones(3))
    problem = Problem(net, gen, region, Spec.top1(0, 3), {})
    assert problem.lowered().forward(torch.zeros(1, 1, dtype=torch.float64)).shape == (1, 3)
    assert lowered_composition(nn.Identity(), gen, net, 1) is None
