"""Interval arithmetic over a lowered network, padded outward for float64 rounding.

Shared by native certifiers that need boxes: genprover over the smooth part of a network, and any
certifier that wants a cheap sound bound on some of its values.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    if isinstance(op, Activation | MaxPool):
        # Every activation gcert lowers (with leaky slope >= 0) and max-pooling is non-decreasing in each input.
        if isinstance(op, Activation) and op.kind == "leaky_relu" and op.slope < 0:
            raise ValueError("leaky_relu with a negative slope is not monotone")
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
