"""The default region of a mutation: GCert's segment along its direction, a pixel Lp ball, or the box of a
composite mutation (``rotate+scale``, :mod:`gcert.composite`).

Registered ``trylast`` so any plugin's ``gcert_input_region`` that returns a region wins.
"""

from __future__ import annotations

from typing import Any

import torch

import gcert
from gcert.composite import CompositeMutation, mutation_box
from gcert.contracts import Mutation
from gcert.regions import LpBall, Region, Segment


@gcert.hookimpl(trylast=True)
def gcert_input_region(mutation: Mutation, generator: Any, control: torch.Tensor, delta: float) -> Region:
    if isinstance(mutation, CompositeMutation):
        return mutation_box(mutation, generator, control, delta)
    if mutation.norm is not None:
        return LpBall(control, abs(delta), mutation.norm, clip=getattr(generator, "value_range", None))
    assert mutation.direction is not None
    direction = mutation.direction(generator, control).to(control.dtype)
    if direction.shape != control.shape:
        raise ValueError(f"mutation {mutation.name!r} gave a direction of shape {tuple(direction.shape)} "
                         f"for a control of shape {tuple(control.shape)}")
    # The far end in float64: the segment of strength delta is exactly control + delta * direction (up to one
    # float64 rounding), so a strength found certified (max_delta) is the same segment when certified again.
    return Segment(control, control.to(torch.float64) + float(delta) * direction.to(torch.float64))
