"""Several mutations at once: ``rotate+translate-x+scale`` is the box of controls ``c0 + sum_i t_i delta_i s_i``.

Each ``t_i`` ranges over [0, 1] (as a segment's ``t`` does), so the box holds every combination of strengths from
0 to ``delta_i`` of each component. The composite's own strength is a fraction of every component's default
strength (``--delta 0.5``: half of each), so one number scales the whole box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gcert.contracts import Mutation
from gcert.errors import GcertError
from gcert.regions import Embed, Region

SEPARATOR = "+"


@dataclass(frozen=True)
class CompositeMutation(Mutation):
    """Mutations of one generator applied together; ``direction`` is the box's diagonal (all at full strength)."""

    components: tuple[Mutation, ...] = ()


def compose(name: str, parts: Sequence[Mutation]) -> CompositeMutation:
    """The composite of ``parts`` (registered mutations, in order), or a one-line error naming what cannot combine."""
    names = [p.name for p in parts]
    if len(parts) < 2 or len(set(names)) != len(names):
        raise GcertError(f"mutation {name!r}: a box of mutations needs two or more different mutations joined by "
                         f"'{SEPARATOR}' (e.g. rotate+translate-x)")
    pixel = [p.name for p in parts if p.direction is None]
    if pixel:
        raise GcertError(f"mutation {name!r}: {pixel[0]} is a pixel ball, not a direction of a generator; only "
                         "generator mutations combine into a box")
    generators = sorted({p.generator for p in parts})
    if len(generators) > 1:
        raise GcertError(f"mutation {name!r}: its parts move different generators ({', '.join(generators)}); "
                         "combine mutations of one generator")
    components = tuple(parts)

    def diagonal(generator: nn.Module, control: torch.Tensor) -> torch.Tensor:
        return sum((p.default_delta * p.direction(generator, control) for p in components),  # type: ignore[misc]
                   torch.zeros_like(control))

    kinds = sorted({p.kind for p in parts})
    detail = ", ".join(f"{p.name} 0..{p.default_delta:g} {p.unit}" for p in parts)
    return CompositeMutation(name, kinds[0] if len(kinds) == 1 else "global-perceptual", generators[0],
                             "x default", 1.0, direction=diagonal, components=components,
                             description=f"every combination of {detail} (delta scales all)",
                             fingerprint="+".join(p.fingerprint for p in parts) if any(p.fingerprint for p in parts)
                             else "")


class MutationBox(Region):
    """``t in [0, 1]^k -> control + sum_i t_i * steps[i]``: k mutations of one generator at once."""

    kind = "box"

    def __init__(self, control: torch.Tensor, steps: torch.Tensor, names: Sequence[str] = (),
                 strengths: Sequence[float] = ()):
        if steps.dim() < 2 or tuple(steps.shape[1:]) != tuple(control.shape):
            raise ValueError(f"box steps of shape {tuple(steps.shape)} do not fit a control {tuple(control.shape)}")
        self.control, self.steps = control.detach(), steps.detach().to(torch.float64)
        self.names, self.strengths = tuple(names), tuple(float(s) for s in strengths)

    @property
    def lower(self) -> torch.Tensor:
        return torch.zeros(self.steps.shape[0], dtype=torch.float64)

    @property
    def upper(self) -> torch.Tensor:
        return torch.ones(self.steps.shape[0], dtype=torch.float64)

    def embedding(self) -> nn.Module:
        return Embed(self.steps.reshape(self.steps.shape[0], -1).T, self.control, tuple(self.control.shape))

    def origin(self) -> torch.Tensor:
        return self.lower

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "mutations": list(self.names), "strengths": list(self.strengths)}


def mutation_box(mutation: CompositeMutation, generator: nn.Module, control: torch.Tensor, delta: float
                 ) -> MutationBox:
    """The box of ``mutation`` at strength ``delta`` (a fraction of each component's default) around ``control``."""
    steps, strengths = [], []
    for part in mutation.components:
        assert part.direction is not None
        direction = part.direction(generator, control).to(torch.float64)
        if direction.shape != control.shape:
            raise ValueError(f"mutation {part.name!r} gave a direction of shape {tuple(direction.shape)} "
                             f"for a control of shape {tuple(control.shape)}")
        strength = float(delta) * part.default_delta
        steps.append(strength * direction)
        strengths.append(strength)
    return MutationBox(control, torch.stack(steps), [p.name for p in mutation.components], strengths)
