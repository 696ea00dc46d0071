"""What a manifest mutation means in the control space: the direction of one unit of strength at a
control point, for factor mutations (a latent axis), local ones (that axis projected by Eq. 17) and
svd ones (a Jacobian-SVD subspace direction calibrated by measurement, GCert section 5.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gcert_zoo.datasets import face_regions
from torch import nn

from gcert.errors import GcertError
from gcert.generators import jacobian, project_local, svd_split

REGIONS = {"eyes": lambda: face_regions()["eyes"], "mouth": lambda: face_regions()["mouth"]}
"""Foreground regions of local mutations, by the name a manifest mutation gives in ``foreground``."""

SVD_KIND = "svd"


def mutation_direction(generator: nn.Module, control: torch.Tensor, mutation: dict[str, Any]) -> torch.Tensor:
    """The control change per one unit of a manifest mutation at ``control`` (no batch dimension).

    A factor mutation moves along its own latent coordinate, ``latent_per_unit`` per unit; a local
    one projects that move onto the background's null directions at ``control`` (Eq. 17), rescaled
    to keep its foreground change, so the unit keeps its meaning. An ``svd`` one (``direction:
    "svd"`` in the manifest) is found at ``control`` by :func:`svd_direction`.
    """
    if mutation.get("direction") == SVD_KIND:
        return svd_direction(generator, control, mutation).direction
    direction = torch.zeros_like(control)
    direction.reshape(-1)[mutation["latent_index"]] = mutation["latent_per_unit"]
    region = mutation.get("foreground")
    if region is None:
        return direction
    return project_local(generator, control, direction, REGIONS[region](), mutation["rank_threshold"])


# --- svd mutations: the paper's mechanism, named and calibrated by measurement ---------------------

PROPERTIES = ("rotate", "translate-x", "translate-y", "scale", "shear")
"""The measured properties of the object in a 1xHxW image, one per geometric mutation, in its unit:
angle of the minimum enclosing rectangle (deg, counter-clockwise), its centre x and y (px, right and
down), its size (%, relative to a base size) and the moment shear after turning upright (%)."""


def measure_properties(images: torch.Tensor, base_size: float | None = None) -> np.ndarray:
    """(N, 5) properties of the object in each (N, 1, H, W) image (NaN where no object is drawn).

    ``scale`` is ``100 * ln(size / base_size)`` (percent for small changes, additive along a path);
    ``base_size`` defaults to the first image's size.
    """
    from gcert_zoo.rectangles import min_enclosing_rectangle, shear_percent

    out = np.full((len(images), len(PROPERTIES)), np.nan)
    sizes = np.full(len(images), np.nan)
    for i, img in enumerate(images.detach().reshape(len(images), *images.shape[-2:]).double().numpy()):
        r = min_enclosing_rectangle(img)
        if r is None:
            continue
        out[i, :3] = r.angle, r.cx, r.cy
        sizes[i] = r.size
        out[i, 4] = shear_percent(img)
    base = sizes[0] if base_size is None else base_size
    out[:, 3] = 100 * np.log(sizes / base)
    return out


def property_change(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """``after - before`` per property; angles modulo 180 deg."""
    d = after - before
    d[..., 0] = (d[..., 0] + 90) % 180 - 90
    return d


class SvdDirection:
    """The outcome of :func:`svd_direction` at one control point: ``direction`` (one unit of strength),
    ``basis`` (the leading right-singular vectors, rows), ``gradient`` ((rank, 5) measured slopes of
    every property along each), ``measured`` (the last measured change over ``default_delta`` before
    the last rescale), ``scale`` (product of the calibration factors) and whether calibration ran."""

    def __init__(self, direction: torch.Tensor, basis: torch.Tensor, gradient: np.ndarray, rank: int,
                 measured: float, scale: float, calibrated: bool):
        self.direction, self.basis, self.gradient = direction, basis, gradient
        self.rank, self.measured, self.scale, self.calibrated = rank, measured, scale, calibrated


@torch.no_grad()
def _props(generator: nn.Module, codes: torch.Tensor, base_size: float) -> np.ndarray:
    return measure_properties(generator(codes.float()), base_size)


def svd_direction(generator: nn.Module, control: torch.Tensor, mutation: dict[str, Any]) -> SvdDirection:
    """Jacobian-SVD direction of one measured property at ``control``, one unit per unit of strength.

    1. ``J = dG/dz`` at ``control``; its right-singular vectors with singular value above
       ``rank_threshold * sigma_1`` span the leading subspace (Eq. 5-6).
    2. The property ``p`` (``mutation["factor"]``, measured on the generated image by the zoo's
       rectangle measures) is differenced along each of them: ``g_i = (p(z + h v_i) - p(z - h v_i)) / 2h``
       with ``h = probe`` (in fact the least-squares slope over steps of -2h, -h, h, 2h, since the
       measures resolve about half a pixel). ``u = sum_i g_i v_i / |g|^2`` is the subspace gradient, scaled so that to
       first order one unit of ``u`` changes ``p`` by one unit. (``method: "decoupled"`` instead takes
       the least-norm ``u`` in the subspace whose first-order change is one unit of ``p`` and zero of
       the other properties listed in ``hold``, each weighted by ``1 / hold[q]``.)
    3. Calibration by measurement: the change of ``p`` over a step of ``default_delta`` along ``u`` is
       measured and ``u`` rescaled by ``default_delta / measured`` (at most ``calibration_steps`` times,
       each factor clipped to [0.25, 4]), so a unit means one measured unit at this input.
    """
    threshold = float(mutation["rank_threshold"])
    h = float(mutation.get("probe", 0.3))
    target = PROPERTIES.index(mutation["factor"])
    z = control.detach().reshape(-1).double()
    split = svd_split(jacobian(generator, control), threshold)
    basis = split.vectors  # (r, d), orthonormal
    r = split.rank
    steps = np.array([-2 * h, -h, h, 2 * h])
    codes = torch.cat([z.unsqueeze(0)] + [z + float(t) * basis for t in steps])
    props = _props(generator, codes, base_size=1.0)
    base_size = float(np.exp(props[0, 3] / 100))
    props[:, 3] -= props[0, 3]
    moved = property_change(props[1:].reshape(len(steps), r, -1), props[0])  # (steps, r, 5)
    # least-squares slope through the origin over the four steps: d property / d coefficient, (r, 5)
    grad = np.einsum("s,srq->rq", steps, moved) / float(steps @ steps)
    if not np.isfinite(grad[:, target]).all():
        raise GcertError(f"{mutation['name']}: the generator draws no object near this control point; "
                         "its property cannot be measured")
    if mutation.get("method", "gradient") == "decoupled":
        hold = mutation.get("hold", {})
        rows, rhs = [grad[:, target]], [1.0]
        for name, tol in hold.items():
            q = PROPERTIES.index(name)
            if np.isfinite(grad[:, q]).all():
                rows.append(grad[:, q] / float(tol))
                rhs.append(0.0)
        coef = np.linalg.lstsq(np.stack(rows), np.array(rhs), rcond=None)[0]
    else:
        g = grad[:, target]
        norm2 = float(g @ g)
        if norm2 <= 1e-12:
            raise GcertError(f"{mutation['name']}: no leading singular direction changes {mutation['factor']} here")
        coef = g / norm2
    u = torch.from_numpy(coef) @ basis
    delta = float(mutation["default_delta"])
    scale, calibrated = 1.0, False
    measured = float("nan")
    for _ in range(int(mutation.get("calibration_steps", 3))):
        pair = _props(generator, torch.stack([z, z + delta * u]), base_size)
        measured = float(property_change(pair[1], pair[0])[target])
        if not np.isfinite(measured) or measured * delta <= 0:
            calibrated = False  # the step moved the property the wrong way: keep the first-order unit
            break
        factor = float(np.clip(delta / measured, 0.25, 4.0))
        u, scale, calibrated = u * factor, scale * factor, True
        if abs(factor - 1) < 0.02:
            break
    return SvdDirection(u.to(control.dtype).reshape(control.shape), basis, grad, r, measured, scale, calibrated)
