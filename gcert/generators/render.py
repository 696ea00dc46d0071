"""Mutation strips: the images a generator produces along a segment ``c0 + t * delta * direction``,
rendered as a PNG grid (one row per input) so a person can see what a mutation does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def segment_images(generator: nn.Module, start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``G(start + t * (end - start))`` for ``steps`` evenly spaced ``t`` in [0, 1]: (steps, C, H, W)."""
    if steps < 2:
        raise ValueError("a strip needs at least 2 steps")
    t = torch.linspace(0, 1, steps, dtype=start.dtype).reshape(-1, *([1] * start.dim()))
    controls = start.unsqueeze(0) + t * (end - start).unsqueeze(0)
    return generator(controls)


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) floats in ``value_range`` -> (N, H, W, 3) uint8 (grey images repeated to RGB)."""
    lo, hi = value_range
    x = ((images.detach().float() - lo) / (hi - lo)).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        raise ValueError(f"can only render 1- or 3-channel images, got {x.shape[1]} channels")
    return (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(rows: Sequence[torch.Tensor], path: str | os.PathLike[str], scale: int = 8,
              value_range: tuple[float, float] = (0.0, 1.0), gap: int = 2,
              leading: Sequence[torch.Tensor] | None = None) -> None:
    """Write rows of images (each (K, C, H, W)) as one PNG, enlarged ``scale`` times without smoothing.

    ``leading`` optionally puts one image in front of each row, set apart by a wider gap (gcert
    mutate shows the input there, so the inversion error is visible next to ``G(c0)``).
    """
    from PIL import Image

    if not rows:
        raise ValueError("nothing to render")
    tiles = [to_uint8(r, value_range) for r in rows]
    first = [to_uint8(im.unsqueeze(0), value_range)[0] for im in leading] if leading is not None else None
    h, w = tiles[0].shape[1:3]
    cols = max(t.shape[0] for t in tiles)
    extra = (w + 3 * gap) if first is not None else 0
    width = extra + cols * w + (cols - 1) * gap
    canvas = np.full((len(tiles) * h + (len(tiles) - 1) * gap, width, 3), 128, dtype=np.uint8)
    for i, row in enumerate(tiles):
        y = i * (h + gap)
        if first is not None:
            canvas[y : y + h, :w] = first[i]
        for j, tile in enumerate(row):
            x = extra + j * (w + gap)
            canvas[y : y + h, x : x + w] = tile
    big = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(big).save(os.fspath(path))
