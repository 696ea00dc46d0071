"""Interval arithmetic over a lowered network, padded outward for float64 rounding.

Shared by native certifiers that need boxes: genprover over the smooth part of a network, and any
certifier that wants a cheap sound bound on some of its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gcert.lowering import Activation, Add, Affine, Concat, Lowered, MaxPool

Tensor = torch.Tensor
_U = 2.0**-53  # float64 unit roundoff


@dataclass
class Box:
    lo: Tensor
    hi: Tensor


def affine_box(op: Affine, x: Box) -> Box:
    """Image of a box under ``op``, padded by (fan_in + 2) * u * (|A|(|mid| + rad) + |b|)."""
    mid, rad = (x.lo + x.hi) / 2, (x.hi - x.lo) / 2
    y_mid, y_rad = op(mid), op.abs_linear(rad)
    pad = (op.fan_in + 2) * _U * (op.abs_linear(mid.abs() + rad) + op.bias.abs()) + 1e-300
    return Box(y_mid - y_rad - pad, y_mid + y_rad + pad)


def spec_rows(C: Tensor, d: Tensor, out: Box) -> Box:
    """Bounds of the spec rows ``C @ y + d`` (float64) for outputs ``y`` in the box ``out`` (batch of one)."""
    return affine_box(Affine(lambda x: x @ C.T, d, lambda x: x @ C.abs().T, C.shape[1]),
                      Box(out.lo.reshape(1, -1), out.hi.reshape(1, -1)))


def spec_margin_bound(lowered: Lowered, spec: Any, lo: Tensor, hi: Tensor) -> float:
    """A sound lower bound of ``spec``'s margin (:class:`gcert.spec.Spec`) over the input box ``[lo, hi]``, by
    interval propagation: the ``interval`` certifier's bound and every sound certifier's cheap first pass."""
    out = forward_boxes(lowered, {-1: Box(lo.reshape(1, -1).double(), hi.reshape(1, -1).double())})
    return float(spec.reduce(spec_rows(spec.C, spec.d, out).lo)[0])


def node_box(op: object, args: list[Box]) -> Box:
    """The transfer function of one primitive op on boxes."""
    if isinstance(op, Affine):
        return affine_box(op, args[0])
    if isinstance(op, Add):
        lo, hi = args[0].lo + args[1].lo, args[0].hi + args[1].hi
        pad = 2 * _U * torch.maximum(lo.abs(), hi.abs()) + 1e-300
        return Box(lo - pad, hi + pad)
    if isinstance(op, Concat):
        return Box(op(*[a.lo for a in args]), op(*[a.hi for a in args]))
    if isinstance(op, Activation) and op.kind == "leaky_relu":
        # Any slope: the extremes of a function with one kink at 0 are at the ends or at the kink. s * x rounds.
        x = args[0]
        ends = torch.stack([op(x.lo), op(x.hi)])
        lo, hi = ends.min(dim=0).values, ends.max(dim=0).values
        kink = (x.lo < 0) & (x.hi > 0)
        lo, hi = torch.where(kink, lo.clamp(max=0.0), lo), torch.where(kink, hi.clamp(min=0.0), hi)
        pad = 2 * _U * torch.maximum(lo.abs(), hi.abs()) + 1e-300
        return Box(lo - pad, hi + pad)
    if isinstance(op, Activation | MaxPool):
        # relu, hardtanh (clamps lower with lo <= hi), sigmoid, tanh, atan and max-pooling are non-decreasing.
        lo, hi = op(args[0].lo), op(args[0].hi)
        if isinstance(op, Activation) and not op.piecewise_linear:
            pad = 4 * _U * torch.maximum(lo.abs(), hi.abs()) + 1e-300  # libm: a few ulps at most
            lo, hi = lo - pad, hi + pad
        return Box(lo, hi)
    raise TypeError(f"unknown op {op!r}")


def forward_boxes(lowered: Lowered, boxes: dict[int, Box], begin: int = 0) -> Box:
    """Propagate boxes from node ``begin`` on; ``boxes`` holds every value those nodes read (-1 = input)."""
    boxes = dict(boxes)
    for k in range(begin, len(lowered.nodes)):
        node = lowered.nodes[k]
        boxes[k] = node_box(node.op, [boxes[j] for j in node.inputs])
    return boxes[lowered.output]


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of a float64 sum or product of n terms."""
    nu = n * _U
    return nu / (1 - nu) if nu < 0.5 else float("inf")


@dataclass
class ErrorBounds:
    """Per value: a bound on its magnitude over an input box, and on the rounding error of a float64 forward pass."""

    magnitude: dict[int, Tensor]
    error: dict[int, Tensor]

    def rows(self, lowered: Lowered, C: Tensor, d: Tensor) -> Tensor:
        """Bound on the float64 rounding error of each spec row ``C @ y + d`` computed from a forward pass, (m,)."""
        m = self.magnitude[lowered.output].reshape(-1)
        e = self.error[lowered.output].reshape(-1)
        return C.abs() @ e + gamma(C.shape[1] + 2) * (C.abs() @ m + d.abs())


def _lipschitz(op: Activation) -> float:
    if op.kind == "leaky_relu":
        return max(1.0, abs(op.slope))
    return 0.25 if op.kind == "sigmoid" else 1.0


def error_bounds(lowered: Lowered, lo: Tensor, hi: Tensor, stop: int | None = None) -> ErrorBounds:
    """A priori bounds on the rounding error of a float64 forward pass anywhere in the input box ``[lo, hi]``.

    Each value's error is the error it inherits (through ``|A|``, or an activation's Lipschitz constant) plus
    the error its own op adds (``gamma(fan_in + 2)`` times the magnitudes it sums). Magnitudes come from
    interval propagation of the box, so they hold at every point of it.
    """
    return _error_bounds(lowered, lo, hi, stop, interpolated=False)


def interpolation_bounds(lowered: Lowered, lo: Tensor, hi: Tensor, at_stored_inputs: bool = False) -> ErrorBounds:
    """A priori bounds on the error of the values :func:`gcert.pieces.propagate` carries to its breakpoints (and
    :func:`gcert.line.spec_along`'s last split).

    A breakpoint made inside a piece holds ``v_a + w (v_b - v_a)`` of its two ends for every live value: on an
    affine piece, the exact value at the point ``x_a* + w (x_b* - x_a*)`` between the ends' own exact points, up
    to the ends' errors (a convex combination keeps their maximum) and the rounding of the combination
    (< 2.1 u |v_b - v_a| + u |v|, with |v_b - v_a| at most the slope bound times the width). Every breakpoint
    so has an exact point in ``[lo, hi]`` (the ends are exact) at which its values are known within the bound;
    that is all a minimum margin or a verdict needs. The stored input
    ``x_a + w (x_b - x_a)`` is off that point by its own rounding (< 5.2 u |x|max per split): with
    ``at_stored_inputs`` the bound is against the network at the stored input, adding that times the value's
    slope bound (``|A|`` and Lipschitz constants), which is what a forward pass there is compared with. Each
    split so grows the error ``e`` of every value live during it to ``e + 1.1 u (M + e) + 2.2 u (S W + 2 e)
    [+ 6 u X S]`` (magnitude ``M``, slope ``S``, width ``W`` of the input box, ``X`` its largest magnitude),
    counted as if every activation and every max-pool level split; the ops then add their forward rounding as
    in :func:`error_bounds`.

    The premise is ExactLine's own: the network is affine between consecutive breakpoints. A kink placed from
    values known within ``e`` may sit off the true one by where the true value is within ``e`` of 0; that sliver
    is not bounded here (nor was it when every breakpoint was re-evaluated: the margin between breakpoints rests
    on the same premise). :func:`gcert.line.spec_along` checks the interpolated outputs against a direct forward
    pass at the breakpoints that decide the verdict.
    """
    return _error_bounds(lowered, lo, hi, None, interpolated=True, located=at_stored_inputs)


def _maxpool_levels(op: MaxPool) -> int:
    n, levels = op.kernel[0] * op.kernel[1], 0
    while n > 1:
        n, levels = (n + 1) // 2, levels + 1
    return levels


def _error_bounds(lowered: Lowered, lo: Tensor, hi: Tensor, stop: int | None, interpolated: bool,
                  located: bool = False) -> ErrorBounds:
    stop = len(lowered.nodes) if stop is None else stop
    boxes: dict[int, Box] = {-1: Box(lo.reshape(1, -1).reshape(1, *lowered.input_shape).double(),
                                     hi.reshape(1, *lowered.input_shape).double())}
    mag = {-1: torch.maximum(boxes[-1].lo.abs(), boxes[-1].hi.abs())}
    err = {-1: torch.zeros_like(mag[-1])}  # interpolated: the stored input is the breakpoint, by definition
    slope = {-1: torch.ones_like(mag[-1])}
    x_max = float(mag[-1].max()) if located else 0.0
    width = float((boxes[-1].hi - boxes[-1].lo).abs().max())
    last = lowered.last_use()

    def step(m: Any, s: Any, e: Any) -> Any:
        # fl(v_a + fl(w fl(v_b - v_a))): < 2.1 u |v_b - v_a| + u |result|, where |v_b - v_a| <= S width + 2 e
        return e + 1.1 * _U * (m + e) + 2.2 * _U * (s * width + 2 * e) + 6 * _U * x_max * s + 1e-300

    def split_rounds(k: int, rounds: int) -> None:
        # Every value live while node k splits (read at k or later) is interpolated ``rounds`` times.
        for j in err:
            if j >= 0 and last[j] >= k:
                for _ in range(rounds):
                    err[j] = step(mag[j], slope[j], err[j])

    for k in range(stop):
        node = lowered.nodes[k]
        op = node.op
        boxes[k] = node_box(op, [boxes[j] for j in node.inputs])
        mag[k] = torch.maximum(boxes[k].lo.abs(), boxes[k].hi.abs())
        rounds = 0
        if interpolated and isinstance(op, Activation) and op.piecewise_linear:
            rounds = 1
        elif interpolated and isinstance(op, MaxPool):
            rounds = _maxpool_levels(op)
        if rounds:
            split_rounds(k, rounds)
        ins = [err[j] for j in node.inputs]
        if isinstance(op, Affine):
            m_in = mag[node.inputs[0]]
            err[k] = op.abs_linear(ins[0]) + gamma(op.fan_in + 2) * (op.abs_linear(m_in) + op.bias.abs())
            slope[k] = op.abs_linear(slope[node.inputs[0]])
        elif isinstance(op, Add):
            err[k] = ins[0] + ins[1] + _U * mag[k]
            slope[k] = slope[node.inputs[0]] + slope[node.inputs[1]]
        elif isinstance(op, Concat):
            err[k] = op(*ins)
            slope[k] = op(*[slope[j] for j in node.inputs])
        elif isinstance(op, MaxPool):
            err[k] = op(ins[0])
            slope[k] = op(slope[node.inputs[0]])
            if rounds:  # the pairwise candidates of each level are interpolated too; |floor| <= 2 max|x| + 1
                src = node.inputs[0]
                m, sl = 2 * float(mag[src].max()) + 1, float(slope[src].max())
                for _ in range(rounds):
                    err[k] = step(m, sl, err[k])
        else:
            own = 0.0 if op.kind in ("relu", "hardtanh") else 4 * _U * mag[k]
            err[k] = _lipschitz(op) * ins[0] + own
            slope[k] = _lipschitz(op) * slope[node.inputs[0]]
    if interpolated and lowered.output >= 0:
        split_rounds(len(lowered.nodes), 1)  # the spec's own split (rows and their order inside clauses)
    return ErrorBounds(mag, err)
