"""The zoo's regulated generators and their mutations (geometric, global and local perceptual),
registered through the hooks like any plugin's; each reads its details from the zoo manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import gcert
from gcert import zoo
from gcert.contracts import GeneratorSpec, Mutation
from gcert.generators.inversion import invert, invert_many


class ZooInverter:
    """``invert(G, image)`` for a zoo generator: its encoder's guess refined by Adam with restarts.

    Results are cached per image, since a run inverts the same input once per (mutation, delta,
    certifier); :meth:`invert_many` inverts many images as one batch (the same search; its results agree with
    one-by-one inversion to float32 rounding, not bitwise). Factor coordinates stay inside the range
    the generator was trained on.
    """

    def __init__(self, name: str, dim: int, factors: int, restarts: int = 3, steps: int = 100):
        self.name, self.dim, self.factors = name, dim, factors
        self.restarts, self.steps = restarts, steps
        self._encoder: nn.Module | None = None
        self._cache: dict[str, tuple[torch.Tensor, float]] = {}

    def __call__(self, generator: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, float]:
        key = self._key(image)
        if key not in self._cache:
            result = invert(generator, image.float(), (self.dim,), encoder=self._load_encoder(),
                            restarts=self.restarts, steps=self.steps, bounds=self._bounds())
            self._cache[key] = (result.control, result.error)
        control, error = self._cache[key]
        return control.clone(), error

    @staticmethod
    def _key(image: torch.Tensor) -> str:
        return hashlib.sha256(image.detach().float().contiguous().numpy().tobytes()).hexdigest()

    def _load_encoder(self) -> nn.Module:
        if self._encoder is None:
            self._encoder = zoo.load_encoder(self.name)
        return self._encoder

    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        big = torch.full((self.dim,), 1e6)
        big[: self.factors] = 1.0
        return -big, big

    def invert_many(self, generator: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """``self(generator, image)`` for every image (batch first); the ones not cached are inverted as one batch."""
        keys = [self._key(im) for im in images]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in self._cache}.values())
        if todo:
            results = invert_many(generator, images[todo].float(), (self.dim,), encoder=self._load_encoder(),
                                  restarts=self.restarts, steps=self.steps, bounds=self._bounds())
            for i, result in zip(todo, results, strict=True):
                self._cache[keys[i]] = (result.control, result.error)
        return [(self._cache[k][0].clone(), self._cache[k][1]) for k in keys]


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
