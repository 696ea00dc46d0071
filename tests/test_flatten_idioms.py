"""``--mean/--std`` and the flatten idioms of user code work with every certifier (issue 12).

``Normalize`` reads ``x.dim()``; user networks flatten with ``x.view(x.size(0), -1)`` or
``x.reshape(x.shape[0], -1)``. Each certifier must accept them and give a verdict that a dense float64 sampling
of the network does not contradict.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gcert.models import load_model
from gcert.plugins import PluginSettings, load_registry
from gcert.problem import Problem
from gcert.regions import LpBall, Segment
from gcert.spec import Spec
from gcert.transforms import Distribution, TransformRegion

REGISTRY = load_registry(PluginSettings())  # built-ins and installed adapters (crown, ...)
CERTIFIERS = sorted(REGISTRY.certifiers)


class ViewFlatten(nn.Module):
    def __init__(self, idiom: str):
        super().__init__()
        self.idiom = idiom
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if self.idiom == "view":
            h = h.view(h.size(0), -1)
        elif self.idiom == "reshape":
            h = h.reshape(h.shape[0], -1)
        else:
            h = torch.flatten(h, start_dim=1)
        return self.fc(h)


def network(idiom: str) -> nn.Module:
    torch.manual_seed(1)
    net = ViewFlatten(idiom).eval()
    if idiom == "normalised":
        return load_model(net, mean=[0.4], std=[0.3]).module
    return net


@pytest.mark.parametrize("idiom", ["view", "reshape", "normalised"])
@pytest.mark.parametrize("name", CERTIFIERS)
def test_every_certifier_takes_the_idiom(name, idiom):
    net = network(idiom)
    x0 = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(2))
    label = int(net(x0[None]).argmax())
    if name == "vnncomp":
        pytest.skip("vnncomp runs the external tool its -o command names (tests/test_vnncomp.py)")
    certifier = REGISTRY.certifier(name)
    if "transform" in certifier.regions:  # smoothing: the brightness offsets b in [-0.02, 0.02] of x0
        brightness = REGISTRY.transforms["brightness"].value
        region = TransformRegion(brightness, x0, torch.tensor([-0.02]), torch.tensor([0.02]),
                                 (Distribution("normal", 0.1),))
    elif certifier.max_dim == 1:
        region = Segment(x0, (x0 + 0.05).clamp(0, 1))
    else:
        region = LpBall(x0, 0.01, math.inf)
    problem = Problem(net, nn.Identity(), region, Spec.top1(label, 3))
    try:
        certifier.prepare(problem)
    except ImportError:
        pytest.skip(f"{name}'s backend is not installed")
    out = certifier.certify(problem, certifier.parse_options({}))
    assert "reason" not in out.details or "unsupported" not in str(out.details["reason"])
    assert out.verdict in ("certified", "falsified", "unknown")
    ts = region.sample(2000, torch.Generator().manual_seed(3))
    with torch.no_grad():
        sampled = problem.spec.margin(copy.deepcopy(problem.composed()).double()(ts.double()))
    if out.verdict == "certified" and certifier.guarantee != "probabilistic":  # smoothing speaks of the smoothed h
        assert float(sampled.min()) > 0
    if out.margin_lower is not None and out.verdict != "falsified":
        assert out.margin_lower <= float(sampled.min()) + 1e-9
