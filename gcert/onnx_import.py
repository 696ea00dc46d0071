"""Convert an ONNX network into a ``torch.fx.GraphModule`` built from a small, fixed op vocabulary.

Certifiers lower that graph to primitive operations, so the importer never emits anything outside it.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from gcert.errors import ModelLoadError, UnsupportedOperatorError, one_line

__all__ = [
    "FUNCTION_VOCABULARY",
    "MODULE_VOCABULARY",
    "SUPPORTED_ONNX_OPS",
    "load_onnx",
]

#: ``call_module`` targets of an imported graph are instances of exactly these classes.
MODULE_VOCABULARY: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.Softmax,
    nn.Identity,
)

#: ``call_function`` targets of an imported graph are among these; no ``call_method`` nodes are emitted.
#: Constant tensor operands (of add, sub, mul, div, matmul) are ``get_attr`` nodes on float32 buffers;
#: other arguments are Python ints, floats, tuples and slices.
FUNCTION_VOCABULARY: tuple[Callable[..., Any], ...] = (
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.matmul,
    torch.reshape,
    torch.permute,
    torch.cat,
    torch.flatten,
    torch.clamp,
    torch.squeeze,
    torch.unsqueeze,
    torch.atan,
    operator.getitem,
    F.pad,
)

OnnxSource = str | os.PathLike | onnx.ModelProto

# Ops whose output would differ from run to run; folding them would freeze one sample.
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)
# Clip in opsets < 11 uses +-FLT_MAX as "no bound".
_FLT_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class _Tensor:
    """A batched value in the graph under construction; ``example`` holds it for batch size 1."""

    node: fx.Node
    example: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape (without the batch axis)."""
        return tuple(self.example.shape[1:])

    @property
    def rank(self) -> int:
        """Rank including the batch axis, as ONNX sees it."""
        return self.example.dim()


_Value = _Tensor | np.ndarray

# fx re-applies these attributes on deepcopy; pickling keeps them through the instance __dict__.
_PRESERVED_KEY: str = getattr(fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")


class _Builder:
    """Holds the fx graph, its owning module and the ONNX name -> value environment."""

    def __init__(self, model: onnx.ModelProto, model_name: str):
        self.model = model
        self.model_name = model_name
        self.opset = _default_opset(model)
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, _Value] = {}
        self._counts: dict[str, int] = {}
        self.uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for out in model.graph.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1

    def fresh(self, prefix: str) -> str:
        i = self._counts.get(prefix, 0)
        self._counts[prefix] = i + 1
        return f"{prefix}_{i}"

    def module(self, prefix: str, module: nn.Module, *args: Any) -> _Tensor:
        name = self.fresh(prefix)
        module.eval()
        self.root.add_module(name, module)
        node = self.graph.call_module(name, tuple(_fx_arg(a) for a in args))
        with torch.no_grad():
            example = module(*(_example_arg(a) for a in args))
        return _Tensor(node, example)

    def function(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> _Tensor:
        node = self.graph.call_function(
            fn, tuple(_fx_arg(a) for a in args), {k: _fx_arg(v) for k, v in kwargs.items()}
        )
        with torch.no_grad():
            example = fn(
                *(_example_arg(a) for a in args), **{k: _example_arg(v) for k, v in kwargs.items()}
            )
        return _Tensor(node, example)

    def constant(self, array: np.ndarray) -> _ConstOperand:
        name = self.fresh("const")
        tensor = torch.tensor(np.asarray(array, dtype=np.float32))
        self.root.register_buffer(name, tensor)
        return _ConstOperand(self.graph.get_attr(name), tensor)


@dataclass(frozen=True)
class _ConstOperand:
    """A constant already placed in the graph as a ``get_attr`` buffer."""

    node: fx.Node
    example: torch.Tensor


def _scalar(array: np.ndarray) -> float:
    return float(np.asarray(array).reshape(-1)[0])


def _fx_arg(a: Any) -> Any:
    if isinstance(a, (_Tensor, _ConstOperand)):
        return a.node
    if isinstance(a, (list, tuple)):
        return type(a)(_fx_arg(v) for v in a)
    return a


def _example_arg(a: Any) -> Any:
    if isinstance(a, (_Tensor, _ConstOperand)):
        return a.example
    if isinstance(a, (list, tuple)):
        return type(a)(_example_arg(v) for v in a)
    return a


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else 1


class _NodeCtx:
    """One ONNX node being converted: its attributes, inputs and error reporting."""

    def __init__(self, builder: _Builder, node: onnx.NodeProto):
        self.b = builder
        self.node = node
        self.op = node.op_type
        self.attrs: dict[str, Any] = {}
        for attr in node.attribute:
            value = onnx.helper.get_attribute_value(attr)
            self.attrs[attr.name] = value.decode() if isinstance(value, bytes) else value

    @property
    def where(self) -> str:
        label = self.node.name or f"{self.op} -> {self.node.output[0] if self.node.output else '?'}"
        return f"ONNX node {label!r} of {self.b.model_name}"

    def unsupported(self, hint: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(self.op, self.where, hint=hint)

    def has_input(self, i: int) -> bool:
        return len(self.node.input) > i and bool(self.node.input[i])

    def value(self, i: int) -> _Value:
        name = self.node.input[i]
        if name not in self.b.env:
            raise ModelLoadError(f"{self.where} reads {name!r}, which no earlier node or input defines")
        return self.b.env[name]

    def tensor(self, i: int) -> _Tensor:
        v = self.value(i)
        if not isinstance(v, _Tensor):
            raise self.unsupported(f"input {i} must depend on the network input here")
        return v

    def const(self, i: int, what: str) -> np.ndarray:
        v = self.value(i)
        if isinstance(v, _Tensor):
            raise self.unsupported(f"{what} (input {i}) must be a constant")
        return v

    def optional_const(self, i: int, what: str) -> np.ndarray | None:
        return self.const(i, what) if self.has_input(i) else None

    def axis(self, axis: int, rank: int, *, batch_ok: bool = False) -> int:
        """Normalise an ONNX axis; axis 0 is the batch axis and most ops must not touch it."""
        a = axis + rank if axis < 0 else axis
        if not 0 <= a < rank:
            raise ModelLoadError(f"{self.where}: axis {axis} is out of range for rank {rank}")
        if a == 0 and not batch_ok:
            raise self.unsupported("it acts on axis 0, which the importer treats as the batch axis")
        return a

    def only_first_output_used(self) -> None:
        for name in self.node.output[1:]:
            if name and self.b.uses.get(name, 0):
                raise self.unsupported(f"its extra output {name!r} is used; only the first output is")


_Converter = Callable[[_NodeCtx], Sequence[_Value]]


# --- elementwise -------------------------------------------------------------------------------


def _lift(b: _Builder, t: _Tensor, rank: int) -> _Tensor:
    """Insert size-1 axes after the batch axis so that ONNX broadcasting never aligns the batch axis
    of ``t`` with a per-sample axis of a higher-rank operand."""
    if t.rank >= rank:
        return t
    return b.function(torch.reshape, t, (-1, *([1] * (rank - t.rank)), *t.shape))


def _binary(fn: Callable[..., Any]) -> _Converter:
    def convert(c: _NodeCtx) -> list[_Value]:
        lhs, rhs = c.value(0), c.value(1)
        rank = max(np.ndim(v) if isinstance(v, np.ndarray) else v.rank for v in (lhs, rhs))
        operands: list[Any] = []
        for v in (lhs, rhs):
            if isinstance(v, _Tensor):
                operands.append(_lift(c.b, v, rank))
                continue
            if v.ndim == rank and v.shape[0] != 1:
                shape = list(v.shape)
                raise c.unsupported(f"a constant of shape {shape} would broadcast over the batch axis")
            operands.append(v)
        folded = _fold_bias(c, fn, operands)
        if folded is not None:
            return [folded]
        args = [c.b.constant(v) if isinstance(v, np.ndarray) else v for v in operands]
        return [c.b.function(fn, *args)]

    return convert


def _fold_bias(c: _NodeCtx, fn: Callable[..., Any], operands: list[Any]) -> _Tensor | None:
    """Merge ``MatMul`` + ``Add(bias)`` (how exporters write a Linear on rank > 2 inputs) into one
    nn.Linear, which certifiers handle better than a separate broadcast add."""
    if fn is not torch.add:
        return None
    tensors = [v for v in operands if isinstance(v, _Tensor)]
    consts = [v for v in operands if isinstance(v, np.ndarray)]
    if len(tensors) != 1 or len(consts) != 1:
        return None
    t, bias = tensors[0], consts[0]
    if t.node.op != "call_module":
        return None
    linear = c.b.root.get_submodule(str(t.node.target))
    # Every ONNX name bound to this value (Identity aliases too) must feed only this Add.
    uses = sum(c.b.uses.get(name, 0) for name, v in c.b.env.items() if v is t)
    if not isinstance(linear, nn.Linear) or linear.bias is not None or uses != 1:
        return None
    if any(d != 1 for d in bias.shape[:-1]):
        return None
    if bias.ndim and bias.shape[-1] not in (1, linear.out_features):
        return None
    vector = np.broadcast_to(np.asarray(bias, dtype=np.float32).reshape(-1), (linear.out_features,))
    linear.bias = nn.Parameter(torch.tensor(vector))
    with torch.no_grad():
        return _Tensor(t.node, t.example + linear.bias)


def _module_op(prefix: str, factory: Callable[[_NodeCtx], nn.Module]) -> _Converter:
    def convert(c: _NodeCtx) -> list[_Value]:
        return [c.b.module(prefix, factory(c), c.tensor(0))]

    return convert


def _atan(c: _NodeCtx) -> list[_Value]:
    return [c.b.function(torch.atan, c.tensor(0))]


def _clip(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    if c.b.opset < 11:
        lo, hi = float(c.attrs.get("min", -math.inf)), float(c.attrs.get("max", math.inf))
    else:
        lo_arr, hi_arr = c.optional_const(1, "min"), c.optional_const(2, "max")
        lo = -math.inf if lo_arr is None or lo_arr.size == 0 else _scalar(lo_arr)
        hi = math.inf if hi_arr is None or hi_arr.size == 0 else _scalar(hi_arr)
    lo_v = None if lo <= -_FLT_MAX else lo
    hi_v = None if hi >= _FLT_MAX else hi
    if lo_v is not None and hi_v is not None and lo_v < hi_v:
        return [c.b.module("hardtanh", nn.Hardtanh(lo_v, hi_v), x)]
    if lo_v is None and hi_v is None:
        return [x]
    return [c.b.function(torch.clamp, x, min=lo_v, max=hi_v)]


# --- linear layers -----------------------------------------------------------------------------


def _gemm(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    weight = c.const(1, "B")
    if c.attrs.get("transA", 0):
        raise c.unsupported("transA=1 would move the batch axis; export with transA=0")
    alpha, beta = float(c.attrs.get("alpha", 1.0)), float(c.attrs.get("beta", 1.0))
    w = weight if c.attrs.get("transB", 0) else weight.T
    w = (w.astype(np.float64) * alpha).astype(np.float32)
    n_out, n_in = w.shape
    if x.shape != (n_in,):
        raise ModelLoadError(
            f"{c.where}: input of shape {list(x.shape)} does not fit B of shape {list(weight.shape)}")
    bias = c.optional_const(2, "C")
    linear = nn.Linear(n_in, n_out, bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        if bias is not None:
            try:
                vec = np.broadcast_to(bias, (1, n_out)).reshape(n_out).astype(np.float64) * beta
            except ValueError:
                raise c.unsupported(f"C of shape {list(bias.shape)} varies along the batch axis") from None
            linear.bias.copy_(torch.from_numpy(vec.astype(np.float32)))
    return [c.b.module("linear", linear, x)]


def _matmul(c: _NodeCtx) -> list[_Value]:
    a, bv = c.value(0), c.value(1)
    if isinstance(a, _Tensor) and isinstance(bv, np.ndarray):
        if a.rank < 2:
            raise c.unsupported("a rank-1 left operand would use the batch axis as its inner dimension")
        if bv.ndim == 2:
            linear = nn.Linear(bv.shape[0], bv.shape[1], bias=False)
            with torch.no_grad():
                linear.weight.copy_(torch.tensor(np.asarray(bv.T, dtype=np.float32)))
            return [c.b.module("linear", linear, a)]
        if bv.ndim > a.rank or (bv.ndim == a.rank and bv.shape[0] != 1):
            raise c.unsupported(f"a constant of shape {list(bv.shape)} would broadcast over the batch axis")
        return [c.b.function(torch.matmul, a, c.b.constant(bv))]
    if isinstance(a, np.ndarray) and isinstance(bv, _Tensor):
        if bv.rank < 3 or a.ndim > bv.rank or (a.ndim == bv.rank and a.shape[0] != 1):
            raise c.unsupported("with a constant left operand the right one needs batch + 2 matrix axes")
        return [c.b.function(torch.matmul, c.b.constant(a), bv)]
    assert isinstance(a, _Tensor) and isinstance(bv, _Tensor)
    if a.rank < 3 or bv.rank < 3:
        raise c.unsupported("a product of two tensors needs the batch axis plus two matrix axes on both")
    rank = max(a.rank, bv.rank)
    return [c.b.function(torch.matmul, _lift(c.b, a, rank), _lift(c.b, bv, rank))]


# --- convolutions and pooling ------------------------------------------------------------------


def _resolve_pads(c: _NodeCtx, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Begin/end padding per spatial axis, with ``auto_pad`` worked out from the static input size."""
    k = len(kernel)
    auto = c.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(c.attrs.get("pads", [0] * 2 * k))
        return pads[:k], pads[k:]
    if auto == "VALID":
        return [0] * k, [0] * k
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise c.unsupported(f"auto_pad={auto!r} is not an ONNX padding mode")
    begin, end = [], []
    for size, kk, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (kk - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin, end


def _torch_pads(begin: Sequence[int], end: Sequence[int]) -> tuple[int, ...]:
    """ONNX (begin..., end...) per axis -> torch ``F.pad`` order (last axis first)."""
    out: list[int] = []
    for b0, e0 in zip(reversed(begin), reversed(end), strict=True):
        out += [int(b0), int(e0)]
    return tuple(out)


def _pad_spatial(b: _Builder, x: _Tensor, begin: Sequence[int], end: Sequence[int], value: float) -> _Tensor:
    pads = _torch_pads(begin, end)
    if not any(pads):
        return x
    if x.rank == 4:
        module = nn.ZeroPad2d(pads) if value == 0 else nn.ConstantPad2d(pads, value)
        return b.module("pad", module, x)
    return b.function(F.pad, x, pads, "constant", value)


def _conv_operands(c: _NodeCtx, what: str) -> tuple[_Tensor, np.ndarray, np.ndarray | None, int, list[int],
                                                    list[int], list[int], int]:
    """Input, weight, bias, spatial rank, kernel, strides, dilations and group of a Conv/ConvTranspose node."""
    x = c.tensor(0)
    weight = c.const(1, "the weight")
    bias = c.optional_const(2, "the bias")
    k = weight.ndim - 2
    if k not in (1, 2) or x.rank != k + 2:
        raise c.unsupported(f"only 1-D and 2-D {what} are supported, not {k}-D")
    kernel = list(weight.shape[2:])
    strides = list(c.attrs.get("strides", [1] * k))
    dilations = list(c.attrs.get("dilations", [1] * k))
    return x, weight, bias, k, kernel, strides, dilations, int(c.attrs.get("group", 1))


def _conv(c: _NodeCtx) -> list[_Value]:
    x, weight, bias, k, kernel, strides, dilations, group = _conv_operands(c, "convolutions")
    begin, end = _resolve_pads(c, x.shape[1:], kernel, strides, dilations)
    padding = begin
    if begin != end:
        x = _pad_spatial(c.b, x, begin, end, 0.0)
        padding = [0] * k
    cls = nn.Conv1d if k == 1 else nn.Conv2d
    conv = cls(weight.shape[1] * group, weight.shape[0], kernel, stride=strides, padding=padding,
               dilation=dilations, groups=group, bias=bias is not None)
    _set_params(conv, weight, bias)
    return [c.b.module("conv", conv, x)]


def _set_params(module: nn.Module, weight: np.ndarray, bias: np.ndarray | None) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.tensor(np.asarray(weight, dtype=np.float32)))
        if bias is not None:
            module.bias.copy_(torch.tensor(np.asarray(bias, dtype=np.float32)))


def _conv_transpose(c: _NodeCtx) -> list[_Value]:
    x, weight, bias, k, kernel, strides, dilations, group = _conv_operands(c, "transposed convolutions")
    out_pad = list(c.attrs.get("output_padding", [0] * k))
    spatial = x.shape[1:]
    full = [s * (n - 1) + op + (kk - 1) * d + 1
            for n, kk, s, d, op in zip(spatial, kernel, strides, dilations, out_pad, strict=True)]
    auto = c.attrs.get("auto_pad", "NOTSET")
    if "output_shape" in c.attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = list(c.attrs["output_shape"])[-k:] if "output_shape" in c.attrs else [
            n * s for n, s in zip(spatial, strides, strict=True)]
        totals = [f - w for f, w in zip(full, wanted, strict=True)]
        if any(t < 0 for t in totals):
            raise c.unsupported(f"output_shape {wanted} is larger than the transposed convolution produces")
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]
        end = [t - b0 for t, b0 in zip(totals, begin, strict=True)]
    elif auto == "VALID":
        begin = end = [0] * k
    else:
        pads = list(c.attrs.get("pads", [0] * 2 * k))
        begin, end = pads[:k], pads[k:]
    if any(op >= max(s, d) for op, s, d in zip(out_pad, strides, dilations, strict=True)):
        raise c.unsupported("output_padding must be smaller than the stride or the dilation")
    symmetric = begin == end
    cls = nn.ConvTranspose1d if k == 1 else nn.ConvTranspose2d
    conv = cls(weight.shape[0], weight.shape[1] * group, kernel, stride=strides,
               padding=begin if symmetric else 0, output_padding=out_pad, groups=group,
               bias=bias is not None, dilation=dilations)
    _set_params(conv, weight, bias)
    y = c.b.module("conv_transpose", conv, x)
    if symmetric:
        return [y]
    # Torch pads only symmetrically: compute the uncropped result and cut ONNX's padding off it.
    crop = [slice(b0, f - e0) for b0, e0, f in zip(begin, end, full, strict=True)]
    index = (slice(None), slice(None), *crop)
    return [c.b.function(operator.getitem, y, index)]


def _pool_geometry(c: _NodeCtx, x: _Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    kernel = list(c.attrs["kernel_shape"])
    k = len(kernel)
    if k not in (1, 2) or x.rank != k + 2:
        raise c.unsupported(f"only 1-D and 2-D pooling is supported, not {k}-D")
    strides = list(c.attrs.get("strides", [1] * k))
    dilations = list(c.attrs.get("dilations", [1] * k))
    begin, end = _resolve_pads(c, x.shape[1:], kernel, strides, dilations)
    return kernel, strides, dilations, begin, end


def _as_2d(b: _Builder, x: _Tensor, values: Sequence[list[int]], fill: Sequence[int]) -> tuple[_Tensor, list]:
    """Treat a 1-D pooling as 2-D pooling over a height-1 image; only 2-D pooling is in the vocabulary."""
    if x.rank == 4:
        return x, list(values)
    lifted = b.function(torch.unsqueeze, x, 2)
    return lifted, [[f, *v] for v, f in zip(values, fill, strict=True)]


def _pool(kind: str) -> _Converter:
    def convert(c: _NodeCtx) -> list[_Value]:
        c.only_first_output_used()
        x0 = c.tensor(0)
        kernel, strides, dilations, begin, end = _pool_geometry(c, x0)
        ceil = bool(c.attrs.get("ceil_mode", 0))
        onnx_out = [_pool_out(n, kk, s, d, b0 + e0, ceil) for n, kk, s, d, b0, e0 in
                    zip(x0.shape[1:], kernel, strides, dilations, begin, end, strict=True)]
        x, (kernel, strides, dilations, begin, end) = _as_2d(
            c.b, x0, [kernel, strides, dilations, begin, end], [1, 1, 1, 0, 0])
        direct = begin == end and all(p <= kk // 2 for p, kk in zip(begin, kernel, strict=True))
        include = bool(c.attrs.get("count_include_pad", 0))
        if kind == "avg":
            if any(d != 1 for d in dilations):
                raise c.unsupported("dilated AveragePool is not supported")
            if direct:
                y = c.b.module("avgpool", nn.AvgPool2d(kernel, strides, begin, ceil_mode=ceil,
                                                       count_include_pad=include), x)
            else:
                if ceil:
                    raise c.unsupported("ceil_mode=1 with asymmetric or large pads is not supported")
                padded = _pad_spatial(c.b, x, begin, end, 0.0)
                y = c.b.module("avgpool", nn.AvgPool2d(kernel, strides, 0, count_include_pad=True), padded)
                if not include:
                    # Average over the real (non-pad) cells only: rescale by window area / real count.
                    y = c.b.function(torch.mul, y, c.b.constant(_pad_rescale(x.shape[1:], kernel, strides,
                                                                              begin, end)))
        else:
            if direct:
                y = c.b.module("maxpool", nn.MaxPool2d(kernel, strides, begin, dilations, ceil_mode=ceil), x)
            else:
                if ceil:
                    raise c.unsupported("ceil_mode=1 with asymmetric or large pads is not supported")
                padded = _pad_spatial(c.b, x, begin, end, -math.inf)
                y = c.b.module("maxpool", nn.MaxPool2d(kernel, strides, 0, dilations), padded)
        if x0.rank == 3:
            y = c.b.function(torch.squeeze, y, 2)
        if list(y.shape[1:]) != onnx_out:
            raise c.unsupported(f"torch pooling gives spatial size {list(y.shape[1:])}, ONNX {onnx_out}")
        return [y]

    return convert


def _pool_out(n: int, k: int, s: int, d: int, pad: int, ceil: bool) -> int:
    span = n + pad - ((k - 1) * d + 1)
    out = (-(-span // s) if ceil else span // s) + 1
    # As in ONNX Runtime and torch: the last window must start inside the input or its left padding.
    if ceil and (out - 1) * s >= n + pad - pad // 2:
        out -= 1
    return out


def _pad_rescale(spatial: Sequence[int], kernel: list[int], strides: list[int], begin: list[int],
                 end: list[int]) -> np.ndarray:
    ones = torch.ones(1, 1, *spatial)
    padded = F.pad(ones, _torch_pads(begin, end))
    counts = F.avg_pool2d(padded, kernel, strides) * float(np.prod(kernel))
    return (float(np.prod(kernel)) / counts)[0, 0].numpy()


def _global_pool(kind: str) -> _Converter:
    def convert(c: _NodeCtx) -> list[_Value]:
        x0 = c.tensor(0)
        if x0.rank not in (3, 4):
            raise c.unsupported("only 1-D and 2-D global pooling is supported")
        x = x0 if x0.rank == 4 else c.b.function(torch.unsqueeze, x0, 2)
        kernel = tuple(x.shape[1:])
        pool = nn.AvgPool2d(kernel) if kind == "avg" else nn.MaxPool2d(kernel)
        y = c.b.module(f"{kind}pool", pool, x)
        return [y if x0.rank == 4 else c.b.function(torch.squeeze, y, 2)]

    return convert


def _batchnorm(c: _NodeCtx) -> list[_Value]:
    c.only_first_output_used()
    if c.attrs.get("training_mode", 0):
        raise c.unsupported("training_mode=1 is not supported; export the model in eval mode")
    if not c.attrs.get("spatial", 1):
        raise c.unsupported("spatial=0 (per-position statistics) is not supported")
    x = c.tensor(0)
    scale, shift = c.const(1, "scale"), c.const(2, "B")
    mean, var = c.const(3, "mean"), c.const(4, "var")
    if x.rank not in (2, 3, 4):
        raise c.unsupported(f"BatchNormalization on rank {x.rank} inputs is not supported")
    cls = nn.BatchNorm2d if x.rank == 4 else nn.BatchNorm1d
    bn = cls(int(scale.shape[0]), eps=float(c.attrs.get("epsilon", 1e-5)))
    with torch.no_grad():
        pairs = ((bn.weight, scale), (bn.bias, shift), (bn.running_mean, mean), (bn.running_var, var))
        for param, arr in pairs:
            param.copy_(torch.tensor(np.asarray(arr, dtype=np.float32)))
    return [c.b.module("batchnorm", bn, x)]


# --- shape manipulation ------------------------------------------------------------------------


def _reshape_to(b: _Builder, x: _Tensor, shape: Sequence[int]) -> _Tensor:
    if tuple(shape) == x.shape:
        return x
    return b.function(torch.reshape, x, (-1, *(int(s) for s in shape)))


def _flatten(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    axis = int(c.attrs.get("axis", 1))
    axis = axis + x.rank if axis < 0 else axis
    if axis > 1 and int(np.prod(x.shape[: axis - 1])) != 1:
        raise c.unsupported(f"axis={axis} would merge the batch axis into the rows")
    if len(x.shape) == 1:
        return [x]
    return [c.b.module("flatten", nn.Flatten(1, -1), x)]


def _reshape(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    target = [int(s) for s in (c.attrs["shape"] if c.b.opset < 5 else c.const(1, "the target shape"))]
    full_in = (1, *x.shape)
    allow_zero = bool(c.attrs.get("allowzero", 0))
    out = [full_in[i] if s == 0 and not allow_zero else s for i, s in enumerate(target)]
    if -1 in out:
        known = int(np.prod([s for s in out if s != -1]))
        out[out.index(-1)] = int(np.prod(full_in)) // known if known else 0
    if int(np.prod(out)) != int(np.prod(full_in)):
        raise ModelLoadError(f"{c.where}: cannot reshape {list(full_in)} to {target}")
    if not out or out[0] != 1:
        raise c.unsupported(f"target shape {target} does not keep the batch axis first; "
                            "reshape to (-1 or 1 or 0, ...) instead")
    return [_reshape_to(c.b, x, out[1:])]


def _transpose(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    perm = [int(p) for p in c.attrs.get("perm", list(reversed(range(x.rank))))]
    if perm[0] != 0:
        raise c.unsupported(f"perm={perm} moves the batch axis; only permutations keeping axis 0 first")
    if perm == list(range(x.rank)):
        return [x]
    return [c.b.function(torch.permute, x, tuple(perm))]


def _pad(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    mode = c.attrs.get("mode", "constant")
    if mode != "constant":
        raise c.unsupported(f"only mode='constant' is supported, not {mode!r}")
    if c.b.opset < 11:
        pads = [int(p) for p in c.attrs.get("pads", c.attrs.get("paddings", []))]
        value = float(c.attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in c.const(1, "pads")]
        const_value = c.optional_const(2, "constant_value")
        value = 0.0 if const_value is None or const_value.size == 0 else _scalar(const_value)
        axes = c.optional_const(3, "axes")
        if axes is not None:
            full = [0] * (2 * x.rank)
            for i, a in enumerate(int(v) for v in axes):
                a = c.axis(a, x.rank, batch_ok=True)
                full[a], full[a + x.rank] = pads[i], pads[i + len(axes)]
            pads = full
    begin, end = pads[: x.rank], pads[x.rank:]
    if begin[0] or end[0]:
        raise c.unsupported("it pads the batch axis")
    if any(p < 0 for p in pads):
        raise c.unsupported("negative (cropping) pads are not supported")
    torch_pads = _torch_pads(begin, end)
    while torch_pads and not any(torch_pads[-2:]):
        torch_pads = torch_pads[:-2]
    if not torch_pads:
        return [x]
    if x.rank == 4 and len(torch_pads) <= 4:
        torch_pads = (*torch_pads, 0, 0, 0, 0)[:4]
        module = nn.ZeroPad2d(torch_pads) if value == 0 else nn.ConstantPad2d(torch_pads, value)
        return [c.b.module("pad", module, x)]
    return [c.b.function(F.pad, x, torch_pads, "constant", value)]


def _concat(c: _NodeCtx) -> list[_Value]:
    values = [c.value(i) for i in range(len(c.node.input)) if c.has_input(i)]
    if any(not isinstance(v, _Tensor) for v in values):
        raise c.unsupported("concatenating a constant with a batched tensor is not supported")
    tensors: list[_Tensor] = values  # type: ignore[assignment]
    if len(tensors) == 1:
        return [tensors[0]]
    axis = c.axis(int(c.attrs["axis"]), tensors[0].rank)
    return [c.b.function(torch.cat, tensors, axis)]


def _squeeze(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    raw = c.attrs.get("axes") if c.b.opset < 13 else c.optional_const(1, "axes")
    if raw is None:
        # Without axes ONNX drops every size-1 axis; the batch axis is kept so any batch size works.
        axes = tuple(i + 1 for i, s in enumerate(x.shape) if s == 1)
    else:
        axes = tuple(sorted(c.axis(int(a), x.rank) for a in np.asarray(raw).reshape(-1)))
    if not axes:
        return [x]
    return [c.b.function(torch.squeeze, x, axes if len(axes) > 1 else axes[0])]


def _unsqueeze(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    raw = c.attrs.get("axes") if c.b.opset < 13 else c.const(1, "axes")
    raw = np.asarray(raw).reshape(-1)
    rank = x.rank + len(raw)
    axes = sorted(c.axis(int(a), rank) for a in raw)
    if len(axes) == 1:
        return [c.b.function(torch.unsqueeze, x, axes[0])]
    shape = list(x.shape)
    for a in axes:
        shape.insert(a - 1, 1)
    return [_reshape_to(c.b, x, shape)]


def _softmax(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    if c.b.opset >= 13:
        axis = c.axis(int(c.attrs.get("axis", -1)), x.rank)
        return [c.b.module("softmax", nn.Softmax(dim=axis), x)]
    # Before opset 13 Softmax flattens the axes from `axis` on into one and normalises over it.
    axis = int(c.attrs.get("axis", 1))
    axis = max(axis + x.rank if axis < 0 else axis, 1)
    if axis == x.rank - 1:
        return [c.b.module("softmax", nn.Softmax(dim=axis), x)]
    flat = _reshape_to(c.b, x, (*x.shape[: axis - 1], int(np.prod(x.shape[axis - 1:]))))
    y = c.b.module("softmax", nn.Softmax(dim=-1), flat)
    return [_reshape_to(c.b, y, x.shape)]


def _passthrough(c: _NodeCtx) -> list[_Value]:
    c.only_first_output_used()
    if c.op == "Dropout" and c.has_input(2) and bool(np.asarray(c.const(2, "training_mode")).item()):
        raise c.unsupported("training_mode=True is not supported")
    return [c.value(0)]


def _cast(c: _NodeCtx) -> list[_Value]:
    if int(c.attrs["to"]) not in _FLOAT_TYPES:
        raise c.unsupported("casting a batched tensor to a non-float type is not supported")
    return [c.tensor(0)]


def _shape(c: _NodeCtx) -> list[_Value]:
    # The per-sample shape is static and ONNX models declare batch 1, so the shape is a constant.
    full = np.array((1, *c.tensor(0).shape), dtype=np.int64)
    start, end = int(c.attrs.get("start", 0)), c.attrs.get("end")
    return [full[start: None if end is None else int(end)]]


def _size(c: _NodeCtx) -> list[_Value]:
    return [np.array(int(np.prod(c.tensor(0).shape)), dtype=np.int64)]


def _gather(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    indices = np.asarray(c.const(1, "indices")).astype(np.int64)
    axis = c.axis(int(c.attrs.get("axis", 0)), x.rank)
    size = x.example.shape[axis]
    indices = np.where(indices < 0, indices + size, indices)
    index = indices.item() if indices.ndim == 0 else indices.tolist()
    return [c.b.function(operator.getitem, x, (*([slice(None)] * axis), index))]


def _slice(c: _NodeCtx) -> list[_Value]:
    x = c.tensor(0)
    if c.b.opset < 10:
        starts, ends = list(c.attrs["starts"]), list(c.attrs["ends"])
        axes = list(c.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in c.const(1, "starts")]
        ends = [int(v) for v in c.const(2, "ends")]
        axes_arr, steps_arr = c.optional_const(3, "axes"), c.optional_const(4, "steps")
        axes = list(range(len(starts))) if axes_arr is None else [int(v) for v in axes_arr]
        steps = [1] * len(starts) if steps_arr is None else [int(v) for v in steps_arr]
    index: list[slice] = [slice(None)] * x.rank
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        a = c.axis(int(a), x.rank, batch_ok=True)
        if st <= 0:
            raise c.unsupported("only positive Slice steps are supported")
        lo, hi, _ = slice(int(s), int(e), int(st)).indices(int(x.example.shape[a]))
        if a == 0:
            if (lo, hi) != (0, 1):
                raise c.unsupported("it slices the batch axis")
            continue
        index[a] = slice(lo, hi, st)
    if all(i == slice(None) for i in index):
        return [x]
    return [c.b.function(operator.getitem, x, tuple(index))]


def _leaky(c: _NodeCtx) -> nn.Module:
    return nn.LeakyReLU(float(c.attrs.get("alpha", 0.01)))


_CONVERTERS: dict[str, _Converter] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Relu": _module_op("relu", lambda c: nn.ReLU()),
    "LeakyRelu": _module_op("leaky_relu", _leaky),
    "Sigmoid": _module_op("sigmoid", lambda c: nn.Sigmoid()),
    "Tanh": _module_op("tanh", lambda c: nn.Tanh()),
    "Atan": _atan,
    "Clip": _clip,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batchnorm,
    "AveragePool": _pool("avg"),
    "MaxPool": _pool("max"),
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Pad": _pad,
    "Concat": _concat,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Softmax": _softmax,
    "Identity": _passthrough,
    "Dropout": _passthrough,
    "Cast": _cast,
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "Slice": _slice,
}

#: ONNX op types the importer converts when an input depends on the network input.  Any other op
#: (e.g. ``Constant``, ``ConstantOfShape``, ``Range``) is accepted when all its inputs are constants:
#: it is then evaluated once at import time.
SUPPORTED_ONNX_OPS: frozenset[str] = frozenset(_CONVERTERS) | {"Constant"}


# --- driver ------------------------------------------------------------------------------------


def _read(source: OnnxSource) -> tuple[onnx.ModelProto, str, str]:
    if isinstance(source, onnx.ModelProto):
        name = source.graph.name or "<in-memory ONNX model>"
        return source, name, f"<in-memory ONNX model {name}>"
    path = Path(source)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf and I/O raise many unrelated types
        raise ModelLoadError(f"cannot read ONNX model {path}: {one_line(exc, with_type=False)}") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"cannot read ONNX model {path}: it holds no graph")
    return model, path.name, str(path)


def _fold(c: _NodeCtx) -> list[_Value]:
    """Evaluate a node whose inputs are all constants once, with the ONNX reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    node = c.node
    feeds = {name: c.b.env[name] for name in node.input if name}
    try:
        evaluator = ReferenceEvaluator(node, opsets={"": c.b.opset})
        results = evaluator.run(None, feeds)
    except Exception as exc:  # the reference evaluator raises arbitrary types for unknown ops
        raise c.unsupported(f"evaluating it on constant inputs failed ({one_line(exc)})") from None
    return [np.asarray(r) for r in results]


def _input_shape(value: onnx.ValueInfoProto, where: str) -> tuple[int, ...]:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor_type.elem_type not in _FLOAT_TYPES:
        raise ModelLoadError(f"input {value.name!r} of {where} is not a float tensor")
    dims = tensor_type.shape.dim
    if len(dims) < 1:
        raise ModelLoadError(f"input {value.name!r} of {where} has no batch axis")
    shape = []
    for i, d in enumerate(dims[1:], start=1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise ModelLoadError(f"input {value.name!r} of {where} has a dynamic axis {i}; "
                                 "fix it (e.g. onnxsim --overwrite-input-shape) before loading")
        shape.append(int(d.dim_value))
    return tuple(shape)


def load_onnx(path_or_model: OnnxSource) -> fx.GraphModule:
    """Convert an ONNX model with one float input and one output into an eval-mode float32 GraphModule.

    Axis 0 of the ONNX input and output is the batch axis: the result accepts ``(B, *input_shape)``
    for any ``B``.  The module carries ``input_shape`` and ``output_shape`` (per sample, no batch axis)
    and ``source`` (the path, or a description of an in-memory model); they survive ``pickle`` and
    ``copy.deepcopy`` because they are also recorded in ``meta`` as fx's user-preserved attributes.

    Raises ``ModelLoadError`` for unreadable files and models with several inputs or outputs, and
    ``UnsupportedOperatorError`` for ops outside ``SUPPORTED_ONNX_OPS``.
    """
    model, model_name, source = _read(path_or_model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ModelLoadError(f"ONNX model {model_name} has {len(inputs)} graph inputs; one is supported")
    if len(graph.output) != 1:
        raise ModelLoadError(f"ONNX model {model_name} has {len(graph.output)} outputs; one is supported")
    input_shape = _input_shape(inputs[0], model_name)

    b = _Builder(model, model_name)
    try:
        for name, init in initializers.items():
            b.env[name] = numpy_helper.to_array(init)
    except Exception as exc:
        raise ModelLoadError(f"cannot read ONNX model {source}: initializer {name!r}: {exc}") from None
    placeholder = b.graph.placeholder("x")
    b.env[inputs[0].name] = _Tensor(placeholder, torch.zeros(1, *input_shape))

    for node in graph.node:
        c = _NodeCtx(b, node)
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperatorError(f"{node.domain}.{node.op_type}", c.where,
                                           hint="only the default ONNX domain is supported")
        for name in node.input:
            if name and name not in b.env:
                raise ModelLoadError(f"{c.where} reads {name!r}, which no earlier node or input defines")
        constant_inputs = all(not isinstance(b.env[n], _Tensor) for n in node.input if n)
        if constant_inputs and node.op_type not in _NONDETERMINISTIC:
            outputs = _fold(c)
        elif node.op_type in _CONVERTERS:
            try:
                outputs = list(_CONVERTERS[node.op_type](c))
            except (RuntimeError, ValueError, IndexError, KeyError) as exc:
                # Torch rejects inconsistent shapes while computing the batch-1 example; KeyError is
                # a missing required attribute.
                if isinstance(exc, KeyError):
                    raise ModelLoadError(f"{c.where} lacks the required attribute {exc}") from None
                raise ModelLoadError(f"{c.where} does not fit its inputs: {one_line(exc, with_type=False)}") from None
        else:
            raise UnsupportedOperatorError(
                node.op_type, c.where,
                hint="the ONNX ops the importer supports are listed in gcert.onnx_import.SUPPORTED_ONNX_OPS")
        for name, value in zip(node.output, outputs, strict=False):
            if name:
                b.env[name] = value

    out_name = graph.output[0].name
    result = b.env.get(out_name)
    if not isinstance(result, _Tensor):
        raise ModelLoadError(f"output {out_name!r} of ONNX model {model_name} does not depend on its input")
    b.graph.output(result.node)
    gm = fx.GraphModule(b.root, b.graph, class_name="OnnxGraphModule")
    gm.float().eval()
    extras = {"input_shape": input_shape, "output_shape": tuple(result.shape), "source": source}
    for key, value in extras.items():
        setattr(gm, key, value)
    gm.meta[_PRESERVED_KEY] = dict(extras)
    return gm

