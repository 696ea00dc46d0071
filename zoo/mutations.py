"""What a manifest mutation means in the control space: the direction of one unit of strength at a
control point, for factor mutations (a latent axis) and local ones (that axis projected by Eq. 17).
"""

from __future__ import annotations

from typing import Any

import torch
from gcert_zoo.datasets import face_regions
from torch import nn

from gcert.generators import project_local

REGIONS = {"eyes": lambda: face_regions()["eyes"], "mouth": lambda: face_regions()["mouth"]}
"""Foreground regions of local mutations, by the name a manifest mutation gives in ``foreground``."""


def mutation_direction(generator: nn.Module, control: torch.Tensor, mutation: dict[str, Any]) -> torch.Tensor:
    """The control change per one unit of a manifest mutation at ``control`` (no batch dimension).

    A factor mutation moves along its own latent coordinate, ``latent_per_unit`` per unit; a local
    one projects that move onto the background's null directions at ``control`` (Eq. 17), rescaled
    to keep its foreground change, so the unit keeps its meaning.
    """
    direction = torch.zeros_like(control)
    direction.reshape(-1)[mutation["latent_index"]] = mutation["latent_per_unit"]
    region = mutation.get("foreground")
    if region is None:
        return direction
    return project_local(generator, control, direction, REGIONS[region](), mutation["rank_threshold"])
