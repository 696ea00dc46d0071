"""The strengths a mutation is defined for, checked before any work.

* A pixel ball's strength is its radius: it must be >= 0.
* A stylized zoo generator ``G(a, delta)`` is defined for ``delta`` in its manifest's ``strength_range``
  (fog and rain: [0, 1]).
* A zoo generator's factor mutation moves one latent coordinate that was trained over [-1, 1] latent units,
  i.e. ``centre +- per_latent_unit`` in the mutation's unit (rotation: +-30 deg). A step longer than that
  whole range (``2 * per_latent_unit``, rotation: 60 deg) leaves it from any starting point, so the
  generator's images there are extrapolation: refused unless ``--allow-extrapolation``.

* A mutation that declares ``trained_span`` (a geometric ``gcert generator regulate`` entry's: twice its trained
  range) is checked the same way.

Mutations of other plugins have no declared range and are not checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gcert.contracts import Mutation
from gcert.errors import InputError, UnknownNameError


@dataclass(frozen=True)
class StrengthRange:
    """``lo <= delta <= hi``; ``soft`` ranges are lifted by ``--allow-extrapolation``."""

    lo: float
    hi: float
    why: str
    soft: bool = False

    def contains(self, delta: float) -> bool:
        return self.lo <= delta <= self.hi

    def describe(self) -> str:
        lo = "-inf" if self.lo == -math.inf else f"{self.lo:g}"
        hi = "inf" if self.hi == math.inf else f"{self.hi:g}"
        return f"[{lo}, {hi}]"


def strength_range(mutation: Mutation) -> StrengthRange | None:
    """The range of strengths ``mutation`` is defined (or was trained) for, if it declares one."""
    if mutation.norm is not None:
        return StrengthRange(0.0, math.inf, "delta is the radius of a pixel ball")
    if mutation.transform is not None:
        return StrengthRange(0.0, math.inf, "delta scales the transform's attack range about its identity")
    from gcert.composite import CompositeMutation

    if isinstance(mutation, CompositeMutation):  # delta scales every part's default: the tightest part decides
        ranges = [(p, strength_range(p)) for p in mutation.components]
        hi = min([r.hi / p.default_delta for p, r in ranges if r is not None and p.default_delta > 0],
                 default=math.inf)
        return StrengthRange(0.0, hi, "delta is the fraction of every part's default strength, from 0, and no part "
                             "may leave its own range", soft=any(r is not None and r.soft for _, r in ranges))
    if mutation.trained_span is not None:
        span = float(mutation.trained_span)
        return StrengthRange(-span, span, f"{mutation.generator} was trained on {mutation.name} within "
                             f"+-{span / 2:g} {mutation.unit}, so a change of more than {span:g} {mutation.unit} "
                             "leaves that range from any input", soft=True)
    from gcert import zoo

    try:
        entry = zoo.entry(mutation.generator)
    except UnknownNameError:  # not a zoo generator: nothing declared
        return None
    space = entry.get("control_space", {})
    if entry.get("kind") == "stylized-generator" and "strength_range" in space:
        lo, hi = (float(v) for v in space["strength_range"])
        return StrengthRange(lo, hi, f"{entry['name']} is defined for {entry.get('style', 'style')} strengths "
                             f"{lo:g}..{hi:g} only")
    spec = next((m for m in entry.get("mutations", ()) if m.get("name") == mutation.name), None)
    factor = next((f for f in space.get("factors", ()) if spec and f.get("name") == spec.get("factor")), None)
    if factor is None:
        return None
    half = float(factor["per_latent_unit"])
    centre = float(factor.get("centre", 0.0))
    unit = factor.get("unit", mutation.unit)
    return StrengthRange(
        -2 * half, 2 * half,
        f"{entry['name']} was trained on {factor['name']} {centre - half:g}..{centre + half:g} {unit}, so a change "
        f"of more than {2 * half:g} {unit} leaves that range from any input",
        soft=True,
    )


def check_strengths(mutation: Mutation, deltas: tuple[float, ...], allow_extrapolation: bool = False) -> None:
    """Refuse non-finite strengths and strengths outside the mutation's range, in one line."""
    for delta in deltas:
        if not math.isfinite(delta):
            raise InputError(f"--delta {delta} for {mutation.name} is not a finite number; give a strength in "
                             f"{mutation.unit} (e.g. {mutation.default_delta:g})")
    rng = strength_range(mutation)
    if rng is None:
        return
    for delta in deltas:
        if rng.contains(delta) or (rng.soft and allow_extrapolation):
            continue
        fix = "; give --allow-extrapolation to certify it anyway" if rng.soft else ""
        raise InputError(f"--delta {delta:g} for {mutation.name} is outside the allowed range {rng.describe()} "
                         f"({mutation.unit}): {rng.why}{fix}")


def extrapolation_note(mutation: Mutation, delta: float) -> str | None:
    """What a record says when its strength lies outside the trained range (given --allow-extrapolation)."""
    rng = strength_range(mutation)
    if rng is None or rng.contains(delta):
        return None
    return f"delta {delta:g} {mutation.unit} is outside {rng.describe()}: {rng.why}"
