"""Stylized mutations (GCert section 5.4.3): ``foggy`` and ``rainy`` driving scenes through the zoo's regulated
conditional generators ``G(a, delta)``, registered from the zoo manifest's ``stylized-generator`` entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import gcert
from gcert import zoo
from gcert.contracts import GeneratorSpec, Mutation
from gcert.errors import InputError

KIND = "stylized-generator"


def _entries() -> list[dict[str, Any]]:
    return [e for e in zoo.entries() if e["kind"] == KIND]


def load_stylized(name: str) -> nn.Module:
    """The zoo's stylized generator ``name``: control ``[a.flatten(), delta]`` (batch, C*H*W + 1) -> images."""
    from gcert_zoo.weather import WEATHER_ARCHITECTURES
    from safetensors.torch import load_file

    e = zoo.entry(name)
    module = WEATHER_ARCHITECTURES[e["architecture"]]()
    module.load_state_dict(load_file(str(zoo.zoo_dir() / e["weights"])))
    return module.eval().requires_grad_(False)


class StylizedInverter:
    """``invert(G, image)`` for ``G(a, delta)``: the control is the image itself at strength 0.

    The error reported is the mean absolute pixel difference ``|G([a, 0]) - a|``: the certificate speaks about
    ``G``'s scene, which at strength 0 equals the input up to float rounding (the generators are built so).
    """

    def __init__(self, image_shape: tuple[int, ...]):
        self.image_shape = tuple(image_shape)

    def __call__(self, generator: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, float]:
        if tuple(image.shape) != self.image_shape:
            raise InputError(f"a stylized generator for {self.image_shape} images cannot start from an image of "
                             f"shape {tuple(image.shape)}")
        image = image.float()
        control = torch.cat([image.reshape(-1), torch.zeros(1)])
        with torch.no_grad():
            error = float((generator(control.unsqueeze(0))[0] - image).abs().mean())
        return control, error


def strength_direction(generator: nn.Module, control: torch.Tensor) -> torch.Tensor:
    """One unit of strength moves only the last control coordinate, ``delta``."""
    direction = torch.zeros_like(control)
    direction[-1] = 1.0
    return direction


@gcert.hookimpl
def gcert_register_generators(register: Callable[[GeneratorSpec], None]) -> None:
    for e in _entries():
        shape = tuple(e["image_shape"])
        register(GeneratorSpec(
            name=e["name"], loader=lambda n=e["name"]: load_stylized(n), control_shape=(e["control_space"]["dim"],),
            image_shape=shape, value_range=tuple(e["value_range"]), piecewise_linear=bool(e["piecewise_linear"]),
            invert=StylizedInverter(shape),
            description=f"regulated {e['style']} generator G(a, delta), control [image, delta]; for {e['network']}",
        ))


@gcert.hookimpl
def gcert_register_mutations(register: Callable[[Mutation], None]) -> None:
    for e in _entries():
        for m in e["mutations"]:
            register(Mutation(
                m["name"], m["kind"], e["name"], m["unit"], float(m["default_delta"]), direction=strength_direction,
                description=f"{e['style']} of strength delta in [0, 1] through {e['name']}",
                levels=tuple(float(d) for d in m.get("levels", ())),
            ))
