"""One lowering of ``f o G`` per process, shared by every task of a run: only the embedding differs between them.

:func:`lowered_composition` lowers ``network(generator(c))`` (input: the control) once per pair of module
objects and prepends each task's :class:`~gcert.regions.Embed` as one affine node. A cached lowering is used
only while both modules hold the very tensors, unmodified (``_version``), that it was lowered from.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gcert.lowering import Affine, Lowered, Node, lower
from gcert.regions import Embed

Tensor = torch.Tensor
_CACHE: weakref.WeakKeyDictionary[nn.Module, weakref.WeakKeyDictionary[nn.Module, tuple[Any, Lowered]]] = (
    weakref.WeakKeyDictionary())


class _Inner(nn.Module):
    """``f(G(c))``, named as in :class:`gcert.problem.ComposedNetwork` (so layer names in messages agree)."""

    def __init__(self, generator: nn.Module, network: nn.Module):
        super().__init__()
        self.generator, self.network = generator, network

    def forward(self, c: Tensor) -> Tensor:
        return self.network(self.generator(c))


def fingerprint(*modules: nn.Module) -> tuple[Any, ...]:
    """Which tensors the modules hold and how often each was modified in place (cheap: no data is read)."""
    tensors = tuple((id(t), t.data_ptr(), tuple(t.shape), t.dtype, t._version)
                    for m in modules for t in (*m.parameters(), *m.buffers()))
    return tensors + tuple(sub.training for m in modules for sub in m.modules())


def inner_lowering(generator: nn.Module, network: nn.Module, control_shape: tuple[int, ...]) -> Lowered:
    """``network(generator(c))`` lowered for controls of ``control_shape``: built once, then reused."""
    per_gen = _CACHE.setdefault(generator, weakref.WeakKeyDictionary())
    key = (tuple(control_shape), fingerprint(generator, network))
    hit = per_gen.get(network)
    if hit is not None and hit[0] == key:
        return hit[1]
    lowered = lower(_Inner(generator, network).eval(), tuple(control_shape))
    per_gen[network] = (key, lowered)
    return lowered


def lowered_composition(embed: nn.Module, generator: nn.Module, network: nn.Module, dim: int) -> Lowered | None:
    """``network(generator(embed(t)))`` lowered, reusing the lowering of ``f o G``; None when ``embed`` is not an
    :class:`Embed` (the caller then lowers the whole composition)."""
    if not isinstance(embed, Embed) or embed.linear.in_features != dim:
        return None
    shape = embed.control_shape
    inner = inner_lowering(generator, network, shape)
    w = embed.linear.weight.detach().to(torch.float64).clone()
    aw = w.abs()
    bias = embed.linear.bias.detach().to(torch.float64).reshape(shape).clone()

    def lin(v: Tensor) -> Tensor:
        return F.linear(v, w).reshape(v.shape[0], *shape)

    def alin(v: Tensor) -> Tensor:
        return F.linear(v, aw).reshape(v.shape[0], *shape)

    def transpose(rows: Tensor) -> Tensor:
        return rows.reshape(rows.shape[0], -1) @ w

    first = Node(Affine(lin, bias, alin, dim, transpose), (-1,), tuple(shape), "embed.linear")
    nodes = [first] + [Node(n.op, tuple(j + 1 if j >= 0 else 0 for j in n.inputs), n.shape, n.source)
                       for n in inner.nodes]
    out = Lowered((dim,), nodes, inner.output + 1 if inner.output >= 0 else 0)
    assert math.prod(shape) == w.shape[0]
    return out
