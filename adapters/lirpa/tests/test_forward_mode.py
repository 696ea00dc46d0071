"""crown's forward mode (``crown.mode=forward``, and ``auto`` on large layers over segments): the rewrites it
needs compute the same function, and its bounds hold at densely sampled points."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gcert.errors import GcertError
from gcert.problem import Problem
from gcert.regions import Segment
from gcert.spec import Spec
from gcert.testing import make_registry, random_network, random_region
from gcert_lirpa import plugin
from gcert_lirpa.rewrite import PatchConvTranspose2d, for_lirpa

pytestmark = pytest.mark.usefixtures("lirpa")

CROWN = make_registry(plugin).certifier("crown")


class SegmentGenerator(nn.Module):
    """What the weather generators hold: a strength broadcast by ``expand``, a stride-2 transposed convolution,
    a leaky ReLU and a product with a constant, then a small classifier of 4 classes."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.head = nn.Sequential(nn.Conv2d(4, 3, 1), nn.LeakyReLU(0.2), nn.Conv2d(3, 2, 1))
        self.cls = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        a = c[:, :64].reshape(-1, 1, 8, 8)
        d = c[:, 64:].reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8)
        f = torch.relu(self.up(torch.relu(self.enc(torch.cat([a, d * 0.5], 1)))))
        return self.cls(self.head(torch.cat([f, d], 1)))


def test_the_forward_rewrites_compute_the_same_function():
    m = nn.ConvTranspose2d(3, 5, 2, stride=2).double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    assert torch.allclose(PatchConvTranspose2d(m, (4, 6))(x), m(x), atol=1e-12)
    net = SegmentGenerator(0).double()
    c = torch.rand(3, 65, dtype=torch.float64)
    graph = for_lirpa(net, c[:1], forward=True)
    kinds = {type(m).__name__ for m in graph.modules()}
    assert "PatchConvTranspose2d" in kinds and "ConvTranspose2d" not in kinds and "LeakyReLU" not in kinds
    assert torch.allclose(graph(c), net(c), atol=1e-12)


def _segment_problem(net: nn.Module, seed: int) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(65, generator=gen)
    start[64] = 0.0
    end = start.clone()
    end[64] = 1.0  # the strength moves, the scene stays: the weather mutations' segment
    region = Segment(start, end)
    with torch.no_grad():
        label = int(net(start[None]).argmax())
    return Problem(net, nn.Identity(), region, Spec.top1(label, 4))


@pytest.mark.parametrize("seed", range(6))
def test_forward_bounds_hold_at_every_sampled_point(seed):
    net = SegmentGenerator(seed)
    problem = _segment_problem(net, seed)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)[:, None]
    with torch.no_grad():  # in float64, the precision of the bounds
        sampled = float(problem.spec.margin(copy.deepcopy(problem.composed()).double()(t)).min())
    for splits in ("1", "8"):
        out = CROWN.certify(problem, CROWN.parse_options({"mode": "forward", "splits": splits}))
        assert out.details["lirpa_mode"] == "forward"
        assert out.margin_lower <= sampled + 1e-9, (splits, out.margin_lower, sampled)
        assert out.verdict != "certified" or sampled > 0


# ReLU, sigmoid, tanh, leaky ReLU (hardtanh, rewritten as 1 - ReLU(..), hits 0.3's forward Sub of a constant)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_forward_mode_is_sound_on_random_networks_over_segments(seed):
    gen = torch.Generator().manual_seed(seed)
    net = random_network(seed, conv=False)
    region = random_region("segment", gen)
    probe = Problem(net, nn.Identity(), region, Spec.top1(0, 4))
    problem = Problem(net, nn.Identity(), region, Spec.top1(int(probe.outputs(region.origin()[None]).argmax()), 4))
    pts = region.project(torch.cat([region.sample(3000, gen), region.lower[None], region.upper[None]]))
    with torch.no_grad():
        sampled = float(problem.spec.margin(copy.deepcopy(problem.composed()).double()(pts.double())).min())
    out = CROWN.certify(problem, CROWN.parse_options({"mode": "forward"}))
    assert out.margin_lower <= sampled + 1e-9
    assert out.verdict != "certified" or sampled > 0


def test_what_forward_mode_cannot_bound_is_refused_in_one_line():
    gen = torch.Generator().manual_seed(5)
    net = random_network(5, conv=True)  # a transposed convolution with padding: 0.3 has no forward bound
    problem = Problem(net, nn.Identity(), random_region("segment", gen), Spec.top1(0, 4))
    with pytest.raises(GcertError, match="crown.mode=backward"):
        CROWN.certify(problem, CROWN.parse_options({"mode": "forward"}))


def test_auto_picks_forward_only_for_large_layers_over_small_regions():
    small = _segment_problem(SegmentGenerator(0), 0)
    assert not CROWN.forward_mode(small, "auto")  # 256-value layers: backward CROWN is cheap and tightest
    assert CROWN.forward_mode(small, "forward") and not CROWN.forward_mode(small, "backward")
    with pytest.raises(GcertError, match="mode must be"):
        CROWN.parse_options({"mode": "sideways"})
