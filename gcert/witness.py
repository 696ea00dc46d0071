"""Counterexamples: every ``falsified`` verdict carries a point that a plain forward pass confirms.

A certifier's witness ``t`` is first brought into the region (a point a few ulps outside, from rounding, is
clamped back in the precision the region is stated in), then rounded to the network's own precision with the
rounding directed into the region, and evaluated there with a plain forward pass of the composed network. The
spec is checked in float64 on those outputs, and for VNN-LIB properties also against the property's original
formula tree (:meth:`gcert.vnnlib.Property.violated`), which shares no code with the compiled spec rows. A
rejected witness leaves the real reason in the record.
"""

from __future__ import annotations

import math

import torch

from gcert.certificate import Certificate, Witness
from gcert.contracts import Outcome
from gcert.problem import Problem

Tensor = torch.Tensor
OUTSIDE_TOLERANCE = 1e-6  # a witness this far outside the region (relative to its size) is clamped back in


def apply_outcome(cert: Certificate, outcome: Outcome, problem: Problem, guarantee: str) -> None:
    """Copy an outcome into the record, confirming its witness and holding it to its guarantee."""
    cert.verdict = outcome.verdict
    cert.margin_lower, cert.margin_upper = outcome.margin_lower, outcome.margin_upper
    cert.fraction = list(outcome.fraction) if outcome.fraction is not None else None
    cert.max_delta, cert.pieces = outcome.max_delta, outcome.pieces
    cert.details.update(outcome.details)
    if outcome.guarantee is not None:  # weaker on this problem than the certifier's class guarantee
        cert.guarantee = guarantee = outcome.guarantee
    if outcome.verdict == "certified" and guarantee == "falsifier":
        cert.verdict, cert.error = "unknown", "a falsifier claimed 'certified'; ignored"
    if outcome.verdict == "falsified":
        witness, reason = check_witness(problem, outcome.witness_t)
        if witness is None:
            cert.verdict, cert.error = "unknown", f"the certifier's counterexample was rejected: {reason}"
        else:
            cert.witness = witness


def confirm_witness(problem: Problem, t: Tensor | None) -> Witness | None:
    """A :class:`Witness` if ``t`` is (within rounding) in the region and a plain forward pass violates the spec."""
    return check_witness(problem, t)[0]


def check_witness(problem: Problem, t: Tensor | None) -> tuple[Witness | None, str]:
    """``(witness, "")`` when ``t`` is a confirmed counterexample, else ``(None, why not)``."""
    if t is None:
        return None, "no point was given"
    region = problem.region
    t64 = t.detach().reshape(1, -1).to(torch.float64)
    if t64.shape[1] != region.dim or not bool(torch.isfinite(t64).all()):
        return None, f"the point has {t64.shape[1]} coordinates (or non-finite ones); the region has {region.dim}"
    lo, hi = region.lower.double().reshape(1, -1), region.upper.double().reshape(1, -1)
    outside = float(torch.maximum(lo - t64, t64 - hi).clamp(min=0).max())
    scale = float((hi - lo).abs().max()) + float(torch.maximum(lo.abs(), hi.abs()).max()) * 2.0**-23
    if outside > OUTSIDE_TOLERANCE * max(scale, 1e-300):
        return None, f"the point lies outside the region by {outside:.3g}"
    t64 = region.project(t64.clamp(lo, hi))
    prop = problem.meta.get("property")
    if prop is not None and prop.inner_lower is not None:
        # The region is the property's box rounded outward; a counterexample is taken inside its inward rounding.
        lo, hi = prop.inner_lower.reshape(1, -1), prop.inner_upper.reshape(1, -1)
        t64 = t64.clamp(lo, hi)
    point = _inward(t64, lo, hi, problem.dtype)
    if point is None:
        return None, "no point of the network's precision lies in the region near the witness"
    if not region.contains(point[0].double(), tol=OUTSIDE_TOLERANCE * max(scale, 1e-300)):
        return None, "the point, rounded to the network's precision, falls outside the region"
    with torch.no_grad():
        control = problem.composed().embed(point)
        outputs = problem.network(problem.generator(control))
    margin = float(problem.spec.margin(outputs)[0])
    if not margin <= 0:
        return None, f"the spec holds there, by a margin of {margin:.3g}"
    if prop is not None and not prop.violated(control.reshape(-1), outputs.reshape(-1)):
        return None, "the point does not satisfy the VNN-LIB property's own formula (input box and unsafe set)"
    return Witness(t=point[0].double().tolist(), control=control.reshape(-1).tolist(),
                   outputs=outputs.reshape(-1).tolist(), margin=margin), ""


def _inward(t: Tensor, lo: Tensor, hi: Tensor, dtype: torch.dtype) -> Tensor | None:
    """``t`` (float64, inside [lo, hi]) in ``dtype``, each coordinate rounded toward the inside of the box."""
    p = t.to(dtype)
    up = torch.tensor(math.inf, dtype=dtype)
    down = torch.tensor(-math.inf, dtype=dtype)
    p = torch.where(p.double() < lo, torch.nextafter(p, up), p)
    p = torch.where(p.double() > hi, torch.nextafter(p, down), p)
    if bool(((p.double() < lo) | (p.double() > hi)).any()):
        return None
    return p
