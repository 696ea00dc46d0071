"""Stylized driving mutations: the scene and weather physics, the zoo's steering regressors and stylized
generators, the ``weather`` plugin, and ``gcert run --mutation foggy`` with nothing else given.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from gcert_zoo import driving, weather

from gcert import zoo
from gcert.regions import Segment
from gcert.runner import Context, RunConfig
from gcert.testing import make_registry

STYLED = {"foggy": "driving-foggy", "rainy": "driving-rainy"}


def _scenes(n: int = 4, seed: int = 5) -> driving.Scenes:
    return driving.sample_scenes(n, torch.Generator().manual_seed(seed))


# --- physics ------------------------------------------------------------------------------------------

def test_fog_is_the_scattering_formula():
    rng = torch.Generator().manual_seed(0)
    j, depth, air = torch.rand(3, 3, 4, 5, generator=rng), torch.rand(3, 1, 4, 5, generator=rng), torch.rand(3, 3)
    strength = torch.tensor([0.0, 0.3, 1.0])
    out = driving.fog(j, depth, air, strength)
    beta = driving.FOG_BETA * strength.reshape(3, 1, 1, 1)
    t = torch.exp(-beta * depth)
    assert torch.allclose(out, j * t + air.reshape(3, 3, 1, 1) * (1 - t), atol=1e-6)
    assert torch.equal(out[0], j[0])  # beta = 0: no fog


def test_fog_thickens_monotonically_towards_the_airlight():
    s = _scenes()
    gaps = [(driving.fog(s.images, s.depth, s.airlight, d) - s.airlight.reshape(-1, 3, 1, 1)).abs()
            for d in np.linspace(0, 1, 6)]
    for near, far in zip(gaps[:-1], gaps[1:], strict=True):
        assert bool((far <= near + 1e-6).all()) and float(far.mean()) < float(near.mean())
    # far things fade first: at medium fog the sky (depth 1) is closer to the airlight than the road under the car
    mid = gaps[3]
    assert float(mid[..., :4, :].mean()) < float(mid[..., -4:, :].mean())


def test_rain_dims_adds_streaks_and_is_the_identity_at_zero():
    s = _scenes()
    assert torch.allclose(driving.rain(s.images, s.depth, s.airlight, s.streaks, 0.0), s.images)
    changes = [float((driving.rain(s.images, s.depth, s.airlight, s.streaks, d) - s.images).abs().mean())
               for d in (0.2, 0.5, 0.8)]
    assert changes == sorted(changes) and changes[0] > 0
    heavy = driving.rain(s.images, s.depth, s.airlight, s.streaks, 1.0)
    streak, dry = s.streaks > 0.4, s.streaks == 0
    lift = (heavy - s.images).mean(1, keepdim=True)
    assert float(lift[streak].mean()) > float(lift[dry].mean()) + 0.1  # streaks brighten, the rest dims
    assert float(heavy.min()) >= 0 and float(heavy.max()) <= 1


def test_steering_ground_truth_follows_the_road():
    zero = torch.zeros(1)
    assert float(driving.steering_angle(zero, zero, zero)) == 0.0
    bends = torch.linspace(-0.03, 0.03, 7)
    right = driving.steering_angle(torch.zeros(7), torch.zeros(7), bends)
    assert bool((right[1:] > right[:-1]).all())  # a road bending further right asks for more right steering
    assert torch.allclose(right, -right.flip(0), atol=1e-5)
    s = _scenes(64)
    assert 2.0 < float(s.steering.abs().mean()) < 12.0 and float(s.steering.abs().max()) < 30.0
    assert s.images.shape[1:] == driving.IMAGE_SHAPE and float(s.images.min()) >= 0 and float(s.images.max()) <= 1


def test_the_images_carry_the_steering_angle():
    """The zoo regressor recovers the road-geometry angle from pixels alone on fresh scenes."""
    net, _ = zoo.load_network("driving-steer")
    s = _scenes(64, seed=99)
    with torch.no_grad():
        error = (net(s.images).reshape(-1) - s.steering).abs().mean()
    assert float(error) < 2.0 < float(s.steering.abs().mean())


# --- zoo ------------------------------------------------------------------------------------------------

def _driving_entries() -> list[dict]:
    return [e for e in zoo.entries() if e.get("dataset_source") == "driving"]


def test_manifest_entries_of_the_driving_zoo():
    entries = {e["name"]: e for e in _driving_entries()}
    assert {"driving-steer", "driving-steer-weather", *STYLED.values()} <= set(entries)
    for e in entries.values():
        for key, sha in (("weights", "sha256"), ("samples", "samples_sha256")):
            assert hashlib.sha256((zoo.zoo_dir() / e[key]).read_bytes()).hexdigest() == e[sha], e["name"]
        assert (zoo.zoo_dir() / e["weights"]).stat().st_size < 2_000_000
    for name in ("driving-steer", "driving-steer-weather"):
        e = entries[name]
        assert e["kind"] == "network" and e["input_shape"] == list(driving.IMAGE_SHAPE) and e["default_tau"] > 0
    for style, name in STYLED.items():
        e = entries[name]
        assert e["kind"] == "stylized-generator" and e["style"] == style and e["network"] == "driving-steer"
        assert e["control_space"]["dim"] == math.prod(driving.IMAGE_SHAPE) + 1
        assert [m["name"] for m in e["mutations"]] == [style]
        assert e["metrics"]["continuity"]["collapse_share"] < 0.05
    samples = np.load(zoo.samples_path("driving-steer"))
    assert samples["images"].shape[1:] == driving.IMAGE_SHAPE and len(samples["steering"]) == len(samples["ids"])


@pytest.mark.parametrize("style", sorted(STYLED))
def test_generator_gives_back_its_input_at_strength_zero(style):
    reg = make_registry()
    spec = reg.generator_spec(STYLED[style])
    g = reg.generator(STYLED[style])
    images = torch.from_numpy(np.load(zoo.samples_path("driving-steer"))["images"][:4])
    for image in images:
        control, error = spec.invert(g, image)
        assert control.shape == (weather.CONTROL_DIM,) and float(control[-1]) == 0.0
        assert error < 1e-5  # exact by construction, up to float32 rounding
    with torch.no_grad():
        heavy = g(weather.control(images, 0.8))
    assert float((heavy - images).abs().mean()) > 0.02  # and strength does something


def test_plugin_registers_foggy_and_rainy_as_stylized_segments():
    reg = make_registry()
    for style, generator in STYLED.items():
        m = reg.mutation(style)
        assert (m.kind, m.generator, m.unit, m.default_delta) == ("stylized", generator, "strength", 0.5)
        assert reg.origin("mutation", style) == "weather" and reg.origin("generator", generator) == "weather"
        spec = reg.generator_spec(generator)
        assert spec.piecewise_linear and spec.image_shape == driving.IMAGE_SHAPE
        control = torch.rand(weather.CONTROL_DIM)
        control[-1] = 0
        region = reg.pm.hook.gcert_input_region(mutation=m, generator=reg.generator(generator), control=control,
                                                delta=0.5)
        assert isinstance(region, Segment)
        moved = (region.embedding()(torch.ones(1, 1)) - control).reshape(-1)
        assert float(moved[-1]) == pytest.approx(0.5) and bool((moved[:-1] == 0).all())


def test_continuity_term_is_applied_on_delta(monkeypatch):
    seen, original = [], weather.continuity_loss

    def spy(generator, z0, zT, **kwargs):
        seen.append((z0.detach().clone(), zT.detach().clone()))
        return original(generator, z0, zT, **kwargs)

    monkeypatch.setattr(weather, "continuity_loss", spy)
    monkeypatch.setattr(driving, "scene_pool", lambda n, seed, chunk=256: _scenes(8, seed))
    recipe = weather.StyleRecipe("test", "foggy", steps=1, batch=4, scenes=8)
    gen, _, _ = weather.train_style(recipe)
    assert len(seen) == 2  # G and the reverse generator
    for z0, zT in seen:
        assert torch.equal(z0[:, :-1], zT[:, :-1])  # the same scene ...
        assert bool((z0[:, -1] != zT[:, -1]).any())  # ... at two strengths
    assert isinstance(gen.out, weather.PiecewiseLinearOutput)  # shipped with the exact output layer


# --- end to end -------------------------------------------------------------------------------------------

def _records(config: RunConfig) -> tuple[Context, list]:
    ctx = Context(config)
    return ctx, [ctx.solve(t) for t in ctx.tasks()]


def test_run_with_the_zoo_steering_model_on_two_scenes():
    ctx, certs = _records(RunConfig(mutations=("foggy",), certifiers=("exactline",), model="driving-steer",
                                    limit=2, deltas=(0.2,)))
    assert len(certs) == 2
    tau = zoo.entry("driving-steer")["default_tau"]
    for cert in certs:
        assert cert.error is None and cert.verdict in ("certified", "falsified")
        assert cert.spec["kind"] == "regression" and cert.spec["tau"] == tau
        assert cert.inversion_error < 1e-5 and cert.kind == "stylized"


def test_default_run_uses_the_zoo_steering_model_and_its_scenes():
    ctx, certs = _records(RunConfig(mutations=("foggy",), certifiers=("exactline",), limit=2, deltas=(0.2,)))
    assert ctx.model.source == "zoo:driving-steer"
    assert ctx.data.source == str(zoo.samples_path("driving-steer"))
    assert len(certs) == 2 and all(c.error is None and c.spec["kind"] == "regression" for c in certs)
