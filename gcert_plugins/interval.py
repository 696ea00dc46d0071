"""The ``interval`` certifier: interval bound propagation (IBP) through the composed network.

Sound and incomplete: computed in float64 with outward rounding padding on every affine map, so
the bounds hold for the network in real arithmetic. Operators map to transfer functions through
the explicit tables at the bottom of this module.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

import gcert
from gcert.contracts import Certifier, Outcome
from gcert.errors import UnsupportedOperatorError
from gcert.graph import op_name, rule_for, trace
from gcert.problem import Problem

_U = 2.0**-53  # unit roundoff of float64


@dataclass
class Interval:
    lo: torch.Tensor
    hi: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Interval:
        """For maps that are non-decreasing in every input (ReLU, max-pool, reshape, ...)."""
        return Interval(fn(self.lo), fn(self.hi))


@dataclass(frozen=True)
class IntervalOptions:
    """Settings of ``interval``."""

    probes: int = 5  # concrete points tried for a counterexample when bounds do not certify


class IntervalCertifier(Certifier):
    name = "interval"
    guarantee = "sound"
    description = "interval bound propagation (IBP), float64 with outward rounding; fast and loose"
    Options = IntervalOptions

    def prepare(self, problem: Problem) -> None:
        region = problem.region
        output_bounds(problem.composed(), region.lower.unsqueeze(0), region.upper.unsqueeze(0))

    def certify(self, problem: Problem, options: IntervalOptions) -> Outcome:
        lo, hi = problem.region.lower, problem.region.upper
        out = output_bounds(problem.composed(), lo.unsqueeze(0), hi.unsqueeze(0))
        spec = problem.spec
        C, d = spec.C.double(), spec.d.double()
        rows = affine(out, lambda x: x @ C.T + d, lambda x: x @ C.abs().T, C.shape[1], bias=d)
        margin_lower = float(rows.lo.min())
        if margin_lower > 0:
            return Outcome("certified", margin_lower=margin_lower)
        probes = _probe_points(problem, options.probes)
        margins = problem.margins(probes)
        best = int(margins.argmin())
        if margins[best] <= 0:
            return Outcome("falsified", margin_lower=margin_lower, margin_upper=float(margins[best]),
                           witness_t=probes[best])
        return Outcome("unknown", margin_lower=margin_lower, margin_upper=float(margins.min()))


def _probe_points(problem: Problem, n: int) -> torch.Tensor:
    region = problem.region
    points = [region.origin(), region.lower, region.upper, (region.lower + region.upper) / 2]
    return region.project(torch.stack(points[: max(n, 1)]).to(region.lower.dtype))


@torch.no_grad()
def output_bounds(network: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    """Sound bounds of ``network`` over the box ``[lo, hi]`` (batch of boxes allowed)."""
    gm = trace(network)
    env: dict[str, Any] = {}
    inputs = iter([Interval(lo.double(), hi.double())])
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = next(inputs)
        elif node.op == "get_attr":
            env[node.name] = _fetch(gm, str(node.target))
        elif node.op == "output":
            return fx.node.map_arg(node.args[0], lambda n: env[n.name])
        else:
            rule = rule_for(gm, node, MODULE_RULES, FUNCTION_RULES, METHOD_RULES, "interval")
            args = fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            if node.op == "call_module":
                head: Any = gm.get_submodule(str(node.target))
            else:
                head = node.target if node.op == "call_function" else str(node.target)
            try:
                env[node.name] = rule(head, *args, **kwargs)
            except NotImplementedError as exc:
                raise UnsupportedOperatorError(op_name(gm, node), f"node {node.name!r}", ("sampling",),
                                               hint=f"interval: {exc}") from None
    raise AssertionError("graph without output")


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def affine(x: Interval, fn: Callable[[torch.Tensor], torch.Tensor], fn_abs: Callable[[torch.Tensor], torch.Tensor],
           fan_in: int, bias: torch.Tensor | None = None) -> Interval:
    """Image of a box under the affine ``fn`` (``fn_abs``: the linear part with |weights|, no bias).

    ``bias`` must broadcast against the output. The padding bounds float64 rounding of the dot
    products and the midpoint/radius split: (fan_in + 2) * u * (|W|(|mid| + rad) + |b|).
    """
    mid, rad = (x.lo + x.hi) / 2, (x.hi - x.lo) / 2
    y_mid, y_rad = fn(mid), fn_abs(rad)
    size = fn_abs(mid.abs() + rad)
    if bias is not None:
        size = size + bias.abs()
    pad = (fan_in + 2) * _U * size + 1e-300
    return Interval(y_mid - y_rad - pad, y_mid + y_rad + pad)


def _linear(m: nn.Linear, x: Interval) -> Interval:
    return affine(x, m, lambda r: F.linear(r, m.weight.abs()), m.in_features, m.bias)


def _linear_fn(fn: Any, x: Interval, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Interval:
    return affine(x, lambda v: F.linear(v, weight, bias), lambda r: F.linear(r, weight.abs()), weight.shape[1], bias)


def _conv(m: nn.Conv1d | nn.Conv2d, x: Interval) -> Interval:
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    if m.padding_mode != "zeros":
        raise NotImplementedError(f"padding_mode {m.padding_mode}")

    def fn_abs(r: torch.Tensor) -> torch.Tensor:
        return conv(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)

    fan_in = m.weight[0].numel()
    return affine(x, m, fn_abs, fan_in, _channel_bias(m.bias, x.lo.dim()))


def _conv_transpose(m: nn.ConvTranspose2d, x: Interval) -> Interval:
    def fn_abs(r: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(r, m.weight.abs(), None, m.stride, m.padding, m.output_padding, m.groups,
                                  m.dilation)

    fan_in = m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3] // m.groups
    return affine(x, m, fn_abs, fan_in, _channel_bias(m.bias, x.lo.dim()))


def _channel_bias(bias: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    return None if bias is None else bias.reshape(-1, *([1] * (ndim - 2)))


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, x: Interval) -> Interval:
    if m.training or m.running_mean is None:
        raise NotImplementedError("BatchNorm must be in eval mode with running statistics")
    shape = (1, -1) + (1,) * (x.lo.dim() - 2)
    scale = 1.0 / torch.sqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    shift = -m.running_mean * scale + (m.bias if m.bias is not None else 0)
    s, b = scale.reshape(shape), shift.reshape(shape)
    return _elementwise_affine(x, s, b)


def _elementwise_affine(x: Interval, scale: torch.Tensor | float, shift: torch.Tensor | float) -> Interval:
    scale_t = torch.as_tensor(scale, dtype=x.lo.dtype)
    shift_t = torch.as_tensor(shift, dtype=x.lo.dtype)
    a, b = x.lo * scale_t + shift_t, x.hi * scale_t + shift_t
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    pad = 2 * _U * (torch.maximum(a.abs(), b.abs()) + shift_t.abs()) + 1e-300
    return Interval(lo - pad, hi + pad)


def _monotone_module(m: nn.Module, x: Interval) -> Interval:
    return x.map(m)


def _leaky_relu(m: nn.LeakyReLU, x: Interval) -> Interval:
    if m.negative_slope < 0:
        raise NotImplementedError("LeakyReLU with a negative slope is not monotone")
    return x.map(m)


def _add(fn: Any, a: Any, b: Any, **kw: Any) -> Any:
    if kw and (isinstance(a, Interval) or isinstance(b, Interval)):
        raise NotImplementedError(f"add/sub with arguments {sorted(kw)}")
    if isinstance(a, Interval) and isinstance(b, Interval):
        lo, hi = a.lo + b.lo, a.hi + b.hi
        pad = _U * torch.maximum(lo.abs(), hi.abs()) + 1e-300
        return Interval(lo - pad, hi + pad)
    if isinstance(a, Interval):
        return _elementwise_affine(a, 1.0, _const(b, a))
    if isinstance(b, Interval):
        return _elementwise_affine(b, 1.0, _const(a, b))
    return fn(a, b, **kw)


def _sub(fn: Any, a: Any, b: Any, **kw: Any) -> Any:
    return _add(fn, a, _neg(operator.neg, b)) if isinstance(b, Interval) or isinstance(a, Interval) else fn(a, b)


def _neg(fn: Any, a: Any) -> Any:
    return Interval(-a.hi, -a.lo) if isinstance(a, Interval) else fn(a)


def _mul(fn: Any, a: Any, b: Any) -> Any:
    if isinstance(a, Interval) and isinstance(b, Interval):
        raise NotImplementedError("product of two bounded tensors")
    if isinstance(a, Interval):
        return _elementwise_affine(a, _const(b, a), 0.0)
    if isinstance(b, Interval):
        return _elementwise_affine(b, _const(a, b), 0.0)
    return fn(a, b)


def _div(fn: Any, a: Any, b: Any) -> Any:
    if isinstance(b, Interval):
        raise NotImplementedError("division by a bounded tensor")
    if isinstance(a, Interval):
        return _elementwise_affine(a, 1.0 / _const(b, a), 0.0)
    return fn(a, b)


def _matmul(fn: Any, a: Any, b: Any) -> Any:
    if isinstance(a, Interval) and not isinstance(b, Interval):
        w = _const(b, a)
        return affine(a, lambda v: v @ w, lambda r: r @ w.abs(), w.shape[-2])
    if isinstance(b, Interval) and not isinstance(a, Interval):
        w = _const(a, b)
        return affine(b, lambda v: w @ v, lambda r: w.abs() @ r, w.shape[-1])
    if isinstance(a, Interval):
        raise NotImplementedError("product of two bounded tensors")
    return fn(a, b)


def _const(v: Any, like: Interval) -> Any:
    return v.to(like.lo.dtype) if isinstance(v, torch.Tensor) else v


def _structural(fn: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Ops that only move, copy or select entries (reshape, permute, getitem, ...)."""
    if isinstance(x, Interval):
        return x.map(lambda v: fn(v, *args, **kwargs))
    return fn(x, *args, **kwargs)


def _cat(fn: Any, tensors: Any, *args: Any, **kwargs: Any) -> Any:
    if not any(isinstance(t, Interval) for t in tensors):
        return fn(tensors, *args, **kwargs)
    los = [t.lo if isinstance(t, Interval) else t for t in tensors]
    his = [t.hi if isinstance(t, Interval) else t for t in tensors]
    return Interval(fn(los, *args, **kwargs), fn(his, *args, **kwargs))


def _method(name: str, x: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(x, Interval):
        if name == "size":
            return x.lo.size(*args, **kwargs)
        if name in ("float", "double", "contiguous"):
            return x  # the analysis stays in float64 whatever precision the model asks for
        return x.map(lambda v: getattr(v, name)(*args, **kwargs))
    return getattr(x, name)(*args, **kwargs)


def _affine_method(name: str, x: Any, other: Any) -> Any:
    table = {"add": _add, "sub": _sub, "mul": _mul, "div": _div, "matmul": _matmul}
    return table[name](getattr(torch, name), x, other)


def _pad(fn: Any, x: Any, pad: Any, mode: str = "constant", value: float = 0.0) -> Any:
    if isinstance(x, Interval) and mode != "constant":
        raise NotImplementedError(f"pad mode {mode}")
    return _structural(fn, x, pad, mode, value)


MODULE_RULES: dict[type, Callable[..., Interval]] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.ConvTranspose2d: _conv_transpose,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.LeakyReLU: _leaky_relu,
    # Non-decreasing in every input: the box maps to [f(lo), f(hi)].
    nn.ReLU: _monotone_module,
    nn.ReLU6: _monotone_module,
    nn.Sigmoid: _monotone_module,
    nn.Tanh: _monotone_module,
    nn.Hardtanh: _monotone_module,
    nn.ELU: _monotone_module,
    nn.Softplus: _monotone_module,
    nn.MaxPool1d: _monotone_module,
    nn.MaxPool2d: _monotone_module,
    nn.AvgPool1d: _monotone_module,
    nn.AvgPool2d: _monotone_module,
    nn.AdaptiveAvgPool2d: _monotone_module,
    nn.Flatten: _monotone_module,
    nn.Unflatten: _monotone_module,
    nn.Identity: _monotone_module,
    nn.Dropout: _monotone_module,
    nn.ZeroPad2d: _monotone_module,
    nn.ConstantPad2d: _monotone_module,
    nn.Upsample: _monotone_module,
}

FUNCTION_RULES: dict[Any, Callable[..., Any]] = {
    operator.add: _add, torch.add: _add,
    operator.sub: _sub, torch.sub: _sub,
    operator.mul: _mul, torch.mul: _mul,
    operator.truediv: _div, torch.div: _div,
    operator.neg: _neg, torch.neg: _neg,
    operator.matmul: _matmul, torch.matmul: _matmul,
    torch.cat: _cat, torch.concat: _cat,
    F.pad: _pad,
    F.linear: _linear_fn,
    **{fn: _structural for fn in (
        torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
        operator.getitem, torch.relu, F.relu, torch.sigmoid, torch.tanh, torch.atan, torch.clamp, torch.clip,
        F.hardtanh, F.max_pool2d, F.avg_pool2d,
    )},
}

METHOD_RULES: dict[str, Callable[..., Any]] = {
    **{name: _method for name in (
        "reshape", "view", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "size",
        "relu", "sigmoid", "tanh", "clamp", "clip", "float", "double",
    )},
    **{name: _affine_method for name in ("add", "sub", "mul", "div", "matmul")},
}


@gcert.hookimpl
def gcert_register_certifiers(register: Callable[[Certifier], None]) -> None:
    register(IntervalCertifier())
