"""Descriptions of random (network, region, spec) triples, what builds them, and hypothesis strategies for them.

Every triple is a :class:`Case` of plain frozen dataclasses (tuples of floats, names, seeds), so a failing
example prints as Python that rebuilds it: ``eval(repr(case))`` with ``from tests.soundness.strategies import *``.
Networks are built as ordinary torch modules; the oracles read the built module (or evaluate it in float64),
never gcert's lowering.

Edges on purpose: leaky slopes 0, 0.5, 1, 2 and negative ones; clamps with min < max, min = max and min > max
(``torch.clamp`` returns ``max`` everywhere then); large integer weights; region bounds that float32 cannot
represent (0.7, -2.3, 1/3); regression tolerances that float32 cannot represent; pooling with padding and
overlapping windows; transposed convolutions with output padding; residual adds; concatenation; constant pads;
normalisation wrappers; every way of flattening.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from gcert.problem import Problem
from gcert.regions import Box, LpBall, Segment
from gcert.spec import Spec

# --- does the tree have Spec.clauses (CNF specs) yet? ---------------------------------------------------------

HAS_CLAUSES = "clauses" in {f.name for f in dataclasses.fields(Spec)}

# --- activations ----------------------------------------------------------------------------------------------


class Clamp(nn.Module):
    """``torch.clamp(x, lo, hi)`` in one of its spellings; ``lo > hi`` is legal (the result is ``hi``)."""

    def __init__(self, lo: float | None, hi: float | None, form: str = "function"):
        super().__init__()
        self.lo, self.hi, self.form = lo, hi, form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "method":
            return x.clamp(self.lo, self.hi)
        if self.form == "hardtanh":  # F.hardtanh refuses lo > hi, so it is only generated for lo <= hi
            return F.hardtanh(x, self.lo, self.hi)
        return torch.clamp(x, self.lo, self.hi)


class LeakyFn(nn.Module):
    """``F.leaky_relu`` as a function call (the module form is ``nn.LeakyReLU``)."""

    def __init__(self, slope: float):
        super().__init__()
        self.negative_slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)


class Atan(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(x)


class SigmoidFn(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sigmoid()


PIECEWISE_LINEAR = ("relu", "leaky", "clamp", "hardtanh", "relu6")
SMOOTH = ("sigmoid", "tanh", "atan")


@dataclass(frozen=True)
class Act:
    """An activation: ``relu``, ``leaky`` (a = slope), ``clamp`` (a = min, b = max, either may be None),
    ``hardtanh`` (nn.Hardtanh, a < b), ``relu6``, ``sigmoid``, ``tanh``, ``atan``; ``form`` picks the spelling."""

    kind: str
    a: float | None = None
    b: float | None = None
    form: str = "module"

    def build(self) -> nn.Module:
        k = self.kind
        if k == "relu":
            return nn.ReLU() if self.form == "module" else _Fn(torch.relu)
        if k == "leaky":
            return nn.LeakyReLU(self.a) if self.form == "module" else LeakyFn(self.a)
        if k == "clamp":
            return Clamp(self.a, self.b, self.form)
        if k == "hardtanh":
            return nn.Hardtanh(self.a, self.b)
        if k == "relu6":
            return nn.ReLU6()
        if k == "sigmoid":
            return nn.Sigmoid() if self.form == "module" else SigmoidFn()
        if k == "tanh":
            return nn.Tanh()
        if k == "atan":
            return Atan()
        raise ValueError(k)

    @property
    def op(self) -> str:
        """The name this activation is counted under in the coverage summary."""
        if self.kind == "leaky":
            s = self.a
            band = "<0" if s < 0 else "0" if s == 0 else "(0,1)" if s < 1 else "1" if s == 1 else ">1"
            return f"leaky_relu(slope {band},{self.form})"
        if self.kind == "clamp":
            lo, hi = self.a, self.b
            rel = "one-sided" if lo is None or hi is None else ("min<max" if lo < hi else
                                                                ("min=max" if lo == hi else "min>max"))
            return f"clamp({rel},{self.form})"
        return self.kind


class _Fn(nn.Module):
    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# --- fully-connected networks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dense:
    """``nn.Linear`` with exactly these (float32-representable) weights."""

    weight: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]

    def build(self) -> nn.Module:
        lin = nn.Linear(len(self.weight[0]), len(self.weight))
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(self.weight, dtype=torch.float64))
            lin.bias.copy_(torch.tensor(self.bias, dtype=torch.float64))
        return lin


@dataclass(frozen=True)
class FCNet:
    """A fully-connected network: ``nn.Sequential`` of :class:`Dense` and :class:`Act` layers."""

    layers: tuple[Dense | Act, ...]

    @property
    def n_in(self) -> int:
        return len(next(x for x in self.layers if isinstance(x, Dense)).weight[0])

    @property
    def n_out(self) -> int:
        return len(next(x for x in reversed(self.layers) if isinstance(x, Dense)).weight)

    @property
    def piecewise_linear(self) -> bool:
        return all(isinstance(x, Dense) or x.kind in PIECEWISE_LINEAR for x in self.layers)

    def build(self) -> nn.Module:
        return nn.Sequential(*(x.build() for x in self.layers)).eval()

    def ops(self) -> set[str]:
        return {"Linear" if isinstance(x, Dense) else x.op for x in self.layers}


# --- convolutional networks (built from seeds) -------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One op of a :class:`ConvNet`; ``args`` depend on ``kind`` (see :meth:`ConvNet.build`)."""

    kind: str
    args: tuple = ()


@dataclass(frozen=True)
class ConvNet:
    """A network on (C, H, W) inputs: ops on images, a flatten, then linear layers to ``n_out`` outputs."""

    in_shape: tuple[int, int, int]
    ops: tuple[Op, ...]
    seed: int = 0
    weights: str = "unit"  # unit: uniform(-1, 1); int: small integers; bigint: integers up to 2**12

    @property
    def n_out(self) -> int:
        return next(o.args[0] for o in reversed(self.ops) if o.kind == "linear")

    @property
    def piecewise_linear(self) -> bool:
        acts = [o.args[0] for o in self.ops if o.kind in ("act", "residual", "concat")]
        return all(a.kind in PIECEWISE_LINEAR for a in acts)

    def build(self) -> nn.Module:
        return OpsNet(self).eval()

    def ops_covered(self) -> set[str]:
        out = set()
        for o in self.ops:
            if o.kind == "act":
                out.add(o.args[0].op)
            elif o.kind in ("residual", "concat"):
                out |= {o.kind, o.args[0].op}
            elif o.kind in ("flatten", "pad", "avgpool", "maxpool"):
                out.add(f"{o.kind}({o.args[-1]})")
            else:
                out.add(o.kind)
        return out


def _weights(gen: torch.Generator, shape: tuple[int, ...], mode: str) -> torch.Tensor:
    if mode == "int":
        return torch.randint(-3, 4, shape, generator=gen).double()
    if mode == "bigint":
        return torch.randint(-(2**12), 2**12 + 1, shape, generator=gen).double()
    return torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1


class OpsNet(nn.Module):
    """Runs a :class:`ConvNet`'s ops in order (fx traces through this, standard layers stay leaves)."""

    def __init__(self, desc: ConvNet):
        super().__init__()
        self.kinds = [o.kind for o in desc.ops]
        self.forms = [o.args[-1] if o.args and isinstance(o.args[-1], str) else "" for o in desc.ops]
        self.extra: list[Any] = []
        mods = []
        gen = torch.Generator().manual_seed(desc.seed)
        c, _, _ = desc.in_shape
        for o in desc.ops:
            a = o.args
            extra: Any = None
            if o.kind == "conv":
                cout, k, s, p, dil = a
                m = nn.Conv2d(c, cout, k, stride=s, padding=p, dilation=dil)
                _fill(m, gen, desc.weights)
                c = cout
            elif o.kind == "convT":
                cout, k, s, p, op_ = a
                m = nn.ConvTranspose2d(c, cout, k, stride=s, padding=p, output_padding=op_)
                _fill(m, gen, desc.weights)
                c = cout
            elif o.kind == "bn":
                m = nn.BatchNorm2d(c)
                with torch.no_grad():
                    m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
                    m.running_var.copy_(torch.rand(c, generator=gen) * 2 + a[0])
                    m.weight.copy_(torch.rand(c, generator=gen) * 4 - 2)
                    m.bias.copy_(torch.rand(c, generator=gen) - 0.5)
            elif o.kind in ("avgpool", "maxpool"):
                k, s, p, form = a
                if form == "module":
                    m = nn.AvgPool2d(k, s, p) if o.kind == "avgpool" else nn.MaxPool2d(k, s, p)
                else:
                    m = nn.Identity()
                extra = (k, s, p)
            elif o.kind == "pad":
                pads, value, form = a
                if form == "module":
                    m = nn.ConstantPad2d(pads, value) if value != 0 else nn.ZeroPad2d(pads)
                else:
                    m = nn.Identity()
                extra = (pads, value)
            elif o.kind == "act":
                m = a[0].build()
            elif o.kind == "residual":
                m = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), a[0].build())
                _fill(m[0], gen, desc.weights)
            elif o.kind == "concat":
                m = a[0].build()
                c = 2 * c
            elif o.kind == "norm":
                m = nn.Identity()
                mean = torch.rand(c, 1, 1, generator=gen) - 0.5
                std = torch.rand(c, 1, 1, generator=gen) * 2 + 0.1
                extra = (mean.float(), std.float())
            elif o.kind == "flatten":
                m = nn.Flatten() if a[0] == "module" else nn.Identity()
            elif o.kind == "linear":
                m = nn.Identity()  # replaced below, once the input size is known
            else:
                raise ValueError(o.kind)
            mods.append(m)
            self.extra.append(extra)
        self.mods = nn.ModuleList(mods)
        self.eval()  # batch norm in eval mode (running statistics) for the sizing probe too
        # Linear layers need their input size: run a probe to size them, then fill them from the generator.
        x = torch.zeros(1, *desc.in_shape)
        with torch.no_grad():
            for i, o in enumerate(desc.ops):
                if o.kind == "linear":
                    lin = nn.Linear(x.shape[1], o.args[0])
                    _fill(lin, gen, desc.weights, fan=x.shape[1])
                    self.mods[i] = lin
                x = self._step(i, x)

    def _step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        kind, form, m, extra = self.kinds[i], self.forms[i], self.mods[i], self.extra[i]
        if kind in ("avgpool", "maxpool") and form == "function":
            k, s, p = extra
            return F.avg_pool2d(x, k, s, p) if kind == "avgpool" else F.max_pool2d(x, k, s, p)
        if kind == "pad" and form == "function":
            pads, value = extra
            return F.pad(x, pads, value=value)
        if kind == "residual":
            return x + m(x)
        if kind == "concat":
            return torch.cat([x, m(x)], dim=1)
        if kind == "norm":
            mean, std = extra
            return (x - mean.to(x.dtype)) / std.to(x.dtype)
        if kind == "flatten":
            if form == "view":
                return x.view(x.size(0), -1)
            if form == "reshape":
                return x.reshape(x.shape[0], -1)
            if form == "torch.flatten":
                return torch.flatten(x, 1)
        return m(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.kinds)):
            x = self._step(i, x)
        return x


def _fill(m: nn.Module, gen: torch.Generator, mode: str, fan: int | None = None) -> None:
    with torch.no_grad():
        w = _weights(gen, tuple(m.weight.shape), mode)
        if mode == "unit" and fan:
            w = w * (2.0 / math.sqrt(fan))
        m.weight.copy_(w)
        if m.bias is not None:
            m.bias.copy_(_weights(gen, tuple(m.bias.shape), mode) * (0.5 if mode == "unit" else 1))


# --- generators -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FCGenerator:
    """A tiny generator: an :class:`FCNet` from the control to the network's (flattened) input."""

    net: FCNet
    out_shape: tuple[int, ...] | None = None  # reshape to an image (conv networks)

    def build(self) -> nn.Module:
        body = self.net.build()
        if self.out_shape is None:
            return body
        return nn.Sequential(body, nn.Unflatten(1, self.out_shape)).eval()


# --- regions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentDesc:
    """``Segment(start, end)`` in control space, tensors of ``dtype``."""

    start: tuple[float, ...]
    end: tuple[float, ...]
    dtype: str = "float64"
    shape: tuple[int, ...] | None = None

    kind = "segment"

    def build(self) -> Segment:
        dt = getattr(torch, self.dtype)
        shape = self.shape or (len(self.start),)
        start = torch.tensor(self.start, dtype=dt).reshape(shape)
        return Segment(start, torch.tensor(self.end, dtype=dt).reshape(shape))


@dataclass(frozen=True)
class BoxDesc:
    """``Box(lower, upper)`` with float64 bounds (the control is the network's input)."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    shape: tuple[int, ...] | None = None

    kind = "box"

    def build(self) -> Box:
        shape = self.shape or (len(self.lower),)
        lo = torch.tensor(self.lower, dtype=torch.float64).reshape(shape)
        hi = torch.tensor(self.upper, dtype=torch.float64).reshape(shape)
        return Box(lo, hi)


@dataclass(frozen=True)
class BallDesc:
    """``LpBall(center, eps, p, clip)`` with a float64 centre."""

    center: tuple[float, ...]
    eps: float
    p: float
    clip: tuple[float, float] | None = None
    shape: tuple[int, ...] | None = None

    kind = "lp-ball"

    def build(self) -> LpBall:
        shape = self.shape or (len(self.center),)
        return LpBall(torch.tensor(self.center, dtype=torch.float64).reshape(shape), self.eps, self.p, self.clip)


RegionDesc = SegmentDesc | BoxDesc | BallDesc


def region_label(r: RegionDesc) -> str:
    if isinstance(r, SegmentDesc):
        return f"segment({r.dtype})"
    if isinstance(r, BoxDesc):
        return "box-1d" if len(r.lower) == 1 else "box"
    p = "inf" if r.p == math.inf else int(r.p)
    return f"lp-ball(p={p})"


# --- specs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecDesc:
    """``top1`` (label, k), ``regression`` (reference, tau, index, k) or ``rows`` (C, d, clauses).

    The oracles evaluate this description (in exact or float64 arithmetic); only :meth:`build` makes a gcert Spec.
    """

    kind: str
    label: int = 0
    k: int = 1
    reference: float = 0.0
    tau: float = 0.0
    C: tuple[tuple[float, ...], ...] = ()
    d: tuple[float, ...] = ()
    clauses: tuple[tuple[int, ...], ...] | None = None

    def build(self) -> Spec:
        if self.kind == "top1":
            return Spec.top1(self.label, self.k)
        if self.kind == "regression":
            return Spec.regression(self.reference, self.tau, self.label, self.k)
        C = torch.tensor(self.C, dtype=torch.float64)
        d = torch.tensor(self.d, dtype=torch.float64)
        if self.clauses is not None:
            return Spec(C, d, "linear", {}, clauses=self.clauses)
        return Spec(C, d)

    @property
    def label_for_summary(self) -> str:
        if self.kind == "rows" and self.clauses is not None:
            return "rows+clauses"
        return self.kind


# --- the case ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One (network, region, spec) triple; ``generator`` None means ``nn.Identity()``.

    ``vnnlib``: the text of a VNN-LIB property; when given, region and spec come from ``gcert.vnnlib.read_vnnlib``
    (and ``region``/``spec`` are None).
    """

    family: str
    network: FCNet | ConvNet
    region: RegionDesc | None
    spec: SpecDesc | None
    generator: FCGenerator | None = None
    vnnlib: str | None = None
    float64: bool = False  # build the network in float64 (default: float32, as users do)

    def modules(self) -> tuple[nn.Module, nn.Module]:
        net = self.network.build()
        gen = self.generator.build() if self.generator is not None else nn.Identity()
        if self.float64:
            net, gen = net.double(), gen.double()
        return net, gen

    def problem(self, modules: tuple[nn.Module, nn.Module] | None = None) -> Problem:
        """The gcert problem, built as a user would (raises gcert errors from read_vnnlib as they come)."""
        net, gen = modules if modules is not None else self.modules()
        if self.vnnlib is not None:
            from gcert.vnnlib import read_vnnlib

            fd, path = tempfile.mkstemp(suffix=".vnnlib")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(self.vnnlib)
                prop = read_vnnlib(path)
            finally:
                os.unlink(path)
            return Problem(net, nn.Identity(), Box(prop.lower, prop.upper), prop.spec)
        assert self.region is not None and self.spec is not None
        return Problem(net, gen, self.region.build(), self.spec.build())

    def ops(self) -> set[str]:
        out = self.network.ops() if isinstance(self.network, FCNet) else self.network.ops_covered()
        if self.generator is not None:
            out |= {f"gen:{o}" for o in self.generator.net.ops()}
        return out

    def reproducer(self, certifier: str, options: dict[str, Any]) -> str:
        return (
            "from gcert.testing import make_registry\n"
            "from tests.soundness.strategies import *\n"
            f"case = {self!r}\n"
            f"c = make_registry().certifier({certifier!r})\n"
            f"print(c.certify(case.problem(), c.parse_options({options!r})))"
        )


def float64_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).double().eval()


# --- hypothesis strategies ----------------------------------------------------------------------------------

# float64 values float32 cannot represent, and a few it can
AWKWARD = (0.7, 1.0, 0.0, 3.0, -2.3, -0.1, 0.1, 0.3, 1 / 3, -0.7, 2.2, 0.5, -1.0)
TAUS = (0.1, 0.3, 0.7, 1e-3, 0.05, 2.2, 1 / 3, 1e-7)

f32 = st.floats(-2, 2, width=32, allow_subnormal=False)
small_int = st.integers(-3, 3).map(float)
big_int = st.integers(-(2**20), 2**20).map(float)
awkward = st.sampled_from(AWKWARD) | st.floats(-3, 3, allow_subnormal=False)


def weight_values(big: bool) -> st.SearchStrategy[float]:
    return st.one_of(f32, small_int, big_int) if big else st.one_of(f32, small_int)


SLOPES = (0.0, 0.5, 1.0, 2.0, -0.5, -1.0, 3.0, 0.01)


def activations(smooth: bool) -> st.SearchStrategy[Act]:
    slope = st.sampled_from(SLOPES) | st.floats(-3, 3, width=32)
    bound = st.sampled_from((-1.0, 0.0, 0.5, 1.0, 0.7, -0.3)) | st.floats(-2, 2, width=32)
    leaky = st.builds(lambda s, f: Act("leaky", s, form=f), slope, st.sampled_from(("module", "function")))

    @st.composite
    def clamp(draw: Any) -> Act:
        lo, hi = draw(bound), draw(bound)
        rel = draw(st.sampled_from(("lt", "eq", "gt", "free", "onesided")))
        if rel == "lt" and lo >= hi:
            lo, hi = min(lo, hi), max(lo, hi) + 0.25
        elif rel == "eq":
            hi = lo
        elif rel == "gt" and lo <= hi:
            lo, hi = max(lo, hi) + 0.25, min(lo, hi)
        elif rel == "onesided":
            lo, hi = (lo, None) if draw(st.booleans()) else (None, hi)
        forms = ["function", "method"] + (["hardtanh"] if lo is not None and hi is not None and lo <= hi else [])
        return Act("clamp", lo, hi, form=draw(st.sampled_from(forms)))

    @st.composite
    def hardtanh(draw: Any) -> Act:
        lo = draw(bound)
        return Act("hardtanh", lo, lo + draw(st.sampled_from((0.5, 1.0, 2.0, 1e-3))))

    pl = st.one_of(st.just(Act("relu")), st.just(Act("relu", form="function")), leaky, clamp(), hardtanh(),
                   st.just(Act("relu6")))
    if not smooth:
        return pl
    sm = st.sampled_from((Act("sigmoid"), Act("sigmoid", form="method"), Act("tanh"), Act("atan")))
    return st.one_of(pl, sm)


@st.composite
def fc_nets(draw: Any, n_in: int, n_out: int, smooth: bool = False, max_depth: int = 3, max_width: int = 4,
            big: bool | None = None) -> FCNet:
    """An FC network n_in -> n_out: Linear, then (activation, Linear)*; sometimes with large integer weights."""
    if big is None:
        big = draw(st.integers(0, 5)) == 0
    vals = weight_values(big)
    depth = draw(st.integers(0, max_depth))
    widths = [n_in] + [draw(st.integers(1, max_width)) for _ in range(depth)] + [n_out]
    layers: list[Dense | Act] = []
    for i in range(len(widths) - 1):
        if i > 0:
            layers.append(draw(activations(smooth)))
        w = tuple(tuple(draw(vals) for _ in range(widths[i])) for _ in range(widths[i + 1]))
        b = tuple(draw(vals) for _ in range(widths[i + 1]))
        layers.append(Dense(w, b))
    if draw(st.integers(0, 4)) == 0:  # an activation on the outputs too
        layers.append(draw(activations(smooth)))
    if smooth and not any(isinstance(x, Act) and x.kind in SMOOTH for x in layers):
        pos = draw(st.integers(0, len(layers)))
        if 0 < pos < len(layers) and isinstance(layers[pos - 1], Act):
            pos -= 1
        layers.insert(max(pos, 1), draw(st.sampled_from((Act("sigmoid"), Act("tanh"), Act("atan")))))
    return FCNet(tuple(layers))


def _interval(draw: Any) -> tuple[float, float]:
    a, b = draw(awkward), draw(awkward)
    if draw(st.integers(0, 5)) == 0:
        b = a  # a degenerate interval
    return (min(a, b), max(a, b))


@st.composite
def regions(draw: Any, n: int, kinds: tuple[str, ...], shape: tuple[int, ...] | None = None,
            control_dim: int | None = None) -> RegionDesc:
    """A region over the network input (n values, of ``shape``), or a segment of ``control_dim`` controls."""
    kind = draw(st.sampled_from(kinds))
    if kind == "segment":
        m = control_dim or n
        dtype = draw(st.sampled_from(("float32", "float64")))
        start = tuple(draw(awkward) for _ in range(m))
        end = tuple(draw(awkward) for _ in range(m))
        return SegmentDesc(start, end, dtype, shape if control_dim is None else None)
    if kind == "box1d":
        lo, hi = _interval(draw)
        return BoxDesc((lo,), (hi,))
    if kind == "box":
        bounds = [_interval(draw) for _ in range(n)]
        if n > 8:  # images: a small box around a random image
            c = [draw(st.floats(0, 1)) for _ in range(n)]
            w = draw(st.sampled_from((0.01, 0.05, 0.1, 0.3)))
            bounds = [(x - w, x + w) for x in c]
        return BoxDesc(tuple(b[0] for b in bounds), tuple(b[1] for b in bounds), shape)
    p = {"linf": math.inf, "l2": 2.0, "l1": 1.0}[kind]
    clip = draw(st.sampled_from((None, (0.0, 1.0), (-1.0, 2.0))))
    lo, hi = clip if clip is not None else (-3.0, 3.0)
    center = tuple(draw(st.floats(lo, hi, allow_subnormal=False)) for _ in range(n))
    eps = draw(st.sampled_from((0.1, 0.7, 0.3, 1.0, 0.0, 1e-3)) | st.floats(0, 2, allow_subnormal=False))
    return BallDesc(center, eps, p, clip, shape)


def origin_outputs(network: nn.Module, generator: nn.Module, region: RegionDesc) -> torch.Tensor:
    """Float64 outputs at the region's unmutated point (to anchor specs near the decision boundary)."""
    if isinstance(region, SegmentDesc):
        x = torch.tensor(region.start, dtype=torch.float64)
    elif isinstance(region, BoxDesc):
        x = (torch.tensor(region.lower, dtype=torch.float64) + torch.tensor(region.upper, dtype=torch.float64)) / 2
    else:
        x = torch.tensor(region.center, dtype=torch.float64)
    x = x.reshape(1, *(region.shape or x.shape))
    with torch.no_grad():
        y = float64_copy(network)(float64_copy(generator)(x))
    return y.reshape(-1)


@st.composite
def specs(draw: Any, y0: torch.Tensor, clauses: bool = HAS_CLAUSES) -> SpecDesc:
    """top1 / regression / rows, anchored at the origin's outputs ``y0`` (so they often hold there) or free."""
    k = int(y0.numel())
    kinds = ["regression", "rows"] + (["top1"] if k >= 2 else [])
    kind = draw(st.sampled_from(kinds))
    anchored = draw(st.integers(0, 3)) > 0
    if kind == "top1":
        label = int(y0.argmax()) if anchored else draw(st.integers(0, k - 1))
        return SpecDesc("top1", label=label, k=k)
    if kind == "regression":
        index = draw(st.integers(0, k - 1))
        ref = float(y0[index]) if anchored else draw(awkward)
        if anchored and draw(st.booleans()):
            ref = draw(st.sampled_from(AWKWARD))
        tau = draw(st.sampled_from(TAUS) | st.floats(1e-6, 3, allow_subnormal=False))
        return SpecDesc("regression", label=index, k=k, reference=ref, tau=tau)
    m = draw(st.integers(1, 3))
    coef = st.sampled_from((-1.0, 0.0, 1.0, 2.0, 0.5)) | st.floats(-2, 2, allow_subnormal=False)
    C = [tuple(draw(coef) for _ in range(k)) for _ in range(m)]
    d = []
    for row in C:
        if anchored:
            value = sum(c * float(y) for c, y in zip(row, y0.tolist(), strict=True))
            slack = draw(st.sampled_from((0.0, 1e-3, 0.05, 0.3, 1.0, -0.05)))
            d.append(-value + slack)
        else:
            d.append(draw(awkward))
    cl = None
    if clauses and m > 1 and draw(st.booleans()):
        perm = draw(st.permutations(range(m)))
        cuts = sorted(set(draw(st.lists(st.integers(1, m - 1), max_size=m - 1))))
        parts, prev = [], 0
        for c in [*cuts, m]:
            parts.append(tuple(perm[prev:c]))
            prev = c
        cl = tuple(parts)
    return SpecDesc("rows", k=k, C=tuple(C), d=tuple(d), clauses=cl)


FC_REGIONS_1D = ("segment", "box1d")
FC_REGIONS = ("segment", "box1d", "box", "linf", "l2", "l1")


@st.composite
def fc_cases(draw: Any, smooth: bool = False, one_dim: bool = False) -> Case:
    """Small FC networks (with a tiny FC generator on some segments) over every region kind."""
    kinds = FC_REGIONS_1D if one_dim else FC_REGIONS
    kind = draw(st.sampled_from(kinds))
    n_out = draw(st.integers(1, 3))
    n_in = 1 if kind == "box1d" else draw(st.integers(1, 3))
    net = draw(fc_nets(n_in, n_out, smooth=smooth))
    generator = None
    control_dim = None
    if kind == "segment" and draw(st.booleans()):
        control_dim = draw(st.integers(1, 2))
        generator = FCGenerator(draw(fc_nets(control_dim, n_in, smooth=smooth and draw(st.booleans()), max_depth=1)))
    region = draw(regions(n_in, (kind,), control_dim=control_dim))
    float64 = draw(st.integers(0, 5)) == 0
    case = Case("fc-smooth" if smooth else "fc", net, region, None, generator, float64=float64)
    n, g = case.modules()
    spec = draw(specs(origin_outputs(n, g, region)))
    return dataclasses.replace(case, spec=spec)


# --- convolutional cases ------------------------------------------------------------------------------------


def _conv_out(n: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def conv_nets(draw: Any, in_shape: tuple[int, int, int], n_out: int, smooth: bool) -> ConvNet:
    c, h, w = in_shape
    ops: list[Op] = []
    acts = activations(smooth)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("conv", "convT", "bn", "avgpool", "maxpool", "pad", "act", "act", "residual",
                                     "concat", "norm")))
        if kind == "conv":
            k, s, dil = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
            p = draw(st.integers(0, k // 2 + 1))
            nh, nw = _conv_out(h, k, s, p, dil), _conv_out(w, k, s, p, dil)
            if nh < 1 or nw < 1:
                continue
            cout = draw(st.integers(1, 3))
            ops.append(Op("conv", (cout, k, s, p, dil)))
            c, h, w = cout, nh, nw
        elif kind == "convT":
            k, s = draw(st.integers(1, 3)), draw(st.integers(1, 2))
            p = draw(st.integers(0, (k - 1) // 2 + 0))
            op_ = draw(st.integers(0, s - 1))
            nh, nw = (h - 1) * s - 2 * p + k + op_, (w - 1) * s - 2 * p + k + op_
            if nh < 1 or nw < 1 or nh > 9 or nw > 9:
                continue
            cout = draw(st.integers(1, 2))
            ops.append(Op("convT", (cout, k, s, p, op_)))
            c, h, w = cout, nh, nw
        elif kind == "bn":
            ops.append(Op("bn", (draw(st.sampled_from((0.5, 1e-3, 0.1))),)))
        elif kind in ("avgpool", "maxpool"):
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, k))  # s < k: overlapping windows
            p = draw(st.integers(0, k // 2))
            nh, nw = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
            if nh < 1 or nw < 1:
                continue
            ops.append(Op(kind, (k, s, p, draw(st.sampled_from(("module", "function"))))))
            h, w = nh, nw
        elif kind == "pad":
            pads = tuple(draw(st.integers(0, 1)) for _ in range(4))
            value = draw(st.sampled_from((0.0, 0.5, -1.0, 0.7)))
            ops.append(Op("pad", (pads, value, draw(st.sampled_from(("module", "function"))))))
            h, w = h + pads[2] + pads[3], w + pads[0] + pads[1]
        elif kind == "act":
            ops.append(Op("act", (draw(acts),)))
        elif kind == "residual":
            ops.append(Op("residual", (draw(acts),)))
        elif kind == "concat":
            if c > 2:
                continue
            ops.append(Op("concat", (draw(acts),)))
            c = 2 * c
        elif kind == "norm":
            ops.append(Op("norm", ()))
    ops.append(Op("flatten", (draw(st.sampled_from(("module", "view", "reshape", "torch.flatten"))),)))
    if draw(st.booleans()):
        ops.append(Op("linear", (draw(st.integers(2, 6)),)))
        ops.append(Op("act", (draw(acts),)))
    ops.append(Op("linear", (n_out,)))
    weights = draw(st.sampled_from(("unit", "unit", "unit", "int", "bigint")))
    return ConvNet(in_shape, tuple(ops), draw(st.integers(0, 2**16)), weights)


@st.composite
def conv_cases(draw: Any) -> Case:
    """Small CNNs over pixel boxes, Lp balls and segments (identity or a tiny FC generator)."""
    in_shape = (draw(st.integers(1, 2)), draw(st.integers(2, 4)), draw(st.integers(2, 4)))
    n = math.prod(in_shape)
    smooth = draw(st.booleans())
    n_out = draw(st.integers(1, 3))
    net = draw(conv_nets(in_shape, n_out, smooth))
    kind = draw(st.sampled_from(("segment", "segment", "box", "linf", "l2", "l1")))
    generator, control_dim = None, None
    if kind == "segment" and draw(st.booleans()):
        control_dim = draw(st.integers(1, 2))
        generator = FCGenerator(draw(fc_nets(control_dim, n, max_depth=1, max_width=3)), in_shape)
    if kind == "segment" and generator is None:
        start = tuple(draw(st.floats(0, 1)) for _ in range(n))
        direction = draw(st.sampled_from((0.05, 0.3, 1.0)))
        end = tuple(s + direction * draw(st.floats(-1, 1)) for s in start)
        region: RegionDesc = SegmentDesc(start, end, draw(st.sampled_from(("float32", "float64"))), in_shape)
    else:
        region = draw(regions(n, (kind,), shape=in_shape, control_dim=control_dim))
        if isinstance(region, BallDesc):
            region = dataclasses.replace(region, eps=min(region.eps, 0.5))
    case = Case("conv", net, region, None, generator)
    nmod, gmod = case.modules()
    spec = draw(specs(origin_outputs(nmod, gmod, region)))
    return dataclasses.replace(case, spec=spec)


# --- VNN-LIB properties -------------------------------------------------------------------------------------


def decimal(value: float, digits: int) -> str:
    """``value`` written with ``digits`` decimals (many digits on purpose); never scientific notation."""
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0")
        if text.endswith("."):
            text += "0"
    return "0.0" if text in ("-0.0", "-0") else text


@st.composite
def vnnlib_texts(draw: Any, lower: list[float], upper: list[float], y0: list[float]) -> str:
    """A property over X_0.. in the box and Y_0..: top-level asserts (conjoined), and/or of comparisons."""
    n_y = len(y0)
    digits = st.integers(1, 24)

    def const(i: int) -> str:
        delta = draw(st.sampled_from((0.0, 1e-3, 0.05, 0.3, 1.0, -0.05, -0.3)) | st.floats(-2, 2))
        return decimal(y0[i] + delta, draw(digits))

    def atom() -> str:
        i = draw(st.integers(0, n_y - 1))
        op = draw(st.sampled_from(("<=", ">=")))
        if n_y > 1 and draw(st.integers(0, 2)) == 0:
            j = draw(st.integers(0, n_y - 1).filter(lambda j: j != i))
            return f"({op} Y_{i} Y_{j})"
        if draw(st.integers(0, 4)) == 0:
            return f"({op} {const(i)} Y_{i})"  # the constant first
        return f"({op} Y_{i} {const(i)})"

    def conj() -> str:
        parts = [atom() for _ in range(draw(st.integers(1, 3)))]
        return parts[0] if len(parts) == 1 and draw(st.booleans()) else f"(and {' '.join(parts)})"

    def body() -> str:
        shape = draw(st.sampled_from(("atom", "and", "or-atoms", "or-ands")))
        if shape == "atom":
            return atom()
        if shape == "and":
            return f"(and {' '.join(atom() for _ in range(draw(st.integers(1, 3))))})"
        if shape == "or-atoms":
            return f"(or {' '.join(atom() for _ in range(draw(st.integers(1, 3))))})"
        return f"(or {' '.join(conj() for _ in range(draw(st.integers(1, 3))))})"

    lines = ["; random property (tests/soundness)"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_y)]
    for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
        lines.append(f"(assert (>= X_{i} {decimal(lo, draw(digits))}))")
        lines.append(f"(assert (<= X_{i} {decimal(hi, draw(digits))}))")
    for _ in range(draw(st.integers(1, 3))):
        lines.append(f"(assert {body()})")
    return "\n".join(lines) + "\n"


@st.composite
def vnnlib_cases(draw: Any) -> Case:
    """A small FC network and a random VNN-LIB property over a box of its inputs."""
    n_in = draw(st.integers(1, 2))
    n_out = draw(st.integers(1, 3))
    net = draw(fc_nets(n_in, n_out, max_depth=2))
    bounds = [_interval(draw) for _ in range(n_in)]
    lower, upper = [b[0] for b in bounds], [b[1] for b in bounds]
    module = net.build()
    x = torch.tensor([(a + b) / 2 for a, b in bounds], dtype=torch.float64).reshape(1, -1)
    with torch.no_grad():
        y0 = float64_copy(module)(x).reshape(-1).tolist()
    text = draw(vnnlib_texts(lower, upper, y0))
    return Case("vnnlib", net, None, None, vnnlib=text)
