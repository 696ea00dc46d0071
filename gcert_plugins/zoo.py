"""The zoo's regulated generators and their mutations (geometric, global and local perceptual),
registered through the hooks like any plugin's; each reads its details from the zoo manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import gcert
from gcert import zoo
from gcert.contracts import GeneratorSpec, Mutation
from gcert.generators.inversion import CachedInverter


class ZooInverter(CachedInverter):
    """``invert(G, image)`` for a zoo generator: its encoder's guess refined by Adam with restarts (cached per
    image, batched by ``invert_many``, see :class:`gcert.generators.inversion.CachedInverter`). Factor coordinates
    stay inside the range the generator was trained on.
    """

    def __init__(self, name: str, dim: int, factors: int, restarts: int = 3, steps: int = 100):
        big = torch.full((dim,), 1e6)
        big[:factors] = 1.0
        super().__init__((dim,), restarts, steps, bounds=(-big, big))
        self.name, self.dim, self.factors = name, dim, factors
        self._encoder: nn.Module | None = None

    def encoder(self) -> nn.Module:
        if self._encoder is None:
            self._encoder = zoo.load_encoder(self.name)
        return self._encoder


class ZooDirection:
    """The direction of one unit of a manifest mutation at a control point (see gcert_zoo.mutations)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec

    def __call__(self, generator: nn.Module, control: torch.Tensor) -> torch.Tensor:
        from gcert_zoo.mutations import mutation_direction

        return mutation_direction(generator, control, self.spec)


def _generators() -> list[dict[str, Any]]:
    return [e for e in zoo.entries() if e["kind"] == "generator"]


@gcert.hookimpl
def gcert_register_generators(register: Callable[[GeneratorSpec], None]) -> None:
    for e in _generators():
        space = e["control_space"]
        units = ", ".join(f"{f['name']} ({f['unit']})" for f in space["factors"]) or (
            "none (mutations are Jacobian-SVD directions found at each input)")
        register(GeneratorSpec(
            name=e["name"], loader=lambda n=e["name"]: zoo.load_generator(n), control_shape=(space["dim"],),
            image_shape=tuple(e["image_shape"]), value_range=tuple(e["value_range"]),
            piecewise_linear=bool(e["piecewise_linear"]),
            invert=ZooInverter(e["name"], space["dim"], space["content"]["first"]),
            description=f"regulated zoo generator, {space['dim']} latent dims; factors {units}; for {e['network']}",
        ))


@gcert.hookimpl
def gcert_register_mutations(register: Callable[[Mutation], None]) -> None:
    for e in _generators():
        for m in e["mutations"]:
            where = f", only the {m['foreground']} region (Eq. 17)" if m.get("foreground") else ""
            if m.get("direction") == "svd":
                where = (f", along the measured {m['factor']} gradient in the leading Jacobian-SVD subspace "
                         f"(rank threshold {m['rank_threshold']:g}), calibrated by measurement at each input")
            register(Mutation(
                m["name"], m["kind"], e["name"], m["unit"], float(m["default_delta"]), direction=ZooDirection(m),
                description=f"{m['factor']} by delta {m['unit']} through {e['name']}{where}",
            ))
