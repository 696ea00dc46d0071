"""Architectures of the zoo's networks and generators, by the name the manifest gives.

Generators use only standard layers and a reshape, end in the piecewise-linear output, and are
shipped with BatchNorm folded away, so every certifier can analyse ``f(G(z))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from gcert_zoo.pairs import faces_pair
from gcert_zoo.weather import WEATHER_ARCHITECTURES
from torch import nn

from gcert.generators import PiecewiseLinearOutput


def digits_cnn() -> nn.Module:
    """A small CNN for 1x8x8 digits in [0, 1]."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def _small_cnn(channels: int, size: int, classes: int) -> nn.Module:
    side = size // 4
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * side * side, 32), nn.ReLU(), nn.Linear(32, classes),
    )


def shapes_cnn() -> nn.Module:
    """Rectangle (0) or ellipse (1), from a 1x32x32 image."""
    return _small_cnn(1, 32, 2)


def faces_cnn() -> nn.Module:
    """Which of the four cartoon people (0-3) a 3x32x32 face shows."""
    return _small_cnn(3, 32, 4)


class LatentGenerator(nn.Module):
    """``z -> image``: a fully connected head, a reshape to a small grid, an upsampling body, and the
    piecewise-linear output ``ReLU(1 - ReLU(x))``. The reshape is a tensor method (not
    ``nn.Unflatten``) because auto_LiRPA 0.3 cannot bound Unflatten.
    """

    def __init__(self, latent_dim: int, head: nn.Sequential, body: nn.Sequential, grid: tuple[int, int, int]):
        super().__init__()
        self.latent_dim, self.grid = latent_dim, tuple(grid)
        self.head, self.body = head, body
        self.out = PiecewiseLinearOutput()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).reshape(-1, self.grid[0], self.grid[1], self.grid[2])
        return self.out(self.body(h))


def _block(layer: nn.Module, width: int, batchnorm: bool, dims: int) -> list[nn.Module]:
    norm: list[nn.Module] = []
    if batchnorm:
        norm = [nn.BatchNorm1d(width) if dims == 1 else nn.BatchNorm2d(width)]
    return [layer, *norm, nn.ReLU()]


def _deconv_generator(latent: int, channels: int, widths: tuple[int, ...], batchnorm: bool) -> LatentGenerator:
    """4x4 grid, doubled per ConvTranspose(2, stride 2) (no padding: auto_LiRPA 0.3 needs none).

    BatchNorm (folded before shipping) sits in the dense head and the first upsampling layer only:
    on this 2-core CPU, normalising the large high-resolution maps costs more time than it helps.
    """
    first = widths[0]
    head = nn.Sequential(*_block(nn.Linear(latent, 256), 256, batchnorm, 1),
                         *_block(nn.Linear(256, first * 16), first * 16, batchnorm, 1))
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += _block(nn.ConvTranspose2d(a, b, 2, stride=2), b, batchnorm and i == 0, 2)
    layers.append(nn.Conv2d(widths[-1], channels, 3, padding=1))
    return LatentGenerator(latent, head, nn.Sequential(*layers), (first, 4, 4))


def digits_generator(batchnorm: bool = False) -> LatentGenerator:
    """16 latent dims (5 geometric + 11 content) -> 1x8x8 digits; a small MLP."""
    head = nn.Sequential(*_block(nn.Linear(16, 128), 128, batchnorm, 1),
                         *_block(nn.Linear(128, 256), 256, batchnorm, 1), nn.Linear(256, 64))
    return LatentGenerator(16, head, nn.Sequential(), (1, 8, 8))


def shapes_generator(batchnorm: bool = False) -> LatentGenerator:
    """10 latent dims (5 geometric + 5 content) -> 1x32x32 shapes."""
    return _deconv_generator(10, 1, (32, 24, 16, 8), batchnorm)


def faces_generator(batchnorm: bool = False) -> LatentGenerator:
    """16 latent dims (4 attributes + 12 content) -> 3x32x32 cartoon faces.

    Each ConvTranspose(2, stride 2) decodes one grid cell into its own 8x8 patch, so the channels are the
    patch's whole capacity: at (48, 32, 16, 12) the generator drew a near-average face on a fixed noise
    texture with open eyes for every openness; at this width, same recipe, eyes close, frowns turn to
    smiles and the background is near flat (inversion RMSE 0.055 -> 0.036, eyes -0.5 measured -0.76 ->
    -0.66, background_ratio of eyes 0.40 -> 0.29).
    """
    return _deconv_generator(16, 3, (96, 64, 32, 16), batchnorm)


class Encoder(nn.Module):
    """Image -> latent code, for inversion: the factor coordinates and the content mean; ``logvar``
    (content only) is used while training the generator as a VAE and ignored afterwards.
    """

    def __init__(self, channels: int, size: int, factors: int, content: int):
        super().__init__()
        self.factors, self.content = factors, content
        # 32x32 inputs are halved by the first layer already: full-resolution maps cost most of a step
        first = 2 if size > 8 else 1
        layers: list[nn.Module] = [nn.Conv2d(channels, 16, 3, stride=first, padding=1), nn.ReLU()]
        width, side = 16, size // first
        while side > 4:  # halve to a 4x4 grid, so the dense part stays small
            layers += [nn.Conv2d(width, 32, 3, stride=2, padding=1), nn.ReLU()]
            width, side = 32, side // 2
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 16, 256), nn.ReLU())
        self.mean = nn.Linear(256, factors + content)
        self.logvar = nn.Linear(256, content)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean(self.features(x))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.mean(h), self.logvar(h).clamp(-8, 4)


ENCODERS: dict[str, Callable[[], Encoder]] = {
    "digits_encoder": lambda: Encoder(1, 8, 5, 11),
    "shapes_encoder": lambda: Encoder(1, 32, 5, 5),
    # shapes-svd: no factor coordinates, all 10 latent dims are content (an unsupervised VAE's encoder)
    "shapes_encoder_svd": lambda: Encoder(1, 32, 0, 10),
    "faces_encoder": lambda: Encoder(3, 32, 4, 12),
}

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "digits_cnn": digits_cnn,
    "shapes_cnn": shapes_cnn,
    "faces_cnn": faces_cnn,
    "faces_pair": faces_pair,
    "digits_generator": digits_generator,
    "shapes_generator": shapes_generator,
    "faces_generator": faces_generator,
    **ENCODERS,
    **WEATHER_ARCHITECTURES,
}
