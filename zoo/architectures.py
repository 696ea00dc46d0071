"""Architectures of the zoo's networks, by the name the manifest gives."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def digits_cnn() -> nn.Module:
    """A small CNN for 1x8x8 digits in [0, 1]."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {"digits_cnn": digits_cnn}
