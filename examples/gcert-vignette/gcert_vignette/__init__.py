"""Example third-party gcert plugin: a vignette mutation that darkens an image towards its corners.

Installed, it registers through the ``gcert`` entry points exactly like gcert's built-ins.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import gcert


def vignette_direction(generator: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Per unit of strength, each pixel loses its value times its squared distance from the centre (0..1)."""
    h, w = image.shape[-2:]
    ys = torch.linspace(-1, 1, h, dtype=image.dtype).reshape(h, 1)
    xs = torch.linspace(-1, 1, w, dtype=image.dtype).reshape(1, w)
    falloff = (xs**2 + ys**2) / 2
    return -image * falloff


@gcert.hookimpl
def gcert_register_mutations(register: Callable[[gcert.Mutation], None]) -> None:
    register(gcert.Mutation("vignette", "pixel", "pixel", "strength", 0.3, direction=vignette_direction,
                            description="darken towards the corners (example third-party plugin)"))
