"""The host's own regulated autoencoder for a user's images (``gcert generator regulate``), described by a
plain dict so a local zoo entry stores weights plus that dict and :func:`build` rebuilds the module exactly.

Both networks use only Linear, Conv2d, ConvTranspose2d, ReLU and a reshape (plus BatchNorm while
training, folded away before writing), so every certifier can analyse ``f(G(z))``; the decoder ends in
:class:`PiecewiseLinearOutput`, which keeps it piecewise linear end to end.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gcert.generators.regulate import PiecewiseLinearOutput

GENERATOR_ARCH = "gcert-deconv/1"
ENCODER_ARCH = "gcert-encoder/1"
MIN_SIDE, MAX_SIDE = 8, 64
MAX_UPSAMPLINGS = 3


class Decoder(nn.Module):
    """``z -> image``: a dense head, a reshape to a small grid, ConvTranspose(2, stride 2) doublings, a 3x3
    conv to the image channels and the piecewise-linear output. The reshape is a tensor method with
    constant sizes (not ``nn.Unflatten``, which auto_LiRPA 0.3 cannot bound), so fx sees no data-dependent
    control flow.
    """

    def __init__(self, head: nn.Sequential, body: nn.Sequential, grid: tuple[int, int, int],
                 value_range: tuple[float, float]):
        super().__init__()
        self.grid = tuple(int(v) for v in grid)
        self.head, self.body = head, body
        self.out = PiecewiseLinearOutput(value_range)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).reshape(-1, self.grid[0], self.grid[1], self.grid[2])
        return self.out(self.body(h))


class Encoder(nn.Module):
    """``image -> z`` for inversion seeding: stride-2 3x3 convs down to a side of at most 4 (at most three),
    then a dense layer to the latent code."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def upsamplings(height: int, width: int) -> int:
    """How many doublings the decoder uses: the most (at most three) that divide both sides exactly and leave
    a grid of side >= 3; odd or awkward sides get none (the dense head then draws the full-size map)."""
    k = 0
    while k < MAX_UPSAMPLINGS and height % 2 ** (k + 1) == 0 and width % 2 ** (k + 1) == 0 \
            and min(height, width) // 2 ** (k + 1) >= 3:
        k += 1
    return k


def default_architecture(latent: int, image_shape: tuple[int, int, int],
                         value_range: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """The decoder dict for ``image_shape`` (C, H, W): widths halve per doubling, from 32 (images up to 16
    pixels a side) or 64 (larger), never below 8; the dense head is 128 wide (256 above 16 pixels)."""
    channels, height, width = (int(v) for v in image_shape)
    check_shape((channels, height, width))
    k = upsamplings(height, width)
    first = 32 if max(height, width) <= 16 else 64
    widths = [max(8, first // 2**i) for i in range(k + 1)]
    if k == 0:  # the head draws the full map: keep it narrow
        widths = [8]
    return {"name": GENERATOR_ARCH, "latent": int(latent), "channels": channels, "size": [height, width],
            "hidden": 128 if max(height, width) <= 16 else 256, "widths": widths,
            "grid": [widths[0], height // 2**k, width // 2**k], "value_range": [float(v) for v in value_range],
            "batchnorm": False}


def default_encoder_architecture(latent: int, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The encoder dict for ``image_shape``: 16 then 32 channels, halving each side (rounded up) to at most 4."""
    channels, height, width = (int(v) for v in image_shape)
    check_shape((channels, height, width))
    widths, h, w = [], height, width
    while max(h, w) > 4 and len(widths) < 3:
        widths.append(16 if not widths else 32)
        h, w = (h + 1) // 2, (w + 1) // 2
    return {"name": ENCODER_ARCH, "latent": int(latent), "channels": channels, "size": [height, width],
            "widths": widths, "hidden": 128 if max(height, width) <= 16 else 256, "batchnorm": False}


def check_shape(image_shape: tuple[int, ...]) -> None:
    """Refuse shapes the architecture is not made for: (C, H, W) with C in 1..4 and sides 8..64."""
    if len(image_shape) != 3:
        raise ValueError(f"images must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = image_shape
    if not 1 <= c <= 4 or not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ValueError(f"images of shape {tuple(image_shape)} are not supported: 1 to 4 channels and sides "
                         f"from {MIN_SIDE} to {MAX_SIDE} pixels")


def _block(layer: nn.Module, width: int, batchnorm: bool, dims: int) -> list[nn.Module]:
    norm: list[nn.Module] = []
    if batchnorm:
        norm = [nn.BatchNorm1d(width) if dims == 1 else nn.BatchNorm2d(width)]
    return [layer, *norm, nn.ReLU()]


def build(arch: dict[str, Any]) -> nn.Module:
    """The module an architecture dict describes (fresh weights). ``batchnorm: true`` adds BatchNorm after
    the dense layers and the first doubling (encoder: after each conv), for training only:
    :func:`~gcert.generators.regulate.fold_batchnorm` of it loads into the same dict with ``false``.
    """
    name = arch.get("name")
    if name == GENERATOR_ARCH:
        return _decoder(arch)
    if name == ENCODER_ARCH:
        return _encoder(arch)
    raise ValueError(f"unknown architecture {name!r}; known: {GENERATOR_ARCH}, {ENCODER_ARCH}")


def _decoder(arch: dict[str, Any]) -> Decoder:
    latent, channels, hidden = int(arch["latent"]), int(arch["channels"]), int(arch["hidden"])
    widths = [int(w) for w in arch["widths"]]
    grid = tuple(int(v) for v in arch["grid"])
    bn = bool(arch.get("batchnorm", False))
    cells = grid[0] * grid[1] * grid[2]
    head = nn.Sequential(*_block(nn.Linear(latent, hidden), hidden, bn, 1),
                         *_block(nn.Linear(hidden, cells), cells, bn, 1))
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += _block(nn.ConvTranspose2d(a, b, 2, stride=2), b, bn and i == 0, 2)
    layers.append(nn.Conv2d(widths[-1], channels, 3, padding=1))
    value_range = tuple(float(v) for v in arch.get("value_range", (0.0, 1.0)))
    return Decoder(head, nn.Sequential(*layers), grid, value_range)  # type: ignore[arg-type]


def _encoder(arch: dict[str, Any]) -> Encoder:
    latent, channels, hidden = int(arch["latent"]), int(arch["channels"]), int(arch["hidden"])
    h, w = (int(v) for v in arch["size"])
    bn = bool(arch.get("batchnorm", False))
    layers: list[nn.Module] = []
    width = channels
    for out in (int(v) for v in arch["widths"]):
        layers += _block(nn.Conv2d(width, out, 3, stride=2, padding=1), out, bn, 2)
        width, h, w = out, (h + 1) // 2, (w + 1) // 2
    layers += [nn.Flatten(), *_block(nn.Linear(width * h * w, hidden), hidden, bn, 1), nn.Linear(hidden, latent)]
    return Encoder(nn.Sequential(*layers))
