"""The native lowering: a torch module, traced with torch.fx, rewritten into a few primitive ops.

Native certifiers (exactline, genprover, deeppoly) run their transfer functions over this one list:
affine maps, sums and concatenations of values, elementwise activations, and max-pooling. The table
at the bottom maps each torch layer, function and method to the primitive op it lowers to.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from gcert.errors import UnsupportedOperatorError
from gcert.graph import op_name, trace

Tensor = torch.Tensor

PIECEWISE_LINEAR_ACTIVATIONS = frozenset({"relu", "leaky_relu", "hardtanh"})
SMOOTH_ACTIVATIONS = frozenset({"sigmoid", "tanh", "atan"})
# Built-in certifiers that take smooth activations, for error messages of those that do not.
SMOOTH_CAPABLE = ("genprover", "interval", "sampling")


@dataclass(frozen=True)
class Affine:
    """``x -> linear(x) + bias`` on batches (B, *in) -> (B, *out).

    ``abs_linear`` applies the same map with every coefficient replaced by its absolute value (for
    interval arithmetic); ``fan_in`` bounds how many terms one output sums (for rounding bounds).
    """

    linear: Callable[[Tensor], Tensor]
    bias: Tensor
    abs_linear: Callable[[Tensor], Tensor]
    fan_in: int = 1
    # The adjoint (row vectors times A) when autograd's is slow; torch's float64 conv_transpose2d backward on
    # CPU takes seconds where the equivalent conv2d takes milliseconds.
    transpose: Callable[[Tensor], Tensor] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        return self.linear(x) + self.bias


@dataclass(frozen=True)
class Activation:
    """An elementwise non-linearity; ``hardtanh`` bounds may be infinite (one-sided clamps)."""

    kind: str
    slope: float = 0.0  # leaky_relu
    lo: float = -math.inf  # hardtanh
    hi: float = math.inf

    @property
    def piecewise_linear(self) -> bool:
        return self.kind in PIECEWISE_LINEAR_ACTIVATIONS

    def __call__(self, x: Tensor) -> Tensor:
        if self.kind == "relu":
            return torch.relu(x)
        if self.kind == "leaky_relu":
            return F.leaky_relu(x, self.slope)
        if self.kind == "hardtanh":
            return x.clamp(min=None if self.lo == -math.inf else self.lo, max=None if self.hi == math.inf else self.hi)
        return _SMOOTH[self.kind](x)


_SMOOTH: dict[str, Callable[[Tensor], Tensor]] = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "atan": torch.atan}


@dataclass(frozen=True)
class MaxPool:
    """2-D max-pooling; :meth:`windows` lays every window out on the last axis."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]

    def __call__(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation)

    def windows(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, out_h * out_w, kh * kw); padding cells are -inf, as in max_pool2d."""
        b, c = x.shape[:2]
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=-math.inf)
        cols = F.unfold(x.reshape(b * c, 1, *x.shape[2:]), self.kernel, self.dilation, 0, self.stride)
        return cols.reshape(b, c, cols.shape[1], cols.shape[2]).transpose(2, 3)


@dataclass(frozen=True)
class Add:
    """The sum of two values of the same shape (residual connections)."""

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


@dataclass(frozen=True)
class Concat:
    """Concatenation along a per-sample axis (``dim`` counts the batch axis)."""

    dim: int

    def __call__(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.dim)


Op = Affine | Activation | MaxPool | Add | Concat


@dataclass(frozen=True)
class Node:
    """One primitive op applied to earlier values (``inputs`` index into :attr:`Lowered.nodes`; -1 is the input)."""

    op: Op
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    source: str  # the torch layer/function it came from, for messages


@dataclass
class Lowered:
    """A network as a list of primitive ops over float64 values; ``output`` is the index of the result."""

    input_shape: tuple[int, ...]
    nodes: list[Node] = field(default_factory=list)
    output: int = -1

    @property
    def piecewise_linear(self) -> bool:
        return all(not isinstance(n.op, Activation) or n.op.piecewise_linear for n in self.nodes)

    def smooth_nodes(self) -> list[Node]:
        return [n for n in self.nodes if isinstance(n.op, Activation) and not n.op.piecewise_linear]

    def last_use(self) -> list[int]:
        """For each value, the index of the last node that reads it (the output is read at the end)."""
        last = [i for i in range(len(self.nodes))]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                if j >= 0:
                    last[j] = i
        if self.output >= 0:
            last[self.output] = len(self.nodes)
        return last

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the lowered ops (a reference for tests; certifiers run their own transfer functions)."""
        last = self.last_use()
        values: dict[int, Tensor] = {}
        for k, node in enumerate(self.nodes):
            values[k] = node.op(*[x if j < 0 else values[j] for j in node.inputs])
            for j in set(node.inputs):
                if j >= 0 and last[j] <= k:
                    del values[j]  # nothing later reads it: hold only the live values
        return x if self.output < 0 else values[self.output]


# --- building -----------------------------------------------------------------------------------


@dataclass
class Var:
    """A traced value that depends on the input, with a batch-1 example of it."""

    index: int
    example: Tensor


class _Builder:
    def __init__(self, lowered: Lowered):
        self.lowered = lowered

    def add(self, op: Op, inputs: Sequence[Var], source: str) -> Var:
        args = [v.example for v in inputs]
        example = op(*args)
        self.lowered.nodes.append(Node(op, tuple(v.index for v in inputs), tuple(example.shape[1:]), source))
        return Var(len(self.lowered.nodes) - 1, example)

    def affine(self, x: Var, linear: Callable[[Tensor], Tensor], bias: Tensor | float = 0.0,
               abs_linear: Callable[[Tensor], Tensor] | None = None, fan_in: int = 1, source: str = "",
               transpose: Callable[[Tensor], Tensor] | None = None) -> Var:
        out_shape = linear(x.example).shape[1:]
        b = torch.as_tensor(bias, dtype=torch.float64).expand(out_shape).clone()
        return self.add(Affine(linear, b, abs_linear or linear, fan_in, transpose), [x], source)


def lower(module: nn.Module, input_shape: Sequence[int], check: bool = True) -> Lowered:
    """Lower ``module`` (inputs of per-sample shape ``input_shape``) into primitive float64 ops.

    Raises :class:`UnsupportedOperatorError` naming the first op that has no lowering. With
    ``check``, the lowered ops are compared with the module on random inputs (a mismatch is a bug).
    """
    gm = trace(module)
    lowered = Lowered(tuple(int(s) for s in input_shape))
    builder = _Builder(lowered)
    env: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if env:
                raise UnsupportedOperatorError("second input", "the network", hint="networks take one input tensor")
            env[node.name] = Var(-1, torch.rand(1, *lowered.input_shape, dtype=torch.float64))
        elif node.op == "get_attr":
            env[node.name] = _fetch(gm, str(node.target))
        elif node.op == "output":
            result = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            if not isinstance(result, Var):
                raise UnsupportedOperatorError("output", "the network", hint="the output must be one tensor that "
                                               "depends on the input")
            lowered.output = result.index
        else:
            env[node.name] = _lower_node(builder, gm, node, env)
    if check:
        _check(module, lowered)
    return lowered


def _lower_node(b: _Builder, gm: fx.GraphModule, node: fx.Node, env: dict[str, Any]) -> Any:
    args = fx.node.map_arg(node.args, lambda n: env[n.name])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
    name = op_name(gm, node)
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        rule = MODULE_RULES.get(type(module))
        head: Any = module
    elif node.op == "call_function":
        rule, head = FUNCTION_RULES.get(node.target), node.target
    else:
        rule, head = METHOD_RULES.get(str(node.target)), str(node.target)
    if not _has_var((args, kwargs)):
        # Nothing here depends on the input: evaluate it once (shapes, constants, ...).
        if node.op == "call_module":
            return head(*args, **kwargs)
        if node.op == "call_function":
            return head(*args, **kwargs)
        return getattr(args[0], head)(*args[1:], **kwargs)
    if rule is None:
        raise UnsupportedOperatorError(name, f"node {node.name!r}", supported_by=("sampling",),
                                       hint="the native lowering has no rule for it")
    try:
        return rule(b, head, *args, **kwargs)
    except _Unsupported as exc:
        raise UnsupportedOperatorError(name, f"node {node.name!r}", supported_by=("sampling",),
                                       hint=str(exc)) from None


class _Unsupported(Exception):
    """A rule that recognises an op but not this use of it."""


def _has_var(obj: Any) -> bool:
    if isinstance(obj, Var):
        return True
    if isinstance(obj, list | tuple):
        return any(_has_var(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_var(o) for o in obj.values())
    return False


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _check(module: nn.Module, lowered: Lowered) -> None:
    reference = trace(module)
    x = torch.rand(3, *lowered.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = reference(x), lowered.forward(x)
    err = float((want - got).abs().max()) if want.shape == got.shape else math.inf
    scale = 1.0 + float(want.abs().max())
    if not err <= 1e-9 * scale:
        raise AssertionError(f"gcert bug: the lowered network differs from the module by {err:.3g}")


# --- rules: torch op -> primitive op --------------------------------------------------------------


def _abs_w(w: Tensor) -> Tensor:
    return w.detach().abs()


def _linear_module(b: _Builder, m: nn.Linear, x: Var) -> Var:
    w = m.weight.detach()
    aw = _abs_w(w)
    return b.affine(x, lambda v: F.linear(v, w), 0.0 if m.bias is None else m.bias.detach(),
                    lambda v: F.linear(v, aw), m.in_features, "Linear")


def _linear_fn(b: _Builder, fn: Any, x: Var, weight: Tensor, bias: Tensor | None = None) -> Var:
    w, aw = weight.detach(), _abs_w(weight)
    return b.affine(x, lambda v: F.linear(v, w), 0.0 if bias is None else bias.detach(),
                    lambda v: F.linear(v, aw), w.shape[1], "linear")


def _channel_bias(bias: Tensor | None, out_shape: Sequence[int]) -> Tensor | float:
    if bias is None:
        return 0.0
    return bias.detach().reshape(-1, *([1] * (len(out_shape) - 1))).expand(*out_shape)


def _conv_module(b: _Builder, m: nn.Conv1d | nn.Conv2d, x: Var) -> Var:
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode {m.padding_mode!r}")
    conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
    w, aw = m.weight.detach(), _abs_w(m.weight)

    def lin(v: Tensor) -> Tensor:
        return conv(v, w, None, m.stride, m.padding, m.dilation, m.groups)

    def alin(v: Tensor) -> Tensor:
        return conv(v, aw, None, m.stride, m.padding, m.dilation, m.groups)

    out_shape = lin(x.example).shape[1:]
    return b.affine(x, lin, _channel_bias(m.bias, out_shape), alin, w[0].numel(), type(m).__name__)


def _conv_fn(b: _Builder, fn: Any, x: Var, weight: Tensor, bias: Tensor | None = None, *args: Any,
             **kwargs: Any) -> Var:
    w, aw = weight.detach(), _abs_w(weight)
    out_shape = fn(x.example, w, None, *args, **kwargs).shape[1:]
    return b.affine(x, lambda v: fn(v, w, None, *args, **kwargs), _channel_bias(bias, out_shape),
                    lambda v: fn(v, aw, None, *args, **kwargs), w[0].numel(), fn.__name__)


def _conv_transpose_module(b: _Builder, m: nn.ConvTranspose1d | nn.ConvTranspose2d, x: Var) -> Var:
    conv_t = F.conv_transpose1d if isinstance(m, nn.ConvTranspose1d) else F.conv_transpose2d
    w, aw = m.weight.detach(), _abs_w(m.weight)

    def lin(v: Tensor) -> Tensor:
        return conv_t(v, w, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)

    def alin(v: Tensor) -> Tensor:
        return conv_t(v, aw, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)

    conv = F.conv1d if isinstance(m, nn.ConvTranspose1d) else F.conv2d
    in_spatial = tuple(x.example.shape[2:])

    def adjoint(rows: Tensor) -> Tensor:
        # conv_transpose's adjoint is the convolution with the same weights; output_padding only added
        # cells that no input reaches, so crop back to the input size.
        out = conv(rows, w, None, m.stride, m.padding, m.dilation, m.groups)
        return out[(..., *[slice(0, n) for n in in_spatial])]

    out_shape = lin(x.example).shape[1:]
    fan_in = w.shape[0] * math.prod(w.shape[2:]) // m.groups
    return b.affine(x, lin, _channel_bias(m.bias, out_shape), alin, fan_in, type(m).__name__, adjoint)


def _batchnorm(b: _Builder, m: nn.modules.batchnorm._BatchNorm, x: Var) -> Var:
    if m.training or m.running_mean is None or m.running_var is None:
        raise _Unsupported("BatchNorm must be in eval mode with running statistics")
    scale = 1.0 / torch.sqrt(m.running_var.detach() + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.detach()
    shift = -m.running_mean.detach() * scale + (m.bias.detach() if m.bias is not None else 0.0)
    shape = (-1,) + (1,) * (x.example.dim() - 2)
    s, sh = scale.reshape(shape), shift.reshape(shape)
    out_shape = x.example.shape[1:]
    return b.affine(x, lambda v: v * s, sh.expand(*out_shape), lambda v: v * s.abs(), 1, type(m).__name__)


def _linear_pool(b: _Builder, m: nn.Module, x: Var) -> Var:
    """Average pooling: linear with non-negative weights (so |A| = A); fan-in is the window size."""
    k = getattr(m, "kernel_size", None)
    spatial = x.example.dim() - 2
    if k is None:
        fan = math.prod(x.example.shape[2:])
    else:
        fan = math.prod(k) if isinstance(k, tuple | list) else int(k) ** spatial
    return b.affine(x, m, 0.0, m, fan, type(m).__name__)


def _avg_pool_fn(b: _Builder, fn: Any, x: Var, kernel_size: Any, *args: Any, **kwargs: Any) -> Var:
    def pool(v: Tensor) -> Tensor:
        return fn(v, kernel_size, *args, **kwargs)

    fan = math.prod(kernel_size) if isinstance(kernel_size, tuple | list) else int(kernel_size) ** 2
    return b.affine(x, pool, 0.0, pool, fan, "avg_pool2d")


def _structural_module(b: _Builder, m: nn.Module, x: Var) -> Var:
    return _structural(b, m, x)


def _structural(b: _Builder, fn: Callable[[Tensor], Tensor], x: Var, source: str = "") -> Var:
    """Ops that only move or copy entries; defined by the per-sample output shape, so any batch works."""
    return b.affine(x, fn, 0.0, fn, 1, source or getattr(fn, "__name__", type(fn).__name__))


def _reshape_like(b: _Builder, fn: Any, x: Var, *args: Any, **kwargs: Any) -> Var:
    out = fn(x.example, *args, **kwargs) if not isinstance(fn, str) else getattr(x.example, fn)(*args, **kwargs)
    per_sample = tuple(out.shape[1:])
    if out.shape[0] != 1:
        raise _Unsupported("a reshape that mixes the batch axis with others")
    return _structural(b, lambda v: v.reshape(v.shape[0], *per_sample), x, "reshape")


def _index_like(b: _Builder, fn: Any, x: Var, *args: Any, **kwargs: Any) -> Var:
    """permute / transpose / squeeze / unsqueeze / getitem: the same call on every batch."""
    call = (lambda v: getattr(v, fn)(*args, **kwargs)) if isinstance(fn, str) else (lambda v: fn(v, *args, **kwargs))
    out = call(x.example)
    probe = call(torch.cat([x.example, x.example + 1]))
    if probe.shape[0] != 2 or out.shape[0] != 1:
        raise _Unsupported("an indexing op that touches the batch axis")
    return _structural(b, call, x, fn if isinstance(fn, str) else getattr(fn, "__name__", "index"))


def _pad_fn(b: _Builder, fn: Any, x: Var, pad: Sequence[int], mode: str = "constant", value: float | None = 0.0) -> Var:
    if mode != "constant":
        raise _Unsupported(f"pad mode {mode!r}")
    value = 0.0 if value is None else float(value)
    bias = F.pad(torch.zeros_like(x.example), list(pad), value=value)[0]
    return b.affine(x, lambda v: F.pad(v, list(pad)), bias, lambda v: F.pad(v, list(pad)), 1, "pad")


def _const_pad_module(b: _Builder, m: nn.Module, x: Var) -> Var:
    return _pad_fn(b, F.pad, x, m.padding, "constant", float(getattr(m, "value", 0.0)))


def _activation(kind: str, **params: float) -> Callable[..., Var]:
    def rule(b: _Builder, head: Any, x: Var, *args: Any, **kwargs: Any) -> Var:
        return b.add(Activation(kind, **params), [x], kind)

    return rule


def _leaky_module(b: _Builder, m: nn.LeakyReLU, x: Var) -> Var:
    return b.add(Activation("leaky_relu", slope=float(m.negative_slope)), [x], "LeakyReLU")


def _leaky_fn(b: _Builder, fn: Any, x: Var, negative_slope: float = 0.01, inplace: bool = False) -> Var:
    return b.add(Activation("leaky_relu", slope=float(negative_slope)), [x], "leaky_relu")


def _hardtanh_module(b: _Builder, m: nn.Module, x: Var) -> Var:
    lo, hi = (0.0, 6.0) if isinstance(m, nn.ReLU6) else (float(m.min_val), float(m.max_val))
    return b.add(Activation("hardtanh", lo=lo, hi=hi), [x], type(m).__name__)


def _hardtanh_fn(b: _Builder, fn: Any, x: Var, min_val: float = -1.0, max_val: float = 1.0,
                 inplace: bool = False) -> Var:
    return b.add(Activation("hardtanh", lo=float(min_val), hi=float(max_val)), [x], "hardtanh")


def _clamp(b: _Builder, fn: Any, x: Var, min: Any = None, max: Any = None) -> Var:  # noqa: A002 - torch's names
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        raise _Unsupported("clamp with tensor bounds")
    lo = -math.inf if min is None else float(min)
    hi = math.inf if max is None else float(max)
    if lo > hi:
        # torch (and ONNX Clip) return ``max`` everywhere: a constant, not a hardtanh with an empty range.
        return b.affine(x, lambda v: v * 0.0, hi, lambda v: v * 0.0, 0, "clamp(min > max)")
    return b.add(Activation("hardtanh", lo=lo, hi=hi), [x], "clamp")


def _maxpool_module(b: _Builder, m: nn.MaxPool2d, x: Var) -> Var:
    return _maxpool(b, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def _maxpool_fn(b: _Builder, fn: Any, x: Var, kernel_size: Any, stride: Any = None, padding: Any = 0,
                dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Var:
    if return_indices:
        raise _Unsupported("max_pool2d with return_indices")
    return _maxpool(b, x, kernel_size, stride, padding, dilation, ceil_mode)


def _maxpool(b: _Builder, x: Var, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> Var:
    if ceil_mode:
        raise _Unsupported("max-pooling with ceil_mode")
    if x.example.dim() != 4:
        raise _Unsupported("max-pooling is lowered for 2-D feature maps (B, C, H, W)")

    def pair(v: Any) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    k = pair(kernel)
    s = pair(stride if stride not in (None, []) else kernel)
    out = F.max_pool2d(x.example, k, s, pair(padding), pair(dilation))
    return b.add(MaxPool(k, s, pair(padding), pair(dilation), tuple(out.shape[2:])), [x], "MaxPool2d")


def _const(v: Any) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64).detach()


def _add_fn(b: _Builder, fn: Any, x: Any, y: Any, *, alpha: float = 1.0) -> Var:
    if alpha != 1.0:
        y = _scale(b, y, alpha) if isinstance(y, Var) else y * alpha
    if isinstance(x, Var) and isinstance(y, Var):
        shape = torch.broadcast_shapes(x.example.shape, y.example.shape)
        if shape[0] != 1:
            raise _Unsupported("adding values that broadcast over the batch axis")
        x, y = _expand(b, x, shape[1:]), _expand(b, y, shape[1:])
        return b.add(Add(), [x, y], "add")
    var, const = (x, y) if isinstance(x, Var) else (y, x)
    c = _const(const)
    out_shape = (var.example + c).shape[1:]
    if (var.example + c).shape[0] != 1:
        raise _Unsupported("a constant that broadcasts over the batch axis")
    return b.affine(var, lambda v: v.expand(v.shape[0], *out_shape) if v.shape[1:] != out_shape else v,
                    (torch.zeros(1, *out_shape, dtype=torch.float64) + c)[0], None, 1, "add")


def _expand(b: _Builder, x: Var, shape: Sequence[int]) -> Var:
    """Broadcast a value to ``shape`` (per sample) by copying entries: a linear map with 0/1 weights."""
    if tuple(x.example.shape[1:]) == tuple(shape):
        return x
    return _structural(b, lambda v: v.expand(v.shape[0], *shape), x, "expand")


def _scale(b: _Builder, x: Var, s: Any) -> Var:
    c = _const(s)
    out = x.example * c
    if out.shape[0] != 1:
        raise _Unsupported("a constant that broadcasts over the batch axis")
    ac = c.abs()
    return b.affine(x, lambda v: v * c, 0.0, lambda v: v * ac, 1, "mul")


def _neg_fn(b: _Builder, fn: Any, x: Var) -> Var:
    return _scale(b, x, -1.0)


def _sub_fn(b: _Builder, fn: Any, x: Any, y: Any, *, alpha: float = 1.0) -> Var:
    if isinstance(y, Var):
        return _add_fn(b, fn, x, _scale(b, y, -alpha))
    return _add_fn(b, fn, x, -alpha * _const(y))


def _mul_fn(b: _Builder, fn: Any, x: Any, y: Any) -> Var:
    if isinstance(x, Var) and isinstance(y, Var):
        raise _Unsupported("the product of two values that depend on the input")
    var, const = (x, y) if isinstance(x, Var) else (y, x)
    return _scale(b, var, const)


def _div_fn(b: _Builder, fn: Any, x: Any, y: Any) -> Var:
    if isinstance(y, Var):
        raise _Unsupported("division by a value that depends on the input")
    return _scale(b, x, 1.0 / _const(y))


def _matmul_fn(b: _Builder, fn: Any, x: Any, y: Any) -> Var:
    if isinstance(x, Var) and isinstance(y, Var):
        raise _Unsupported("the product of two values that depend on the input")
    if isinstance(x, Var):
        w = _const(y)
        aw = w.abs()
        return b.affine(x, lambda v: v @ w, 0.0, lambda v: v @ aw, w.shape[-2], "matmul")
    w = _const(x)
    aw = w.abs()
    return b.affine(y, lambda v: w @ v, 0.0, lambda v: aw @ v, w.shape[-1], "matmul")


def _cat_fn(b: _Builder, fn: Any, tensors: Sequence[Any], dim: int = 0) -> Var:
    if dim == 0:
        raise _Unsupported("concatenation along the batch axis")
    parts = []
    for t in tensors:
        if isinstance(t, Var):
            parts.append(t)
        else:
            c = _const(t)
            if c.shape[0] != 1:
                raise _Unsupported("concatenating a constant that is not batch-1")
            # A constant part becomes an affine map of the first variable with zero weights.
            first = next(p for p in tensors if isinstance(p, Var))
            parts.append(b.affine(first, lambda v, c=c: c.expand(v.shape[0], *c.shape[1:]) * 0.0, c[0], None, 0,
                                  "constant"))
    return b.add(Concat(dim if dim > 0 else dim + parts[0].example.dim()), parts, "cat")


def _method(name: str) -> Callable[..., Any]:
    def rule(b: _Builder, head: str, x: Any, *args: Any, **kwargs: Any) -> Any:
        return FUNCTION_RULES[_METHOD_AS_FUNCTION[name]](b, _METHOD_AS_FUNCTION[name], x, *args, **kwargs)

    return rule


def _identity(b: _Builder, head: Any, x: Var, *args: Any, **kwargs: Any) -> Var:
    return x


def _const_like(b: _Builder, fn: Any, x: Var, *args: Any, **kwargs: Any) -> Var:
    """``zeros_like`` / ``ones_like`` / ``full_like`` of a value: a constant (an affine map with zero weights)."""
    kwargs.pop("dtype", None)
    value = fn(x.example, *args, **kwargs).to(torch.float64)[0]
    return b.affine(x, lambda v: v * 0.0, value, lambda v: v * 0.0, 0, getattr(fn, "__name__", "constant"))


def _shape_query(b: _Builder, head: Any, x: Var, *args: Any, **kwargs: Any) -> Any:
    """``x.dim()``, ``x.size(i)``, ``x.shape``, ``x.ndim``: answered from the batch-1 example.

    A batch size read this way is 1; a reshape that uses it (``x.view(x.size(0), -1)``) keeps the batch axis,
    which :func:`_reshape_like` checks, so the lowered op is right for every batch.
    """
    if head is getattr:
        if args[0] not in ("shape", "ndim", "dtype"):
            raise _Unsupported(f"attribute {args[0]!r} of a value that depends on the input")
        return getattr(x.example, args[0])
    return getattr(x.example, head)(*args, **kwargs)


MODULE_RULES: dict[type, Callable[..., Var]] = {
    nn.Linear: _linear_module,
    nn.Conv1d: _conv_module,
    nn.Conv2d: _conv_module,
    nn.ConvTranspose1d: _conv_transpose_module,
    nn.ConvTranspose2d: _conv_transpose_module,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.AvgPool1d: _linear_pool,
    nn.AvgPool2d: _linear_pool,
    nn.AdaptiveAvgPool2d: _linear_pool,
    nn.Flatten: _structural_module,
    nn.Unflatten: _structural_module,
    nn.Identity: _structural_module,
    nn.Dropout: _structural_module,
    nn.ZeroPad2d: _structural_module,
    nn.ConstantPad2d: _const_pad_module,
    nn.ReLU: _activation("relu"),
    nn.LeakyReLU: _leaky_module,
    nn.Hardtanh: _hardtanh_module,
    nn.ReLU6: _hardtanh_module,
    nn.Sigmoid: _activation("sigmoid"),
    nn.Tanh: _activation("tanh"),
    nn.MaxPool2d: _maxpool_module,
}

FUNCTION_RULES: dict[Any, Callable[..., Any]] = {
    operator.add: _add_fn, torch.add: _add_fn,
    operator.sub: _sub_fn, torch.sub: _sub_fn,
    operator.mul: _mul_fn, torch.mul: _mul_fn,
    operator.truediv: _div_fn, torch.div: _div_fn,
    operator.neg: _neg_fn, torch.neg: _neg_fn,
    operator.matmul: _matmul_fn, torch.matmul: _matmul_fn,
    F.linear: _linear_fn,
    F.conv1d: _conv_fn, F.conv2d: _conv_fn,
    torch.cat: _cat_fn, torch.concat: _cat_fn,
    F.pad: _pad_fn,
    torch.relu: _activation("relu"), F.relu: _activation("relu"),
    F.leaky_relu: _leaky_fn,
    F.hardtanh: _hardtanh_fn,
    torch.clamp: _clamp, torch.clip: _clamp,
    torch.sigmoid: _activation("sigmoid"), F.sigmoid: _activation("sigmoid"),
    torch.tanh: _activation("tanh"), F.tanh: _activation("tanh"),
    torch.atan: _activation("atan"),
    F.max_pool2d: _maxpool_fn,
    F.avg_pool2d: _avg_pool_fn,
    torch.reshape: _reshape_like, torch.flatten: _reshape_like,
    torch.permute: _index_like, torch.transpose: _index_like, torch.squeeze: _index_like,
    torch.unsqueeze: _index_like, operator.getitem: _index_like, torch.narrow: _index_like,
    getattr: _shape_query,
    torch.zeros_like: _const_like, torch.ones_like: _const_like, torch.full_like: _const_like,
}

_METHOD_AS_FUNCTION: dict[str, Any] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "matmul": torch.matmul,
    "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "clamp": torch.clamp, "clip": torch.clamp,
}

METHOD_RULES: dict[str, Callable[..., Any]] = {
    **{name: _method(name) for name in _METHOD_AS_FUNCTION},
    "reshape": _reshape_like, "view": _reshape_like, "flatten": _reshape_like,
    "permute": _index_like, "transpose": _index_like, "squeeze": _index_like, "unsqueeze": _index_like,
    "expand": _index_like, "expand_as": _index_like, "repeat": _index_like,
    "contiguous": _identity, "float": _identity, "double": _identity, "to": _identity,
    "dim": _shape_query, "size": _shape_query,
}
