"""Discover a generator's mutating directions on the user's inputs (GCert section 5.1), see them, measure them in a
unit, and save a chosen one as a named mutation (``gcert directions``).

For each input: invert it, take the Jacobian SVD at its latent (Eq. 5-6), keep the ``top`` leading directions above
the rank threshold, and render each one's strip from ``-delta`` to ``+delta``. ``measure(before, after)`` (a user
function of two image batches, returning one amount per pair in the user's unit) calibrates a direction: its
amount per unit of latent length, from a small step either side. A saved direction is the sign-aligned mean of
one SVD index over the inputs, written as ``NAME.npy`` with ``NAME.json`` (unit, latent length per unit, how well
the inputs agree), which ``--direction NAME.npy`` reads back as the mutation ``NAME`` in that unit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcert.errors import InputError
from gcert.generators.directions import jacobian, svd_split
from gcert.generators.user import LoadedGenerator, UserInverter

Measure = Callable[[torch.Tensor, torch.Tensor], Any]
"""``measure(before, after)``: image batches (N, C, H, W) -> N amounts of change in the user's unit."""


@dataclass
class InputDirections:
    """The leading directions at one input's latent."""

    input_id: str
    control: torch.Tensor
    inversion_error: float
    rank: int
    singular_values: list[float]
    vectors: torch.Tensor  # (k, d), unit length, strongest first
    strips: list[torch.Tensor] = field(default_factory=list)  # per direction: (steps, C, H, W)
    per_unit: list[float] | None = None  # measured amount per unit of latent length, per direction


def discover(gen: LoadedGenerator, images: torch.Tensor, ids: Sequence[str], top: int, delta: float, steps: int,
             rank_threshold: float, measure: Measure | None = None,
             progress: Callable[[int], None] | None = None) -> list[InputDirections]:
    """The ``top`` leading directions at each image's latent, their strips and (with ``measure``) calibration."""
    inverter = UserInverter(gen)
    found = []
    inversions = inverter.invert_many(gen.module, images)
    t = torch.linspace(-1.0, 1.0, steps).unsqueeze(1)
    for input_id, (control, error) in zip(ids, inversions, strict=True):
        split = svd_split(jacobian(gen.module, control), rank_threshold)
        k = min(top, split.rank)
        vectors = split.vectors[:k]
        item = InputDirections(input_id, control, float(error), split.rank,
                               [float(s) for s in split.singular_values[: max(k, 1)]], vectors)
        with torch.no_grad():
            for v in vectors:
                zs = control.double().reshape(1, -1) + t.double() * delta * v.reshape(1, -1)
                item.strips.append(gen.module(zs.float().reshape(steps, *control.shape)))
        if measure is not None:
            item.per_unit = [_per_unit(gen, control, v, delta, measure) for v in vectors]
        found.append(item)
        if progress is not None:
            progress(1)
    return found


def _per_unit(gen: LoadedGenerator, control: torch.Tensor, v: torch.Tensor, delta: float, measure: Measure) -> float:
    """Central difference of the measured amount along ``v``: (m(+h) - m(-h)) / 2h, h = delta / 4."""
    h = delta / 4
    with torch.no_grad():
        base = gen.module(control.float().unsqueeze(0))
        ends = torch.stack([control.double() + s * h * v.reshape(control.shape) for s in (1.0, -1.0)]).float()
        moved = gen.module(ends)
        amounts = np.asarray(measure(base.expand_as(moved), moved), dtype=np.float64).reshape(-1)
    if amounts.size != 2 or not np.isfinite(amounts).all():
        raise InputError(f"--measure gave {amounts.size} amounts ({amounts.tolist()[:4]}) for 2 image pairs; it "
                         "must return one finite number per pair")
    return float((amounts[0] - amounts[1]) / (2 * h))


@dataclass(frozen=True)
class SavedDirection:
    name: str
    index: int
    path: Path
    meta: dict[str, Any]


def save_direction(found: list[InputDirections], index: int, name: str, out: Path, gen: LoadedGenerator,
                   unit: str | None, measure: Measure | None = None, delta: float = 1.0) -> SavedDirection:
    """Write direction ``svd:index``, averaged over the inputs with signs aligned, as ``NAME.npy`` + ``NAME.json``.

    With ``measure``, the saved direction itself is measured at every input's latent, and one unit of strength is
    ``1 / mean`` of those amounts per latent length (signed), so ``--delta 10`` means 10 of the measured unit on
    average; ``agreement`` is the mean cosine between each input's direction and the mean."""
    vectors = [f.vectors[index] for f in found if f.vectors.shape[0] > index]
    if not vectors:
        raise InputError(f"--save {index}={name}: no input has a direction svd:{index} above the rank threshold")
    ref = vectors[0]
    aligned = [v if float(v @ ref) >= 0 else -v for v in vectors]
    mean = torch.stack(aligned).mean(dim=0)
    if float(mean.norm()) == 0:
        raise InputError(f"--save {index}={name}: the inputs' directions svd:{index} cancel out; save another index")
    mean = mean / mean.norm()
    meta: dict[str, Any] = {
        "format": "gcert-direction/1", "name": name, "from": f"svd:{index}", "generator": gen.source,
        "generator_sha256": gen.sha256, "inputs": len(vectors),
        "agreement": round(float(np.mean([float(v @ mean) for v in aligned])), 6),
        "unit": "latent", "latent_per_unit": 1.0,
    }
    if measure is not None:
        per_unit = [_per_unit(gen, f.control, mean.reshape(f.control.shape), delta, measure) for f in found]
        amount = float(np.mean(per_unit))
        if not math.isfinite(amount) or amount == 0:
            raise InputError(f"--save {index}={name}: the measured change along it is {amount}; it cannot be a unit")
        meta.update(unit=unit or "measured", latent_per_unit=1.0 / amount,
                    measured_per_latent_unit={"mean": amount, "min": float(np.min(per_unit)),
                                              "max": float(np.max(per_unit)), "inputs": len(per_unit)})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.npy"
    np.save(path, mean.numpy())
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return SavedDirection(name, index, path, meta)


def write_summary(found: list[InputDirections], out: Path, gen: LoadedGenerator, delta: float,
                  rank_threshold: float, unit: str | None, saved: Sequence[SavedDirection]) -> Path:
    """``directions.json``: per input, the rank, singular values, directions, strips and calibration."""
    summary = {
        "generator": gen.source, "generator_sha256": gen.sha256, "rank_threshold": rank_threshold, "delta": delta,
        "unit": unit, "saved": {s.name: {"file": s.path.name, **s.meta} for s in saved},
        "inputs": [{
            "id": f.input_id, "inversion_error": f.inversion_error, "rank": f.rank,
            "singular_values": f.singular_values, "strip": _strip_name(i),
            "directions": [{"spec": f"svd:{k}", "vector": [float(x) for x in v],
                            **({"per_latent_unit": f.per_unit[k]} if f.per_unit is not None else {})}
                           for k, v in enumerate(f.vectors)],
        } for i, f in enumerate(found)],
    }
    path = out / "directions.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _strip_name(i: int) -> str:
    return f"input-{i:03d}.png"
