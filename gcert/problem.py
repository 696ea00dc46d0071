"""A certification problem (f, G, region, spec) and its composed network N(t) = f(G(embed(t))).

Every certifier receives the same :class:`ComposedNetwork`, built once per problem.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gcert.regions import Region
from gcert.spec import Spec


class ComposedNetwork(nn.Module):
    """``N(t) = f(G(embed(t)))``: a plain torch module whose input ``t`` ranges over the region's box."""

    def __init__(self, embed: nn.Module, generator: nn.Module, network: nn.Module):
        super().__init__()
        self.embed, self.generator, self.network = embed, generator, network

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.network(self.generator(self.embed(t)))


@dataclass
class Problem:
    """Does ``spec`` hold for ``network(generator(c))`` for every control ``c`` in ``region``?

    ``meta`` carries what the record needs (input id, label, mutation, delta, unit).
    """

    network: nn.Module
    generator: nn.Module
    region: Region
    spec: Spec
    meta: dict[str, Any] = field(default_factory=dict)
    _composed: ComposedNetwork | None = field(default=None, init=False, repr=False)
    _lowered: Any = field(default=None, init=False, repr=False)

    def composed(self) -> ComposedNetwork:
        """N, built once; in eval mode and without gradients on its parameters."""
        if self._composed is None:
            n = ComposedNetwork(self.region.embedding(), self.generator, self.network).eval()
            n.requires_grad_(False)
            self._composed = n
        return self._composed

    def lowered(self) -> Any:
        """N lowered into primitive float64 ops (:mod:`gcert.lowering`), built once and shared by native certifiers."""
        if self._lowered is None:
            from gcert.composed_cache import lowered_composition
            from gcert.lowering import lower

            n = self.composed()  # the lowering of f o G is shared by every problem of this generator and network
            self._lowered = lowered_composition(n.embed, n.generator, n.network, self.region.dim)
            if self._lowered is None:
                self._lowered = lower(n, (self.region.dim,))
        return self._lowered

    @property
    def dtype(self) -> torch.dtype:
        """The precision the model runs in: its network's (else its generator's) parameters, float32 by default."""
        for module in (self.network, self.generator):
            for p in itertools.chain(module.parameters(), module.buffers()):  # lazily: called per forward pass
                if p.is_floating_point():
                    return p.dtype
        return torch.float32

    @torch.no_grad()
    def outputs(self, t: torch.Tensor) -> torch.Tensor:
        """Plain forward pass of N at points ``t`` of shape (batch, dim)."""
        return self.composed()(t.to(self.dtype))

    @torch.no_grad()
    def margins(self, t: torch.Tensor) -> torch.Tensor:
        """Spec margin of N at points ``t`` (batch, dim) -> (batch,); > 0 means the spec holds."""
        return self.spec.margin(self.outputs(t))
