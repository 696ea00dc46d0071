"""Procedural data with known ground truth: shapes, faces and the geometric warps that define units."""

from __future__ import annotations

import pytest
import torch
from gcert_zoo import datasets as ds


def _shape(kind: int, w: float, h: float, params: list[float], size: int = 32) -> torch.Tensor:
    return ds.render_shapes(torch.tensor([kind]), torch.tensor([w]), torch.tensor([h]),
                            torch.tensor([params]), size=size)[0, 0]


@pytest.mark.parametrize("params", [[0, 0, 0, 0, 0], [25, 2, -3, 15, 0], [-10, -1, 1, -15, 20]])
def test_shape_area_and_centre_follow_the_parameters(params):
    img = _shape(0, 12, 6, params)
    scale = 1 + params[3] / 100
    # rotation and shear keep area; scaling multiplies it by the square of the factor
    assert float(img.sum()) == pytest.approx(12 * 6 * scale**2, rel=0.02)
    ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5 - 16, torch.arange(32.0) + 0.5 - 16, indexing="ij")
    cx, cy = float((img * xs).sum() / img.sum()), float((img * ys).sum() / img.sum())
    assert (cx, cy) == (pytest.approx(params[1], abs=0.05), pytest.approx(params[2], abs=0.05))


def test_ellipse_area_is_pi_a_b():
    assert float(_shape(1, 12, 8, [0, 0, 0, 0, 0]).sum()) == pytest.approx(3.14159 * 6 * 4, rel=0.02)


def test_positive_rotation_is_counter_clockwise_on_screen():
    # a vertical bar: turning it counter-clockwise (as seen, y pointing down) moves its top to the left
    img = _shape(0, 2, 16, [20, 0, 0, 0, 0])
    top, bottom = img[:12], img[20:]
    xs = torch.arange(32.0)
    assert float((top.sum(0) * xs).sum() / top.sum()) < float((bottom.sum(0) * xs).sum() / bottom.sum())


def test_warp_with_zero_params_is_the_identity_and_translation_moves_whole_pixels():
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(ds.warp(x, torch.zeros(3, 5)), x, atol=1e-6)
    moved = ds.warp(x, torch.tensor([[0.0, 1, 0, 0, 0]]).repeat(3, 1))
    assert torch.allclose(moved[..., 1:], x[..., :-1], atol=1e-5)


def test_warp_matches_the_shape_renderer():
    """The bilinear warp of a canonical shape and the exact render of the mutated one agree."""
    params = torch.tensor([[15.0, 1.5, -1.0, 10.0, 10.0]])
    canonical = ds.render_shapes(torch.tensor([1]), torch.tensor([12.0]), torch.tensor([7.0]), torch.zeros(1, 5))
    exact = ds.render_shapes(torch.tensor([1]), torch.tensor([12.0]), torch.tensor([7.0]), params)
    warped = ds.warp(canonical, params)
    assert float((warped - exact).abs().mean()) < 0.02


@pytest.mark.parametrize("attribute", ["eyes", "mouth"])
def test_local_face_attributes_change_only_their_region(attribute):
    rng = torch.Generator().manual_seed(0)
    people = ds.sample_people(8, rng)
    attrs = ds.sample_face_attributes(8, rng)
    other = dict(attrs)
    lo, hi = ds.FACE_RANGES[attribute]
    other[attribute] = lo + hi - attrs[attribute]
    change = (ds.render_faces(people, attrs) - ds.render_faces(people, other)).abs().amax(dim=1)
    region = ds.face_regions()[attribute]
    assert float(change[:, ~region].max()) == 0
    assert float(change[:, region].max()) > 0.3


def test_global_face_attributes_change_more_than_one_region():
    rng = torch.Generator().manual_seed(1)
    people = ds.sample_people(4, rng)
    attrs = ds.neutral_attributes(4)
    turned = dict(attrs, **{"face-orientation": torch.full((4,), 30.0)})
    change = (ds.render_faces(people, attrs) - ds.render_faces(people, turned)).abs().amax(dim=1)
    regions = ds.face_regions()
    outside = ~(regions["eyes"] | regions["mouth"])
    assert float(change[:, outside].max()) > 0.2 and float(change[:, regions["eyes"]].max()) > 0.3


def test_hair_palette_runs_from_black_to_blonde_through_auburn():
    rgb = ds.hair_rgb(torch.tensor([0.0, 0.5, 1.0]))
    assert float(rgb[0].sum()) < float(rgb[1].sum()) < float(rgb[2].sum())
    assert float(rgb[1, 0]) > float(rgb[1, 2])  # auburn is red, not grey


def test_factor_sources_map_factors_to_latent_units_in_range():
    rng = torch.Generator().manual_seed(0)
    for cls in (ds.ShapesSource, ds.FacesSource):
        src = cls()
        x0, x, f, _ = src.sample(16, rng)
        z = src.to_latent(f)
        assert x0.shape == x.shape == (16, src.channels, src.size, src.size)
        assert float(z.abs().max()) <= 1.0


def test_enclosing_rectangle_of_an_axis_aligned_block_is_the_block():
    from gcert_zoo.rectangles import min_enclosing_rectangle

    img = torch.zeros(16, 16)
    img[4:8, 2:12] = 1  # 10 wide, 4 high, centre (7, 6) in pixels -> (-1, -2) from the image centre
    r = min_enclosing_rectangle(img.numpy())
    assert (r.long, r.short, r.angle) == (pytest.approx(10, abs=0.6), pytest.approx(4, abs=0.6), pytest.approx(0))
    assert (r.cx, r.cy) == (pytest.approx(-1, abs=0.01), pytest.approx(-2, abs=0.01))


@pytest.mark.parametrize("params", [[20, 2, -3, 0, 0], [-25, 0, 1, 15, 0], [10, -2, 0, -10, 0]])
def test_enclosing_rectangle_recovers_the_rendered_rectangle(params):
    from gcert_zoo.rectangles import min_enclosing_rectangle, shear_percent

    r = min_enclosing_rectangle(_shape(0, 12, 6, params).numpy())
    s = 1 + params[3] / 100
    assert r.angle == pytest.approx(params[0], abs=1.5)
    assert (r.cx, r.cy) == (pytest.approx(params[1], abs=0.1), pytest.approx(params[2], abs=0.1))
    assert r.size == pytest.approx(s * (12 * 6) ** 0.5, rel=0.04)
    assert shear_percent(_shape(0, 12, 6, [0, 0, 0, 0, 20]).numpy()) == pytest.approx(20, abs=1)


def test_shear_is_read_in_the_shapes_own_frame():
    from gcert_zoo.rectangles import shear_percent

    upright = shear_percent(_shape(0, 12, 6, [0, 0, 0, 0, -20]).numpy())
    turned = shear_percent(_shape(0, 12, 6, [15, 1, 0, 0, -20]).numpy())
    assert upright == pytest.approx(-20, abs=1) and turned == pytest.approx(-20, abs=3)
    # without turning back, a 15 degree tilt of a 2:1 rectangle reads as a large shear
    assert abs(shear_percent(_shape(0, 12, 6, [15, 0, 0, 0, 0]).numpy(), upright=False)) > 30
