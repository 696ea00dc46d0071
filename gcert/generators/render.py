"""Mutation strips: the images a generator produces along a segment ``c0 + t * delta * direction``,
rendered as a PNG grid (one row per input) so a person can see what a mutation does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from gcert.errors import GcertError, InputError

if TYPE_CHECKING:
    from gcert.plugins import Registry


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

    canvas = grid_canvas(rows, value_range, gap, leading)
    big = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(big).save(os.fspath(path))


def grid_canvas(rows: Sequence[torch.Tensor], value_range: tuple[float, float] = (0.0, 1.0), gap: int = 2,
                leading: Sequence[torch.Tensor] | None = None, background: int = 128) -> np.ndarray:
    """The RGB uint8 canvas of :func:`save_grid` at one pixel per image pixel: rows of tiles ``gap`` apart, each
    ``leading`` image (C, H, W) in front of its row after a gap of ``w + 3 gap``, on a ``background`` grey."""
    if not rows:
        raise ValueError("nothing to render")
    tiles = [to_uint8(r, value_range) for r in rows]
    first = [to_uint8(im.unsqueeze(0), value_range)[0] for im in leading] if leading is not None else None
    h, w = tiles[0].shape[1:3]
    cols = max(t.shape[0] for t in tiles)
    extra = (w + 3 * gap) if first is not None else 0
    width = extra + cols * w + (cols - 1) * gap
    canvas = np.full((len(tiles) * h + (len(tiles) - 1) * gap, width, 3), background, dtype=np.uint8)
    for i, row in enumerate(tiles):
        y = i * (h + gap)
        if first is not None:
            canvas[y : y + h, :w] = first[i]
        for j, tile in enumerate(row):
            x = extra + j * (w + gap)
            canvas[y : y + h, x : x + w] = tile
    return canvas


@dataclass
class Strips:
    """One row of images per input along a mutation's segment, with the inversion error of each input."""

    rows: list[torch.Tensor]
    inputs: list[torch.Tensor]
    inversion_errors: list[float]
    delta: float
    unit: str
    t: torch.Tensor


def mutation_strips(registry: Registry, mutation: str, images: torch.Tensor, delta: float | None = None,
                    steps: int = 9, symmetric: bool = False) -> Strips:
    """Render ``mutation`` of strength ``delta`` (default: its own) on each image of ``images``.

    Each image is inverted into the mutation's generator and the region is built by the same
    ``gcert_input_region`` hook the runner uses, so the strip shows exactly the segment a certifier
    analyses: ``t`` from 0 to 1 (from -1 with ``symmetric``, the mutation of strength ``-delta``).
    """
    m = registry.mutation(mutation)
    if m.norm is not None:
        raise GcertError(f"mutation {mutation!r} is a ball of images around the input, not a segment: "
                         "there is no strip to render")
    spec = registry.generator_spec(m.generator)
    generator = registry.generator(m.generator)
    if spec.invert is None:
        raise GcertError(f"generator {spec.name!r} cannot invert inputs, so there is nothing to mutate")
    if spec.image_shape is not None and tuple(images.shape[1:]) != tuple(spec.image_shape):
        raise InputError(f"mutation {mutation!r} runs through generator {spec.name!r}, which makes images of shape "
                         f"{tuple(spec.image_shape)}; these inputs have shape {tuple(images.shape[1:])}")
    strength = m.default_delta if delta is None else float(delta)
    t = torch.linspace(-1.0 if symmetric else 0.0, 1.0, steps).unsqueeze(1)
    rows, errors = [], []
    for image in images:
        control, error = spec.invert(generator, image)
        region = registry.pm.hook.gcert_input_region(mutation=m, generator=generator, control=control, delta=strength)
        if region is None or region.dim != 1:
            raise GcertError(f"mutation {mutation!r} does not give a segment; only segments render as strips")
        embed = region.embedding()
        with torch.no_grad():
            rows.append(generator(embed(t.to(control.dtype))))
        errors.append(float(error))
    return Strips(rows, list(images), errors, strength, m.unit, t.reshape(-1))
