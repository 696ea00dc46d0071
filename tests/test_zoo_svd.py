"""The zoo's svd mutations (shapes-svd): Jacobian-SVD directions of GCert section 5.1, named by the
property they change and calibrated by measurement at each input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gcert import zoo
from gcert.generators import jacobian, svd_split
from gcert.testing import make_registry

NAME = "shapes-svd"
UNITS = {"svd-rotate": "deg", "svd-translate-x": "px", "svd-translate-y": "px", "svd-scale": "%", "svd-shear": "%"}

pytestmark = pytest.mark.skipif(NAME not in zoo.generator_names(), reason="shapes-svd is not in this zoo")


def _spec(name: str) -> dict:
    return next(m for m in zoo.entry(NAME)["mutations"] if m["name"] == name)


def _rectangles(n: int) -> torch.Tensor:
    """Upright rectangles near the centre, as Table 2 uses (an ellipse's enclosing rectangle has no stable angle)."""
    from gcert_zoo.datasets import render_shapes

    rng = torch.Generator().manual_seed(5)
    params = torch.zeros(n, 5)
    params[:, 1:3] = (torch.rand(n, 2, generator=rng) * 2 - 1) * 1.0
    return render_shapes(torch.zeros(n, dtype=torch.long), 10 + 4 * torch.rand(n, generator=rng),
                         5 + 2.5 * torch.rand(n, generator=rng), params)


def test_svd_mutations_are_registered_with_their_units():
    reg = make_registry()
    assert NAME in reg.generators and reg.origin("generator", NAME) == "zoo"
    entry = zoo.entry(NAME)
    assert entry["control_space"]["factors"] == [] and entry["control_space"]["content"]["first"] == 0
    for name, unit in UNITS.items():
        mutation = reg.mutation(name)
        assert (mutation.generator, mutation.unit, mutation.kind) == (NAME, unit, "geometric")
        spec = _spec(name)
        assert spec["direction"] == "svd" and 0 < spec["rank_threshold"] < 1
        assert entry["metrics"]["mutations"][name]["subspace_rank_mean"] >= 1


def test_svd_rotate_lies_in_the_leading_singular_subspace():
    reg = make_registry()
    mutation = reg.mutation("svd-rotate")
    g = reg.generator(NAME)
    z, _ = reg.generator_spec(NAME).invert(g, _rectangles(1)[0])
    d = mutation.direction(g, z).double()
    split = svd_split(jacobian(g, z), _spec("svd-rotate")["rank_threshold"])
    assert 1 <= split.rank < g.latent_dim  # a proper subspace, or the check says nothing
    inside = split.vectors.T @ (split.vectors @ d)
    assert float((d - inside).norm()) <= 1e-6 * float(d.norm())
    assert float(d.norm()) > 0


def test_one_unit_of_svd_rotate_turns_the_shape_by_about_one_degree():
    """Measured at 5 and 10 degrees (calibration measures at default_delta = 15), over 4 rectangles."""
    from gcert_zoo.rectangles import angle_difference, min_enclosing_rectangle

    reg = make_registry()
    mutation = reg.mutation("svd-rotate")
    g = reg.generator(NAME)
    spec = reg.generator_spec(NAME)
    per_degree = []
    for image in _rectangles(4):
        z, _ = spec.invert(g, image)
        d = mutation.direction(g, z)
        with torch.no_grad():
            images = g(torch.stack([z, z + 5 * d, z + 10 * d]))[:, 0].numpy()
        angles = [min_enclosing_rectangle(im).angle for im in images]
        per_degree += [angle_difference(angles[1], angles[0]) / 5, angle_difference(angles[2], angles[0]) / 10]
    per_degree = np.array(per_degree)
    assert abs(per_degree.mean() - 1) <= 0.25, per_degree
    assert (per_degree > 0.5).all() and (per_degree < 1.6).all(), per_degree  # measured: 0.88-1.48, mean 1.13
