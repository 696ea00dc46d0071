"""Rewrite a network into an exactly equivalent form built only from ops that auto_LiRPA 0.3 can bound.

The network is traced into one flat torch.fx graph (``gcert.graph.trace``); nodes 0.3 lacks are replaced,
through the explicit tables at the bottom, by the same function written with ops it has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from gcert.errors import UnsupportedOperatorError
from gcert.graph import trace


def for_lirpa(module: nn.Module, example: torch.Tensor, dtype: torch.dtype = torch.float64,
              forward: bool = False) -> fx.GraphModule:
    """A copy of ``module`` in ``dtype``, as one fx graph, with unsupported nodes rewritten.

    ``example`` is one input batch; its shape fixes the static shapes some rewrites need. The result
    computes the same function: in real arithmetic exactly, in floating point up to rounding.
    ``forward``: also rewrite what 0.3 bounds backward but not forward (``FORWARD_MODULE_REWRITES``).
    """
    gm = trace(module, dtype)
    ShapeProp(gm).propagate(example.to(dtype))
    modules = {**MODULE_REWRITES, **FORWARD_MODULE_REWRITES} if forward else MODULE_REWRITES
    methods = {**METHOD_REWRITES, **FORWARD_METHOD_REWRITES} if forward else METHOD_REWRITES
    for node in list(gm.graph.nodes):
        rule: Callable[[fx.GraphModule, fx.Node], None] | None = None
        if node.op == "call_module":
            rule = modules.get(type(gm.get_submodule(str(node.target))))
        elif node.op == "call_function":
            rule = FUNCTION_REWRITES.get(node.target)
        elif node.op == "call_method":
            rule = methods.get(str(node.target))
        if rule is not None:
            rule(gm, node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _replace(gm: fx.GraphModule, node: fx.Node, build: Callable[[fx.Graph], fx.Node]) -> None:
    with gm.graph.inserting_before(node):
        new = build(gm.graph)
    new.meta.update(node.meta)  # same function, same output shape: later rewrites read it
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _add_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> str:
    name = f"{str(node.target).replace('.', '_')}_lirpa"
    gm.add_submodule(name, module)
    return name


# --- ConvTranspose2d with padding -> padding 0 and a crop ---------------------------------------------


def _conv_transpose(gm: fx.GraphModule, node: fx.Node) -> None:
    m: nn.ConvTranspose2d = gm.get_submodule(str(node.target))
    problems = []
    if tuple(m.dilation) != (1, 1):
        problems.append(f"dilation {tuple(m.dilation)}")
    if m.groups != 1:
        problems.append(f"groups {m.groups}")
    if m.stride[0] != m.stride[1]:
        problems.append(f"unequal strides {tuple(m.stride)}")
    if m.kernel_size[0] != m.kernel_size[1]:
        problems.append(f"non-square kernel {tuple(m.kernel_size)}")
    if problems:
        raise _unsupported(node, "ConvTranspose2d", f"auto_LiRPA 0.3 bounds it only without {', '.join(problems)}")
    if tuple(m.padding) == (0, 0) and tuple(m.output_padding) == (0, 0):
        return
    _swap_image_module(gm, node, lambda hw: CroppedConvTranspose2d(m, hw))


def _swap_image_module(gm: fx.GraphModule, node: fx.Node, make: Callable[[tuple[int, ...]], nn.Module]) -> None:
    """Replace the module ``node`` calls on one (N, C, H, W) input by ``make((H, W))``."""
    x = node.args[0]
    if not isinstance(x, fx.Node) or len(_shape(x)) != 4:
        raise _unsupported(node, "ConvTranspose2d", "auto_LiRPA 0.3 needs a batched (N, C, H, W) input")
    name = _add_module(gm, node, make(_shape(x)[2:]))
    _replace(gm, node, lambda g: g.call_module(name, (x,)))


class CroppedConvTranspose2d(nn.Module):
    """``ConvTranspose2d(k, s, padding=p, output_padding=q)`` as ``ConvTranspose2d(k, s, padding=0)`` then a crop.

    With padding 0 the layer computes the full transposed convolution F of length (n - 1) s + k per axis;
    padding p keeps F[p : p + out], where rows past F's end (when q > p) hold only the bias. auto_LiRPA 0.3
    bounds padding-0 transposed convolutions and single-axis slices, so this is the form it sees.
    ``in_hw`` is the input's spatial size, fixed so that every slice bound is a constant.
    """

    def __init__(self, m: nn.ConvTranspose2d, in_hw: tuple[int, ...]):
        super().__init__()
        full = [(n - 1) * s + k for n, s, k in zip(in_hw, m.stride, m.kernel_size, strict=True)]
        out = [f - 2 * p + q for f, p, q in zip(full, m.padding, m.output_padding, strict=True)]
        self.begin = tuple(int(p) for p in m.padding)
        self.stop = tuple(b + o for b, o in zip(self.begin, out, strict=True))
        self.grow = tuple(max(0, stop - f) for stop, f in zip(self.stop, full, strict=True))
        self.full = tuple(full)
        grows = any(self.grow)
        self.conv = nn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding=0,
                                       bias=m.bias is not None and not grows, dtype=m.weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(m.weight)
            if self.conv.bias is not None:
                self.conv.bias.copy_(m.bias)
        # Rows past F's end hold only the bias, so then the bias is added after zero padding, by an identity
        # 1x1 convolution: 0.3's Add cannot broadcast a (1, C, 1, 1) constant in its backward pass.
        self.bias: nn.Conv2d | None = None
        if m.bias is not None and grows:
            self.bias = nn.Conv2d(m.out_channels, m.out_channels, 1, dtype=m.weight.dtype)
            with torch.no_grad():
                self.bias.weight.copy_(torch.eye(m.out_channels, dtype=m.weight.dtype)[:, :, None, None])
                self.bias.bias.copy_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if any(self.grow):
            y = zero_pad(y, (0, self.grow[1], 0, self.grow[0]))
        for axis, begin, stop, length in zip((2, 3), self.begin, self.stop, self.full, strict=True):
            if begin or stop != length:
                # One slice per axis with constant bounds: 0.3's BoundSlice takes a single axis.
                y = y[(slice(None),) * axis + (slice(begin, stop),)]
        return y if self.bias is None else self.bias(y)


# --- ConvTranspose2d(k, stride k) -> a 1x1 convolution and depth-to-space (forward mode) -------------


def _conv_transpose_forward(gm: fx.GraphModule, node: fx.Node) -> None:
    """0.3 has no forward bound of ConvTranspose; with stride = kernel and no padding it is a 1x1 conv."""
    m: nn.ConvTranspose2d = gm.get_submodule(str(node.target))
    k = tuple(m.kernel_size)
    if (tuple(m.stride) != k or tuple(m.padding) != (0, 0) or tuple(m.output_padding) != (0, 0)
            or tuple(m.dilation) != (1, 1) or m.groups != 1):
        raise _unsupported(node, "ConvTranspose2d", "auto_LiRPA 0.3 has no forward bound for it; forward "
                           "intermediate bounds take only stride = kernel, no padding (crown.mode=backward)")
    _swap_image_module(gm, node, lambda hw: PatchConvTranspose2d(m, hw))


class PatchConvTranspose2d(nn.Module):
    """``ConvTranspose2d(k, stride k, padding 0)``: each input pixel paints its own k x k output patch, so it is
    a 1x1 convolution to ``out * kh * kw`` channels whose channels are then moved into the patches
    (reshape, permute, reshape; all of which 0.3 bounds forward). ``in_hw`` fixes the reshapes' shapes.
    """

    def __init__(self, m: nn.ConvTranspose2d, in_hw: tuple[int, ...]):
        super().__init__()
        (kh, kw), o = m.kernel_size, m.out_channels
        self.shape = (o, kh, kw, int(in_hw[0]), int(in_hw[1]))
        self.conv = nn.Conv2d(m.in_channels, o * kh * kw, 1, bias=m.bias is not None, dtype=m.weight.dtype)
        with torch.no_grad():
            # weight (in, out, kh, kw) -> (out * kh * kw, in, 1, 1), channel index (o, a, b)
            self.conv.weight.copy_(m.weight.permute(1, 2, 3, 0).reshape(o * kh * kw, m.in_channels, 1, 1))
            if m.bias is not None:
                self.conv.bias.copy_(m.bias.repeat_interleave(kh * kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o, kh, kw, h, w = self.shape
        y = self.conv(x).reshape(-1, o, kh, kw, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(-1, o, h * kh, w * kw)


def _expand_forward(gm: fx.GraphModule, node: fx.Node) -> None:
    """0.3 has no forward bound of Expand: a broadcast is a product with a 0/1 matrix, written as a Linear."""
    x = node.args[0]
    if not isinstance(x, fx.Node):
        return
    shape_in, shape_out = _shape(x), _shape(node)
    n_in, n_out = math.prod(shape_in[1:]), math.prod(shape_out[1:])
    if len(shape_in) != len(shape_out) or n_in * n_out > 10_000_000:
        raise _unsupported(node, "expand", "auto_LiRPA 0.3 has no forward bound for it (crown.mode=backward)")
    source = torch.arange(n_in, dtype=torch.float64).reshape(1, *shape_in[1:]).expand(1, *shape_out[1:])
    linear = nn.Linear(n_in, n_out, bias=False, dtype=node.meta["tensor_meta"].dtype)
    with torch.no_grad():
        linear.weight.copy_(F.one_hot(source.reshape(-1).long(), n_in).to(linear.weight.dtype))
    name = f"{node.name}_lirpa"
    gm.add_submodule(name, linear)
    out = tuple(int(v) for v in shape_out[1:])
    _replace(gm, node, lambda g: g.call_method(
        "reshape", (g.call_module(name, (g.call_method("reshape", (x, -1, n_in)),)), -1, *out)))


# --- LeakyReLU -> ReLU (every mode) -------------------------------------------------------------------


def leaky_relu_as_relu(x: torch.Tensor, slope: float) -> torch.Tensor:
    """``LeakyReLU(x) = slope * x + (1 - slope) * ReLU(x)``, exact for every slope.

    0.3's ``BoundLeakyRelu`` assumes 0 <= slope <= 1: for slope > 1 the function is concave and its chord
    "upper" bound lies below it (CROWN certified a network that fails at the kink), for slope < 0 it is not
    monotone and its IBP (the values at the two ends) misses the kink; it has no forward bound at all. In this
    form 0.3 bounds a ReLU and two products with constants, which hold for any sign of ``1 - slope``. For
    slopes in [0, 1] this is the same triangle relaxation (IBP gives the same interval; CROWN's lower slope,
    s or 1, is picked by ReLU's rule), and alpha-CROWN can optimise it, which it cannot for ``BoundLeakyRelu``.
    """
    return torch.relu(x) * (1.0 - slope) + x * slope


def _leaky_relu(gm: fx.GraphModule, node: fx.Node) -> None:
    m: nn.LeakyReLU = gm.get_submodule(str(node.target))
    x, slope = node.args[0], float(m.negative_slope)
    _replace(gm, node, lambda g: g.call_function(leaky_relu_as_relu, (x, slope)))


def _leaky_relu_fn(gm: fx.GraphModule, node: fx.Node) -> None:
    """``F.leaky_relu(x, slope)`` inside a user's ``forward`` (a call_function node of the traced graph)."""
    names = ("input", "negative_slope", "inplace")
    given = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    slope = given.get("negative_slope", 0.01)
    if not isinstance(slope, int | float):
        raise _unsupported(node, "leaky_relu", "a negative slope computed inside the network")
    _replace(gm, node, lambda g: g.call_function(leaky_relu_as_relu, (given["input"], float(slope))))


# --- Conv1d -> Conv2d over a height-1 image ----------------------------------------------------------


def _conv1d(gm: fx.GraphModule, node: fx.Node) -> None:
    m: nn.Conv1d = gm.get_submodule(str(node.target))
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise _unsupported(node, "Conv1d", f"padding {m.padding!r} / padding_mode {m.padding_mode!r}")
    name = _add_module(gm, node, Conv1dAs2d(m))
    _replace(gm, node, lambda g: g.call_module(name, (node.args[0],)))


class Conv1dAs2d(nn.Module):
    """``Conv1d`` as ``Conv2d`` with a (1, k) kernel over ``x.unsqueeze(2)``; 0.3 bounds only 2-D convolutions."""

    def __init__(self, m: nn.Conv1d):
        super().__init__()
        self.conv = nn.Conv2d(m.in_channels, m.out_channels, (1, m.kernel_size[0]), (1, m.stride[0]),
                              (0, int(m.padding[0])), (1, m.dilation[0]), m.groups, m.bias is not None,
                              dtype=m.weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(m.weight.unsqueeze(2))
            if m.bias is not None:
                self.conv.bias.copy_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


# --- pooling -----------------------------------------------------------------------------------------


def _avg_pool(gm: fx.GraphModule, node: fx.Node) -> None:
    m: nn.AvgPool2d = gm.get_submodule(str(node.target))
    x = node.args[0]
    if not isinstance(x, fx.Node) or len(_shape(x)) != 4:
        raise _unsupported(node, "AvgPool2d", "auto_LiRPA 0.3 needs a batched (N, C, H, W) input")
    # 0.3's BoundAveragePool gives unsound CROWN bounds with padding and with overlapping windows (seen
    # with kernel 3, stride 2); a convolution is bounded correctly, so every AvgPool2d becomes one.
    name = _add_module(gm, node, AvgPoolAsConv(m, _shape(x), _shape(node), x.meta["tensor_meta"].dtype))
    _replace(gm, node, lambda g: g.call_module(name, (x,)))


class AvgPoolAsConv(nn.Module):
    """``AvgPool2d`` as zero padding, a convolution with a ones kernel per channel, and a constant 1/divisor map.

    Exact in real arithmetic for every setting (padding, ``ceil_mode``, ``count_include_pad``,
    ``divisor_override``): the map is computed once by torch's own pooling of a ones image.
    """

    def __init__(self, m: nn.AvgPool2d, in_shape: tuple[int, ...], out_shape: tuple[int, ...], dtype: torch.dtype):
        super().__init__()
        channels = in_shape[1]
        kh, kw = _pair(m.kernel_size)
        sh, sw = _pair(m.stride if m.stride is not None else m.kernel_size)
        ph, pw = _pair(m.padding)
        oh, ow = out_shape[2:]
        # Zero rows past the padded input for ceil_mode windows; they add 0 to the sums.
        eh = max(0, (oh - 1) * sh + kh - (in_shape[2] + 2 * ph))
        ew = max(0, (ow - 1) * sw + kw - (in_shape[3] + 2 * pw))
        self.pads = (pw, pw + ew, ph, ph + eh)
        self.stride = (sh, sw)
        weight = torch.zeros(channels, channels, kh, kw, dtype=dtype)
        weight[range(channels), range(channels)] = 1.0
        self.register_buffer("weight", weight)
        ones = torch.ones(1, 1, *in_shape[2:], dtype=dtype)
        counts = F.conv2d(F.pad(ones, self.pads), torch.ones(1, 1, kh, kw, dtype=dtype), stride=self.stride)
        averages = F.avg_pool2d(ones, (kh, kw), (sh, sw), (ph, pw), m.ceil_mode, m.count_include_pad,
                                m.divisor_override)
        self.register_buffer("scale", averages / counts)  # = 1 / divisor at every window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = zero_pad(x, self.pads)
        return F.conv2d(x, self.weight, None, self.stride) * self.scale


def _max_pool(gm: fx.GraphModule, node: fx.Node) -> None:
    m: nn.MaxPool2d = gm.get_submodule(str(node.target))
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)
    problems = []
    if _pair(m.dilation) != (1, 1):
        problems.append(f"dilation {_pair(m.dilation)}")
    if stride != _pair(m.kernel_size):
        problems.append(f"stride {stride} != kernel {_pair(m.kernel_size)}")
    if _pair(m.padding) != (0, 0):
        problems.append(f"padding {_pair(m.padding)}")
    x = node.args[0]
    if m.ceil_mode and isinstance(x, fx.Node) and len(_shape(x)) == 4 and _shape(node)[2:] != _pool_shape(
            _shape(x), m.kernel_size, stride, m.padding, ceil=False):
        problems.append("ceil_mode")  # 0.3 always pools in floor mode
    if problems:
        raise _unsupported(node, "MaxPool2d", f"auto_LiRPA 0.3 pools only without {', '.join(problems)}")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_shape(in_shape: tuple[int, ...], kernel: Any, stride: Any, padding: Any, ceil: bool) -> tuple[int, ...]:
    k, s, p = _pair(kernel), _pair(stride if stride is not None else kernel), _pair(padding)
    span = [n + 2 * pp - kk for n, kk, pp in zip(in_shape[2:], k, p, strict=True)]
    return tuple((-(-sp // ss) if ceil else sp // ss) + 1 for sp, ss in zip(span, s, strict=True))


def _unsupported(node: fx.Node, op: str, hint: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(op, f"node {node.name!r}", ("interval", "sampling"), hint=hint)


# --- reshapes ----------------------------------------------------------------------------------------


def _unflatten(gm: fx.GraphModule, node: fx.Node) -> None:
    # The output's static shape (from shape propagation) with the batch axis left free.
    out = _shape(node)
    if len(out) < 2:
        raise _unsupported(node, "Unflatten", "auto_LiRPA 0.3 cannot unflatten the batch axis")
    _replace(gm, node, lambda g: g.call_function(torch.reshape, (node.args[0], (-1, *out[1:]))))


def _unflatten_fn(gm: fx.GraphModule, node: fx.Node) -> None:
    _unflatten(gm, node)


# --- constant padding -> zero padding -------------------------------------------------------------------


def zero_pad(x: torch.Tensor, pad: tuple[int, ...], value: float = 0.0) -> torch.Tensor:
    """``F.pad(x, pad, value=v)`` as ``F.pad(x - v, pad, value=0) + v``: 0.3's Pad bound ignores the value."""
    if value == 0:
        return F.pad(x, pad, "constant", 0.0)
    return F.pad(x - value, pad, "constant", 0.0) + value


def _pad_module(gm: fx.GraphModule, node: fx.Node) -> None:
    m: nn.ZeroPad2d | nn.ConstantPad2d = gm.get_submodule(str(node.target))
    pad = tuple(int(p) for p in m.padding)
    _replace(gm, node, lambda g: g.call_function(zero_pad, (node.args[0], pad, float(m.value))))


def _pad_fn(gm: fx.GraphModule, node: fx.Node) -> None:
    names = ("input", "pad", "mode", "value")
    given = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    mode, value = given.get("mode", "constant"), given.get("value", None)
    if mode != "constant":
        raise _unsupported(node, "pad", f"auto_LiRPA 0.3 bounds only constant padding, not {mode!r}")
    if isinstance(value, fx.Node) or isinstance(given["pad"], fx.Node):
        raise _unsupported(node, "pad", "padding computed inside the network")
    pad = tuple(int(p) for p in given["pad"])
    _replace(gm, node, lambda g: g.call_function(zero_pad, (given["input"], pad, float(value or 0.0))))


# --- clamps -> ReLUs ---------------------------------------------------------------------------------


def clamp_as_relu(x: torch.Tensor, lo: Any = None, hi: Any = None) -> torch.Tensor:
    """``clamp(x, lo, hi)`` as ``lo + relu(x - lo) - relu(x - hi)`` (for lo <= hi); 0.3 has no Clip bound."""
    if lo is None and hi is None:
        return x
    if hi is None:
        return torch.relu(x - lo) + lo
    if lo is None:
        return hi - torch.relu(hi - x)
    return torch.relu(x - lo) - torch.relu(x - hi) + lo


def _hardtanh(gm: fx.GraphModule, node: fx.Node) -> None:
    m: nn.Hardtanh = gm.get_submodule(str(node.target))
    _check_order(node, m.min_val, m.max_val)
    _replace(gm, node, lambda g: g.call_function(clamp_as_relu, (node.args[0], float(m.min_val), float(m.max_val))))


def _clamp(gm: fx.GraphModule, node: fx.Node) -> None:
    x, lo, hi = _clamp_args(node.args, node.kwargs, ("min", "max"))
    _check_order(node, lo, hi)
    _replace(gm, node, lambda g: g.call_function(clamp_as_relu, (x, lo, hi)))


def _hardtanh_fn(gm: fx.GraphModule, node: fx.Node) -> None:
    x, lo, hi = _clamp_args(node.args, node.kwargs, ("min_val", "max_val"), (-1.0, 1.0))
    _check_order(node, lo, hi)
    _replace(gm, node, lambda g: g.call_function(clamp_as_relu, (x, lo, hi)))


def _relu6_fn(gm: fx.GraphModule, node: fx.Node) -> None:
    _replace(gm, node, lambda g: g.call_function(clamp_as_relu, (node.args[0], 0.0, 6.0)))


def _clamp_args(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, str],
                defaults: tuple[Any, Any] = (None, None)) -> tuple[Any, Any, Any]:
    x = args[0]
    lo = args[1] if len(args) > 1 else kwargs.get(names[0], defaults[0])
    hi = args[2] if len(args) > 2 else kwargs.get(names[1], defaults[1])
    return x, lo, hi


def _check_order(node: fx.Node, lo: Any, hi: Any) -> None:
    # clamp with lo > hi is constant hi in torch, which the ReLU form does not reproduce.
    if isinstance(lo, int | float) and isinstance(hi, int | float) and lo > hi:
        raise _unsupported(node, "clamp", f"min {lo} > max {hi}")
    if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
        raise _unsupported(node, "clamp", "bounds computed inside the network")


#: Module rewrites, looked up by exact type.
MODULE_REWRITES: dict[type, Callable[[fx.GraphModule, fx.Node], None]] = {
    nn.ConvTranspose2d: _conv_transpose,
    nn.Conv1d: _conv1d,
    nn.AvgPool2d: _avg_pool,
    nn.MaxPool2d: _max_pool,
    nn.ZeroPad2d: _pad_module,
    nn.ConstantPad2d: _pad_module,
    nn.Unflatten: _unflatten,
    nn.Hardtanh: _hardtanh,
    nn.ReLU6: _hardtanh,
    nn.LeakyReLU: _leaky_relu,
}

#: Extra module rewrites when intermediate bounds are computed in forward mode.
FORWARD_MODULE_REWRITES: dict[type, Callable[[fx.GraphModule, fx.Node], None]] = {
    nn.ConvTranspose2d: _conv_transpose_forward,
}

#: Extra method rewrites when intermediate bounds are computed in forward mode.
FORWARD_METHOD_REWRITES: dict[str, Callable[[fx.GraphModule, fx.Node], None]] = {
    "expand": _expand_forward,
}

_POOL_ARGS = {F.avg_pool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
              F.max_pool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")}


def _pool_fn(gm: fx.GraphModule, node: fx.Node) -> None:
    """``F.avg_pool2d`` / ``F.max_pool2d`` as their modules, then the module's rewrite (0.3 bounds the
    functional average pooling with padding unsoundly: it certified a margin of 0.14 where the network's is -27)."""
    x = node.args[0]
    settings = {**dict(zip(_POOL_ARGS[node.target], node.args[1:], strict=False)), **node.kwargs}
    if any(isinstance(v, fx.Node) for v in settings.values()):
        raise _unsupported(node, node.target.__name__, "pooling settings computed inside the network")
    module = (nn.AvgPool2d if node.target is F.avg_pool2d else nn.MaxPool2d)(**settings)
    name = f"{node.name}_as_module"
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (x,))
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    (_avg_pool if isinstance(module, nn.AvgPool2d) else _max_pool)(gm, new)


FUNCTION_REWRITES: dict[Any, Callable[[fx.GraphModule, fx.Node], None]] = {
    F.avg_pool2d: _pool_fn,
    F.max_pool2d: _pool_fn,
    torch.clamp: _clamp,
    torch.clip: _clamp,
    F.pad: _pad_fn,
    F.hardtanh: _hardtanh_fn,
    F.relu6: _relu6_fn,
    F.leaky_relu: _leaky_relu_fn,
    torch.unflatten: _unflatten_fn,
}

def _drop_cast(gm: fx.GraphModule, node: fx.Node) -> None:
    """``x.to(dtype)`` inside a graph that is all in one floating dtype is the identity (gcert's segment
    embedding computes in float64 and returns the input's dtype); 0.3's Cast would cast to float32."""
    targets = [*node.args[1:], *node.kwargs.values()]
    if not isinstance(node.args[0], fx.Node) or not all(isinstance(a, torch.dtype | fx.Node)
                                                         for a in targets):
        return
    if any(isinstance(a, torch.dtype) and not a.is_floating_point for a in targets):
        return
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)


METHOD_REWRITES: dict[str, Callable[[fx.GraphModule, fx.Node], None]] = {
    "to": _drop_cast,
    "clamp": _clamp,
    "clip": _clamp,
    "unflatten": _unflatten_fn,
}
