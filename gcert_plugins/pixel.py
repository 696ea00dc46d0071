"""Mutations that need no trained generator: brightness, contrast, and pixel L-inf / L2 / L1 balls.

They run through the ``pixel`` generator, the identity on the valid image range [0, 1]
(it saturates outside it, as a camera does), so they are problems of the same kind as latent ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

import gcert
from gcert.contracts import GeneratorSpec, Mutation


class PixelGenerator(nn.Hardtanh):
    """``G(c) = clamp(c, 0, 1)``: the identity generator on images in [0, 1]."""

    value_range = (0.0, 1.0)

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)


def _identity_inverse(generator: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, float]:
    return image, 0.0


def brightness_direction(generator: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Every pixel brighter by one unit of intensity."""
    return torch.ones_like(image)


def contrast_direction(generator: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Scale each channel about its own mean: ``x + t * (x - mean)``, so brightness stays put.

    Strength 0.2 means 20 % more contrast; a negative strength lowers contrast.
    """
    dims = tuple(range(image.dim() - 2, image.dim())) if image.dim() >= 3 else tuple(range(image.dim()))
    return image - image.mean(dim=dims, keepdim=True)


@gcert.hookimpl
def gcert_register_generators(register: Callable[[GeneratorSpec], None]) -> None:
    register(GeneratorSpec(
        name="pixel", loader=PixelGenerator, control_shape=None, image_shape=None, value_range=(0.0, 1.0),
        piecewise_linear=True, invert=_identity_inverse,
        description="identity on [0, 1] images (saturating): pixel-level mutations",
    ))


@gcert.hookimpl
def gcert_register_mutations(register: Callable[[Mutation], None]) -> None:
    register(Mutation("brightness", "pixel", "pixel", "intensity", 0.1, direction=brightness_direction,
                      description="add delta to every pixel (images in [0, 1]; saturates at 0 and 1)"))
    register(Mutation("contrast", "pixel", "pixel", "factor", 0.2, direction=contrast_direction,
                      description="scale each channel about its mean by (1 + delta)"))
    register(Mutation("linf", "pixel", "pixel", "L-inf", 0.01, norm=math.inf,
                      description="every image within L-inf distance delta (clipped to [0, 1])"))
    register(Mutation("l2", "pixel", "pixel", "L2", 0.1, norm=2,
                      description="every image within L2 distance delta (clipped to [0, 1])"))
    register(Mutation("l1", "pixel", "pixel", "L1", 1.0, norm=1,
                      description="every image within L1 distance delta (clipped to [0, 1])"))
