"""The zoo's regulated generators: manifest integrity, analysability, registration, verification, strips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import fx, nn

from gcert import zoo
from gcert.cli import main
from gcert.generators import reconstruction_error
from gcert.testing import make_registry
from gcert_plugins.interval import output_bounds

ALLOWED_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.LeakyReLU, nn.Sequential)
GENERATORS = zoo.generator_names()


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_manifest_entries_are_complete_and_consistent():
    names = [e["name"] for e in zoo.entries()]
    assert len(names) == len(set(names))
    assert GENERATORS, "the zoo ships regulated generators"
    mutation_names: list[str] = []
    for name in GENERATORS:
        e = zoo.entry(name)
        for key in ("dataset", "architecture", "control_space", "mutations", "weights", "sha256", "encoder",
                    "encoder_sha256", "samples", "samples_sha256", "recipe", "metrics", "network", "image_shape"):
            assert key in e, f"{name} lacks {key}"
        space = e["control_space"]
        g = zoo.load_generator(name)
        assert g.latent_dim == space["dim"] == len(space["factors"]) + space["content"]["dim"]
        assert zoo.has_network(e["network"])
        assert list(zoo.entry(e["network"])["input_shape"]) == e["image_shape"]
        factor_names = [f["name"] for f in space["factors"]]
        for m in e["mutations"]:
            if m.get("direction") == "svd":  # found at each input (tests/test_zoo_svd.py), no latent axis
                assert 0 < m["rank_threshold"] < 1 and m["unit"] and m["default_delta"] != 0
                mutation_names.append(m["name"])
                continue
            assert m["factor"] in factor_names and 0 <= m["latent_index"] < len(factor_names)
            per_unit = space["factors"][m["latent_index"]]["per_latent_unit"]
            # one latent unit was trained to be ``per_unit`` units; calibration rescales by a measured factor
            assert 0.5 <= m["calibration_factor"] <= 2
            assert m["latent_per_unit"] == pytest.approx(m["calibration_factor"] / per_unit, rel=1e-3)  # factor rounded
            assert m["unit"] and m["default_delta"] != 0
            mutation_names.append(m["name"])
        metrics = e["metrics"]
        assert set(metrics["mutations"]) == {m["name"] for m in e["mutations"]}
        assert 1 <= metrics["continuity"]["c"] < math.inf
    assert len(mutation_names) == len(set(mutation_names))


def test_zoo_files_are_small_and_match_their_sha256():
    total = 0
    for e in zoo.entries():
        assert zoo.verify(e["name"]) == []
        for key in ("weights", "encoder", "samples"):
            if key in e:
                size = (zoo.zoo_dir() / e[key]).stat().st_size
                assert key != "weights" or size < 2_000_000, f"{e[key]} is {size} bytes"
    for path in zoo.zoo_dir().iterdir():
        total += path.stat().st_size if path.is_file() else 0
    assert total < 10_000_000


@pytest.mark.parametrize("name", GENERATORS)
def test_shipped_generators_are_analysable(name):
    """Standard layers only, no BatchNorm left, fx-traceable, and interval bounds run through f(G(z))."""
    g = zoo.load_generator(name)
    for m in g.modules():
        assert type(m).__module__.startswith("gcert") or isinstance(m, ALLOWED_LAYERS), type(m).__name__
        assert not isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Unflatten)
    fx.symbolic_trace(g)
    e = zoo.entry(name)
    net, _ = zoo.load_network(e["network"])
    composed = nn.Sequential(g, net).eval()
    z = torch.zeros(1, g.latent_dim)
    lo, hi = z - 0.01, z + 0.01
    bounds = output_bounds(composed, lo, hi)
    samples = lo + (hi - lo) * torch.rand(64, g.latent_dim)
    with torch.no_grad():
        out = composed(samples).double()
    assert bool((out >= bounds.lo - 1e-9).all() and (out <= bounds.hi + 1e-9).all())
    with torch.no_grad():
        image = g(z)
    assert float(image.min()) >= 0 and float(image.max()) <= 1


def test_every_manifest_mutation_is_registered_through_the_hooks():
    reg = make_registry()
    for name in GENERATORS:
        assert name in reg.generators and reg.origin("generator", name) == "zoo"
        for m in zoo.entry(name)["mutations"]:
            mutation = reg.mutation(m["name"])
            assert (mutation.kind, mutation.generator, mutation.unit) == (m["kind"], name, m["unit"])
            assert reg.origin("mutation", m["name"]) == "zoo"
    assert not [p for p in reg.problems if "zoo" in p]


def test_a_factor_direction_is_its_latent_axis_scaled_to_one_unit():
    reg = make_registry()
    mutation = reg.mutation("rotate")
    g = reg.generator(mutation.generator)
    control = torch.randn(g.latent_dim)
    d = mutation.direction(g, control)
    per_degree = zoo.entry(mutation.generator)["mutations"][0]["latent_per_unit"]
    assert per_degree == pytest.approx(1 / 30, rel=0.5)  # trained as 30 degrees per latent unit
    expected = torch.zeros(g.latent_dim)
    expected[0] = per_degree
    assert torch.equal(d, expected)


def test_rotation_turns_the_way_its_sign_says():
    """+delta must look like the ground-truth warp by +delta degrees, not by -delta (computed, not stored)."""
    from gcert_zoo.datasets import warp

    reg = make_registry()
    mutation = reg.mutation("rotate")
    g = reg.generator(mutation.generator)
    spec = reg.generator_spec(mutation.generator)
    data = np.load(zoo.inputs_for_generator(mutation.generator))
    wins = 0
    for image in torch.from_numpy(data["images"][:8]):
        z, _ = spec.invert(g, image)
        with torch.no_grad():
            start, moved = g(z.unsqueeze(0)), g((z + 20 * mutation.direction(g, z)).unsqueeze(0))
        plus = warp(start, torch.tensor([[20.0, 0, 0, 0, 0]]))
        minus = warp(start, torch.tensor([[-20.0, 0, 0, 0, 0]]))
        wins += float((moved - plus).norm()) < float((moved - minus).norm())
    assert wins >= 7


def test_inversion_reports_the_error_of_the_control_it_returns():
    reg = make_registry()
    name = reg.mutation("rotate").generator
    spec, g = reg.generator_spec(name), reg.generator(name)
    image = torch.from_numpy(np.load(zoo.inputs_for_generator(name))["images"][0])
    control, error = spec.invert(g, image)
    assert control.shape == (g.latent_dim,)
    assert error == pytest.approx(reconstruction_error(g, control, image)[0], rel=1e-5)
    assert 0 < error < zoo.entry(name)["metrics"]["reconstruction_rmse"] * 2.5


def test_figures_of_the_digits_generator_reproduce_and_a_changed_figure_is_caught(monkeypatch):
    name = zoo.entry("digits-geometric")["name"]
    assert zoo.verify(name, figures=True) == []
    changed = json.loads(json.dumps(zoo.manifest()))
    e = next(x for x in changed["entries"] if x["name"] == name)
    e["metrics"]["continuity"]["c"] *= 1.5
    monkeypatch.setattr(zoo, "manifest", lambda: changed)
    problems = zoo.verify_figures(name)
    assert any("continuity.c" in p for p in problems)


def test_mutate_writes_a_strip_with_one_row_per_input(tmp_path, capsys):
    out = tmp_path / "strip.png"
    assert _run(["mutate", "-m", "rotate", "--limit", "2", "--steps", "5", "--scale", "2", "--out", str(out)]) == 0
    png = np.asarray(Image.open(out))
    h, w = 8, 8
    assert png.shape == ((2 * h + 2) * 2, (w + 6 + 5 * w + 4 * 2) * 2, 3)
    assert "inversion error" in capsys.readouterr().err


def test_mutate_refuses_what_has_no_segment(tmp_path, capsys):
    assert _run(["mutate", "-m", "linf", "--out", str(tmp_path / "x.png")]) == 2
    assert "not a segment" in capsys.readouterr().err


def test_zoo_list_json_lists_generators_and_networks(capsys):
    assert _run(["zoo", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    kinds = {e["name"]: e["kind"] for e in listed}
    assert all(kinds[n] == "generator" for n in GENERATORS) and "network" in kinds.values()


def test_default_run_certifies_rotation_through_the_digits_generator(tmp_path):
    out = tmp_path / "r.jsonl"
    assert _run(["run", "-c", "interval", "-m", "rotate", "--limit", "2", "--workers", "1", "-q",
                 "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["error"] is None and r["unit"] == "deg" and r["kind"] == "geometric"
        assert r["inversion_error"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in GENERATORS if n != "digits-geometric"])
def test_figures_of_the_other_generators_reproduce(name):
    assert zoo.verify(name, figures=True) == []


def test_local_mutations_project_their_factor_onto_the_background_null_space():
    """eyes/mouth directions are Eq. 17 projections at the input's control point, not the raw axis."""
    from gcert_zoo.mutations import REGIONS

    from gcert.generators import jacobian

    reg = make_registry()
    local = [m for n in GENERATORS for m in zoo.entry(n)["mutations"] if m.get("foreground")]
    if not local:
        pytest.skip("no local mutations in this zoo")
    for spec in local:
        mutation = reg.mutation(spec["name"])
        g = reg.generator(mutation.generator)
        image = torch.from_numpy(np.load(zoo.inputs_for_generator(mutation.generator))["images"][0])
        z, _ = reg.generator_spec(mutation.generator).invert(g, image)
        d = mutation.direction(g, z)
        raw = torch.zeros_like(d)
        raw[spec["latent_index"]] = spec["latent_per_unit"]
        assert not torch.allclose(d, raw)
        background = ~REGIONS[spec["foreground"]]()
        jb, jf = jacobian(g, z, background), jacobian(g, z, ~background)
        # the foreground change of one unit is kept (least squares), the background change never grows
        assert float((jf @ d) @ (jf @ raw)) == pytest.approx(float((jf @ d) @ (jf @ d)), rel=1e-3)
        assert float((jb @ d).norm()) <= float((jb @ raw).norm()) * 1.0001
