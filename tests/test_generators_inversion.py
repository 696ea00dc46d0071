"""Inversion x -> z reports its reconstruction error honestly; strips render the segment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gcert.generators import invert, reconstruction_error, save_grid, segment_images


def _linear_generator(latent: int = 3, pixels: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(latent, pixels), nn.Unflatten(1, (1, 4, 4))).eval().requires_grad_(False)


def test_inversion_recovers_an_image_the_generator_can_make():
    g = _linear_generator()
    z_true = torch.tensor([0.5, -1.0, 0.25])
    image = g(z_true.unsqueeze(0))[0]
    result = invert(g, image, (3,), restarts=2, steps=300, lr=0.05)
    assert result.error < 1e-3
    assert torch.allclose(result.control, z_true, atol=1e-2)


def test_inversion_error_is_the_least_squares_residual_for_an_image_outside_the_range():
    g = _linear_generator()
    torch.manual_seed(1)
    image = torch.rand(1, 4, 4)
    result = invert(g, image, (3,), restarts=3, steps=400, lr=0.05)
    w, b = g[0].weight.double(), g[0].bias.double()
    z_ls = torch.linalg.lstsq(w, image.reshape(-1).double() - b).solution
    best = float((w @ z_ls + b - image.reshape(-1).double()).pow(2).mean().sqrt())
    assert best > 0.05  # the image really is off the generator's range
    assert result.error == pytest.approx(best, rel=1e-3)
    # and the reported error is the one of the returned control
    assert result.error == pytest.approx(reconstruction_error(g, result.control, image)[0], rel=1e-6)


def test_encoder_guess_is_used_and_kept_when_no_optimisation_runs():
    g = _linear_generator()
    image = g(torch.tensor([[1.0, 2.0, 3.0]]))[0]
    exact = invert(g, image, (3,), encoder=lambda x: torch.tensor([1.0, 2.0, 3.0]), restarts=1, steps=0)
    assert exact.error < 1e-6 and exact.restart == 0
    off = invert(g, image, (3,), encoder=lambda x: torch.zeros(3), restarts=1, steps=0)
    assert off.error == pytest.approx(reconstruction_error(g, torch.zeros(3), image)[0])
    assert off.error > 0.1


def test_inversion_respects_bounds():
    g = _linear_generator()
    image = g(torch.tensor([[3.0, 0.0, 0.0]]))[0]
    lo, hi = -torch.ones(3), torch.ones(3)
    result = invert(g, image, (3,), restarts=2, steps=200, bounds=(lo, hi))
    assert bool((result.control >= lo).all() and (result.control <= hi).all())
    assert result.error > 0


def test_strip_runs_from_the_start_to_the_end_of_the_segment(tmp_path):
    g = nn.Sequential(nn.Linear(2, 12), nn.Sigmoid(), nn.Unflatten(1, (3, 2, 2))).eval()
    start, end = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    images = segment_images(g, start, end, steps=5)
    assert images.shape == (5, 3, 2, 2)
    with torch.no_grad():
        assert torch.allclose(images[0], g(start.unsqueeze(0))[0])
        assert torch.allclose(images[-1], g(end.unsqueeze(0))[0])
        assert torch.allclose(images[2], g(((start + end) / 2).unsqueeze(0))[0])
    path = tmp_path / "strip.png"
    save_grid([images, images], path, scale=3, gap=1, leading=[images[0], images[1]])
    png = np.asarray(Image.open(path))
    # two rows of 2-px tiles, one gap; a leading tile plus a 3-gap separator, 5 tiles with 4 gaps; times 3
    assert png.shape == ((2 * 2 + 1) * 3, (2 + 3 + 5 * 2 + 4) * 3, 3)
    expected = (images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(png[0:6:3, 15:21:3], expected)


def test_inversion_adam_is_torch_adam_step_for_step():
    from gcert.generators.inversion import _Adam

    torch.manual_seed(0)
    gen = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 9))
    target = torch.rand(1, 9)
    z0 = torch.randn(4)
    mine, ref = z0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
    ours, theirs = _Adam(mine, 0.05), torch.optim.Adam([ref], lr=0.05)
    for _ in range(50):
        for z in (mine, ref):
            z.grad = None
            (gen(z.unsqueeze(0)) - target).pow(2).mean().backward()
        ours.step()
        theirs.step()
        assert torch.equal(mine, ref)  # bitwise: the inversion's results do not move


def test_batched_inversion_finds_what_one_by_one_finds():
    from gcert.generators.inversion import invert, invert_many

    torch.manual_seed(1)
    gen = torch.nn.Sequential(torch.nn.Linear(3, 24), torch.nn.ReLU(), torch.nn.Linear(24, 16), torch.nn.Sigmoid())
    images = gen(torch.randn(5, 3)).detach() + 0.01 * torch.rand(5, 16)
    bounds = (-torch.ones(3), torch.ones(3))
    many = invert_many(gen, images, (3,), restarts=3, steps=60, bounds=bounds)
    for image, got in zip(images, many, strict=True):
        want = invert(gen, image, (3,), restarts=3, steps=60, bounds=bounds)
        assert abs(got.error - want.error) <= 1e-5 + 1e-3 * want.error  # the same quality (restarts may tie)
        if got.restart == want.restart:
            assert torch.allclose(got.control, want.control, atol=1e-4)
        assert bool((got.control.abs() <= 1).all())


def test_runner_inverts_a_block_of_inputs_as_one_by_one_would():
    from gcert.runner import Context, RunConfig

    ctx = Context(RunConfig(mutations=("rotate",), certifiers=("exactline",), limit=3))
    task = next(t for t in ctx.tasks() if t.index == 1)
    _, error = ctx.problem(task)
    gen_spec = ctx.registry.generator_spec(ctx.mutations["rotate"].generator)
    assert sorted(i for _, i in ctx._inverted) == [0, 1, 2]  # the block, at once
    generator = ctx.registry.generator(gen_spec.name)
    for i in range(3):
        fresh = type(gen_spec.invert)(gen_spec.invert.name, gen_spec.invert.dim, gen_spec.invert.factors)
        control, want = fresh(generator, ctx.data.images[i])  # one image, the unbatched search
        got_control, got = ctx._inverted[(gen_spec.name, i)]
        assert abs(got - want) <= 1e-5 + 1e-3 * want
        assert torch.allclose(got_control, control, atol=1e-3)
    assert error == ctx._inverted[(gen_spec.name, 1)][1]
