"""The rewrites compute the same function; auto_LiRPA accepts (and soundly bounds) what they produce.

Also: what the adapter cannot bound is refused up front with one line naming the operator.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from gcert.errors import UnsupportedOperatorError
from gcert.onnx_import import load_onnx
from gcert.problem import Problem
from gcert.regions import Box
from gcert.spec import Spec
from gcert.testing import make_registry
from gcert_lirpa import plugin
from gcert_lirpa.rewrite import for_lirpa

CROWN = make_registry(plugin).certifier("crown")


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def conv(c_out=3):
    return nn.Conv2d(1, c_out, 3, padding=1)


def head(n):
    return [nn.Flatten(), nn.Linear(n, 4)]


# name -> (network over 1x6x6 images, layer types / functions that must be gone after the rewrite)
REWRITTEN = {
    "convT p1 op1": ([conv(), nn.ReLU(), nn.ConvTranspose2d(3, 2, 3, 2, padding=1, output_padding=1), nn.ReLU(),
                      *head(2 * 12 * 12)], nn.ConvTranspose2d),
    "convT k4 p1": ([conv(), nn.ReLU(), nn.ConvTranspose2d(3, 2, 4, 2, padding=1), nn.Tanh(), *head(2 * 12 * 12)],
                    nn.ConvTranspose2d),
    "convT p0 op1 (bias rows)": ([conv(), nn.ReLU(), nn.ConvTranspose2d(3, 2, 3, 2, output_padding=1), nn.ReLU(),
                                  *head(2 * 14 * 14)], nn.ConvTranspose2d),
    "convT p2 no bias": ([conv(), nn.ReLU(), nn.ConvTranspose2d(3, 2, 4, 2, padding=2, bias=False), nn.ReLU(),
                          *head(2 * 10 * 10)], nn.ConvTranspose2d),
    "unflatten": ([nn.Flatten(), nn.Linear(36, 36), nn.ReLU(), nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 2, 3),
                   *head(32)], nn.Unflatten),
    "unflatten fn": ([nn.Flatten(), nn.Linear(36, 18), Fn(lambda x: torch.unflatten(x, 1, (2, 9))), nn.ReLU(),
                      *head(18)], torch.unflatten),
    "hardtanh": ([nn.Flatten(), nn.Linear(36, 12), nn.Hardtanh(-0.5, 0.5), nn.Linear(12, 4)], nn.Hardtanh),
    "relu6": ([nn.Flatten(), nn.Linear(36, 12), nn.ReLU6(), nn.Linear(12, 4)], nn.ReLU6),
    "clamp": ([nn.Flatten(), nn.Linear(36, 12), Fn(lambda x: torch.clamp(x, 0.0, 1.0)), nn.Linear(12, 4)],
              torch.clamp),
    "clamp min method": ([nn.Flatten(), nn.Linear(36, 12), Fn(lambda x: x.clamp(min=-0.1)), nn.Linear(12, 4)],
                         "clamp"),
    "clip max": ([nn.Flatten(), nn.Linear(36, 12), Fn(lambda x: torch.clip(x, max=0.3)), nn.Linear(12, 4)],
                 torch.clip),
    "F.hardtanh": ([nn.Flatten(), nn.Linear(36, 12), Fn(F.hardtanh), nn.Linear(12, 4)], F.hardtanh),
    "avgpool k3 s2 p1": ([conv(), nn.ReLU(), nn.AvgPool2d(3, 2, 1), *head(27)], nn.AvgPool2d),
    "avgpool exclude pad": ([conv(), nn.ReLU(), nn.AvgPool2d(3, 2, 1, count_include_pad=False), *head(27)],
                            nn.AvgPool2d),
    "avgpool overlapping": ([conv(), nn.ReLU(), nn.AvgPool2d(3, stride=2), *head(12)], nn.AvgPool2d),
    "avgpool ceil": ([conv(), nn.ReLU(), nn.AvgPool2d(4, 4, 1, ceil_mode=True), *head(12)], nn.AvgPool2d),
    "avgpool divisor": ([conv(), nn.ReLU(), nn.AvgPool2d(2, divisor_override=3), *head(27)], nn.AvgPool2d),
    "constant pad": ([nn.ConstantPad2d(1, 0.5), nn.Conv2d(1, 3, 3), nn.ReLU(), *head(108)], nn.ConstantPad2d),
    "zero pad": ([nn.ZeroPad2d((1, 0, 2, 0)), nn.Conv2d(1, 3, 3), nn.ReLU(), *head(3 * 6 * 5)], nn.ZeroPad2d),
    "F.pad": ([Fn(lambda x: F.pad(x, (1, 1, 0, 2), value=-0.3)), nn.Conv2d(1, 3, 3), nn.ReLU(), *head(3 * 6 * 6)],
              F.pad),
    "conv1d": ([nn.Flatten(), Fn(lambda x: x.unsqueeze(1)), nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(),
                *head(72)], nn.Conv1d),
}


def build(layers) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*copy.deepcopy(layers)).eval()


def remaining(gm: fx.GraphModule, what) -> list[str]:
    """Nodes of ``gm`` that still are ``what`` (a module type, a function, or a method name)."""
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(what, type) and type(gm.get_submodule(node.target)) is what:
            if what is nn.ConvTranspose2d and tuple(gm.get_submodule(node.target).padding) == (0, 0):
                continue  # padding 0 is the supported form that the rewrite produces
            found.append(node.name)
        elif node.op in ("call_function", "call_method") and node.target == what:
            found.append(node.name)
    return found


@pytest.mark.parametrize("name", sorted(REWRITTEN))
def test_the_rewrite_computes_the_same_function(name):
    layers, gone = REWRITTEN[name]
    net = build(layers)
    x = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 0.5
    gm = for_lirpa(net, x[:1])
    assert remaining(gm, gone) == []
    with torch.no_grad():
        want = copy.deepcopy(net).double()(x)
        got = gm(x)
        assert (got - want).abs().max() <= 1e-6 * (1 + want.abs().max())
        # the float32 network, too, agrees with its float64 rewrite within float32 rounding
        assert (gm(x) - net(x.float()).double()).abs().max() <= 1e-5 * (1 + want.abs().max())


@pytest.mark.parametrize("name", sorted(REWRITTEN))
def test_auto_lirpa_bounds_the_rewritten_network_soundly(lirpa, name):
    net = build(REWRITTEN[name][0])
    center = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(2))
    problem = Problem(net, nn.Identity(), Box(center - 0.05, center + 0.05), Spec.top1(0, 4))
    CROWN.prepare(problem)
    outcome = CROWN.certify(problem, CROWN.parse_options())
    pts = problem.region.sample(2000, torch.Generator().manual_seed(3))
    with torch.no_grad():
        sampled = problem.spec.margin(copy.deepcopy(problem.composed()).double()(pts.double()))
    assert outcome.margin_lower <= float(sampled.min()) + 1e-9


def _onnx(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, 1, 6, 6),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], opset_version=13)
    return buf.getvalue()


def test_networks_from_gcerts_onnx_importer_are_rewritten_and_bounded(lirpa):
    torch.manual_seed(4)
    source = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3).eval(), nn.Hardtanh(0.0, 1.0),
        nn.ConvTranspose2d(3, 2, 4, 2, padding=1), nn.ReLU(), nn.AvgPool2d(3, 2, 1),
        nn.ConstantPad2d(1, 0.25), nn.Conv2d(2, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 6 * 6, 4),
    )
    import onnx

    imported = load_onnx(onnx.load_from_string(_onnx(source)))
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gm = for_lirpa(imported, x[:1])
    with torch.no_grad():
        assert (gm(x) - copy.deepcopy(source).double().eval()(x)).abs().max() <= 1e-6
    center = x[0, 0].float()[None]
    problem = Problem(imported, nn.Identity(), Box(center - 0.02, center + 0.02), Spec.top1(1, 4))
    outcome = CROWN.certify(problem, CROWN.parse_options())
    pts = problem.region.sample(2000, torch.Generator().manual_seed(6))
    with torch.no_grad():
        sampled = problem.spec.margin(copy.deepcopy(problem.composed()).double()(pts.double()))
    assert outcome.margin_lower <= float(sampled.min()) + 1e-9


REFUSED = {
    "overlapping max-pool": ([conv(), nn.ReLU(), nn.MaxPool2d(3, 2), *head(12)], "MaxPool2d"),
    "ceil-mode max-pool": ([conv(), nn.ReLU(), nn.MaxPool2d(4, ceil_mode=True), *head(12)], "MaxPool2d"),
    "dilated transposed convolution": ([conv(), nn.ConvTranspose2d(3, 2, 3, dilation=2), *head(2 * 10 * 10)],
                                       "ConvTranspose2d"),
    "softmax": ([nn.Flatten(), nn.Linear(36, 4), nn.Softmax(dim=1)], "ReduceMax"),
    "1-D transposed convolution": ([nn.Flatten(), Fn(lambda x: x.unsqueeze(1)), nn.ConvTranspose1d(1, 2, 3),
                                    nn.Flatten(), nn.Linear(76, 4)], "ConvTranspose"),
    "erf": ([nn.Flatten(), nn.Linear(36, 4), Fn(torch.erf)], "onnx::Erf"),
    "strided slice": ([nn.Flatten(), Fn(lambda x: x[:, ::2]), nn.Linear(18, 4)], "Slice"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_auto_lirpa_cannot_bound_is_refused_in_one_line(lirpa, name):
    layers, op = REFUSED[name]
    center = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(7))
    problem = Problem(build(layers), nn.Identity(), Box(center - 0.05, center + 0.05), Spec.top1(0, 4))
    with pytest.raises(UnsupportedOperatorError) as err:
        CROWN.prepare(problem)
    message = str(err.value)
    assert err.value.op == op and "\n" not in message and "sampling" in message, message


def test_running_out_of_memory_is_not_called_an_unsupported_operator(lirpa):
    """auto_LiRPA's allocation failures name the size and the certifiers that scale, in one line."""
    exc = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 28991029248 bytes. Error code 12 (Cannot allocate memory)")
    err = plugin._unsupported(exc, lirpa, [])
    message = str(err)
    assert not isinstance(err, UnsupportedOperatorError) and "\n" not in message
    assert "out of memory" in message and "27.0 GiB" in message and "exactline" in message
