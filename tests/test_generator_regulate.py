"""``gcert generator regulate``: a regulated generator of the user's images, written and loaded as a local entry.

The images are drawn here (12x12 Gaussian blobs and bars); trainings are a few hundred steps.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from torch import fx, nn

from gcert.cli_regulate import generator
from gcert.errors import InputError
from gcert.generators import architectures as archs
from gcert.generators.local import file_sha256, is_local_entry, load_local_entry
from gcert.generators.regulate import PiecewiseLinearOutput
from gcert.generators.train import TrainConfig, train
from gcert.lowering import lower

SIZE = 12


def draw(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """``n`` uint8 images (n, size, size): blobs (even indices) and horizontal or vertical bars (odd)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        if i % 2 == 0:
            cy, cx = rng.uniform(3, size - 3, 2)
            r = rng.uniform(1.5, 3.0)
            out[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        else:
            w = int(rng.integers(2, 4))
            p = int(rng.integers(1, size - w - 1))
            if rng.random() < 0.5:
                out[i, :, p : p + w] = 1.0
            else:
                out[i, p : p + w, :] = 1.0
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def invoke(*args: str):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(generator, ["regulate", *args])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return draw(48)


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, images=images)
    return path


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("pngs")
    for i, a in enumerate(images):
        Image.fromarray(a, mode="L").save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def entry_dir(tmp_path_factory: pytest.TempPathFactory, png_folder: Path) -> Path:
    out = tmp_path_factory.mktemp("entry") / "blobs"
    result = invoke("--data", str(png_folder), "--out", str(out), "--steps", "300", "--name", "blobs")
    assert result.exit_code == 0, result.output
    assert "next: gcert run -c exactline --generator" in result.output
    return out


def test_entry_loads_with_verified_sha256(entry_dir: Path, png_folder: Path):
    assert is_local_entry(entry_dir) and not is_local_entry(entry_dir / "gcert-generator.json")
    entry = load_local_entry(entry_dir)
    assert entry.name == "blobs" and entry.path == entry_dir
    assert entry.control_shape == (8,) and entry.image_shape == (1, SIZE, SIZE) and entry.value_range == (0.0, 1.0)
    assert entry.piecewise_linear and entry.encoder is not None
    assert entry.sha256 == file_sha256(entry_dir / "generator.safetensors")
    m = entry.manifest
    assert m["format"] == "gcert-generator/1" and m["kind"] == "generator"
    assert m["encoder_sha256"] == file_sha256(entry_dir / "encoder.safetensors")
    assert m["recipe"]["images"] == 48 and m["recipe"]["data"] == str(png_folder) and m["recipe"]["steps"] == 300
    assert set(m["recipe"]["loss"]) == {"reconstruction", "continuity", "prior"}
    assert not entry.generator.training and not any(p.requires_grad for p in entry.generator.parameters())
    # the rebuilt module is the written one, weight for weight
    written = load_file(str(entry_dir / "generator.safetensors"))
    for k, v in entry.generator.state_dict().items():
        assert torch.equal(v, written[k])


def test_tampered_missing_or_corrupt_files_are_refused_in_one_line(entry_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad"
    shutil.copytree(entry_dir, bad)
    weights = bad / "generator.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="generator.safetensors does not match its sha256") as err:
        load_local_entry(bad)
    assert "\n" not in str(err.value) and "--force" in str(err.value)

    shutil.copy(entry_dir / "generator.safetensors", weights)
    (bad / "encoder.safetensors").unlink()
    with pytest.raises(InputError, match="encoder.safetensors is missing"):
        load_local_entry(bad)

    shutil.copy(entry_dir / "encoder.safetensors", bad / "encoder.safetensors")
    load_local_entry(bad)  # restored: loads again
    (bad / "gcert-generator.json").write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_local_entry(bad)
    manifest = json.loads((entry_dir / "gcert-generator.json").read_text())
    (bad / "gcert-generator.json").write_text(json.dumps({**manifest, "format": "gcert-generator/0"}))
    with pytest.raises(InputError, match="has format"):
        load_local_entry(bad)
    (bad / "gcert-generator.json").write_text(json.dumps({**manifest, "control_shape": [9]}))
    with pytest.raises(InputError, match="disagrees with its architecture"):
        load_local_entry(bad)
    with pytest.raises(InputError, match="not a local generator entry"):
        load_local_entry(tmp_path)


def _finite_numbers(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _finite_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _finite_numbers(v)]
    if isinstance(obj, bool) or not isinstance(obj, int | float | str):
        return []
    if isinstance(obj, str):
        assert obj not in ("inf", "-inf", "nan"), "a figure is not finite"
        return []
    return [float(obj)]


def test_figures_are_present_and_finite(entry_dir: Path):
    figures = load_local_entry(entry_dir).manifest["figures"]
    numbers = _finite_numbers(figures)
    assert numbers and all(math.isfinite(x) for x in numbers)
    cont = figures["continuity"]
    for key in ("between_images", "local"):
        c = cont[key]
        assert c["pairs"] > 0 and c["c"] >= 1.0 and 0 <= c["collapse_share"] <= 1 and c["ratio_min"] > 0
    rec = figures["reconstruction"]
    assert rec["on"] == "held-out images" and rec["images"] == 5
    assert rec["inverted"]["rms_mean"] <= rec["encoder"]["rms_mean"] + 1e-6  # refinement starts at the encoder's
    rank = figures["rank"]
    assert rank["threshold"] == 0.01 and rank["points"] == len(rank["ranks"]) == 5 and 1 <= rank["min"] <= 8


ALLOWED_MODULES = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.Flatten)


def test_output_stays_in_range_and_the_generator_is_piecewise_linear(entry_dir: Path):
    entry = load_local_entry(entry_dir)
    z = 6 * torch.randn(512, 8, generator=torch.Generator().manual_seed(3))
    out = entry.generator(z)
    assert out.shape == (512, 1, SIZE, SIZE) and out.min() >= 0 and out.max() <= 1
    # only affine layers, ReLUs and a reshape: nothing smooth, no BatchNorm left
    gm = fx.symbolic_trace(entry.generator)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            assert isinstance(gm.get_submodule(node.target), ALLOWED_MODULES), node.target
        elif node.op == "call_function":
            assert node.target is torch.relu or node.target.__name__ in ("sub", "rsub"), node.target
        elif node.op == "call_method":
            assert node.target == "reshape", node.target
    assert sum(isinstance(m, PiecewiseLinearOutput) for m in entry.generator.modules()) == 1
    assert lower(entry.generator, (8,)).piecewise_linear
    assert torch.allclose(gm(z[:4]), out[:4])


def test_reconstruction_beats_the_mean_image(entry_dir: Path, images: np.ndarray):
    entry = load_local_entry(entry_dir)
    x = torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)
    with torch.no_grad():
        recon = entry.generator(entry.encoder(x))
    rms = (recon - x).flatten(1).pow(2).mean(1).sqrt().mean()
    baseline = (x.mean(0, keepdim=True) - x).flatten(1).pow(2).mean(1).sqrt().mean()
    assert rms < 0.4 * baseline, (float(rms), float(baseline))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(out / "generator.safetensors")),
            **{f"enc.{k}": v for k, v in load_file(str(out / "encoder.safetensors")).items()}}


def test_resume_continues_exactly(npz: Path, tmp_path: Path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    whole = invoke("--data", str(npz), "--out", str(straight), "--steps", "80", "--checkpoint-every", "30")
    assert whole.exit_code == 0, whole.output
    first = invoke("--data", str(npz), "--out", str(resumed), "--steps", "40", "--checkpoint-every", "30")
    assert first.exit_code == 0, first.output
    again = invoke("--data", str(npz), "--out", str(resumed), "--steps", "80", "--checkpoint-every", "30", "--resume")
    assert again.exit_code == 0, again.output
    assert "resumed at step 40" in again.output
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    manifest = json.loads((resumed / "gcert-generator.json").read_text())
    assert manifest["recipe"]["steps"] == 80 and manifest["recipe"]["resumed_from_step"] == 40
    # other options than the checkpoint's are refused
    other = invoke("--data", str(npz), "--out", str(resumed), "--steps", "90", "--latent", "4", "--resume")
    assert other.exit_code == 2 and "latent 8 -> 4" in other.stderr


def test_an_interrupted_training_resumes_where_it_stopped(images: np.ndarray, tmp_path: Path):
    x = torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)
    config = TrainConfig(latent=4, steps=30, batch=16, checkpoint_every=1000)
    whole = train(x, tmp_path, config, progress=False)

    def stop(step: int) -> None:
        if step == 13:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    part.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(x, part, config, progress=False, on_step=stop)
    assert torch.load(part / "checkpoint.pt", weights_only=True)["step"] == 13
    rest = train(x, part, config, resume=True, progress=False)
    assert rest.resumed_from == 13 and rest.steps == 30
    for (k, v), w in zip(whole.generator.state_dict().items(), rest.generator.state_dict().values(), strict=True):
        assert torch.allclose(v, w, atol=1e-6, rtol=0), k


def test_a_second_run_into_the_same_out_is_refused(entry_dir: Path, npz: Path, tmp_path: Path):
    before = file_sha256(entry_dir / "generator.safetensors")
    result = invoke("--data", str(npz), "--out", str(entry_dir), "--steps", "5")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(entry_dir) in lines[0] and "--force" in lines[0] and "--out" in lines[0]
    assert file_sha256(entry_dir / "generator.safetensors") == before
    # --force replaces it
    out = tmp_path / "forced"
    shutil.copytree(entry_dir, out)
    forced = invoke("--data", str(npz), "--out", str(out), "--steps", "5", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "gcert-generator.json").read_text())["recipe"]["steps"] == 5


@pytest.fixture()
def bad_data(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(draw(1)[0], mode="L").save(mixed / "a.png")
    Image.fromarray(draw(1, size=16)[0], mode="L").save(mixed / "b.png")
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, images=draw(4, size=SIZE)[:, :4, :4])
    return {"missing": tmp_path / "nothing.npz", "empty": empty, "mixed": mixed, "tiny": tiny}


@pytest.mark.parametrize(("case", "extra", "message"), [
    ("missing", [], "does not exist"),
    ("empty", [], "holds no images"),
    ("mixed", [], "differ in size"),
    ("tiny", [], "not supported"),
    ("good", ["--latent", "0"], "--latent must be at least 1"),
    ("good", ["--steps", "0"], "--steps must be at least 1"),
    ("good", ["--continuity", "nan"], "--continuity must be a finite weight"),
    ("under-a-file", [], "which is a file, not a folder"),
])
def test_bad_input_is_refused_in_one_line_before_training(case: str, extra: list[str], message: str,
                                                          bad_data: dict[str, Path], npz: Path, tmp_path: Path):
    data = npz if case in ("good", "under-a-file") else bad_data[case]
    out = tmp_path / "out"
    if case == "under-a-file":
        (tmp_path / "a-file").write_text("")
        out = tmp_path / "a-file" / "out"
    result = invoke("--data", str(data), "--out", str(out), *extra)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gcert: error:") and message in lines[0], result.stderr
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 12, 12), (1, 28, 28), (3, 32, 32), (1, 10, 14), (1, 9, 9),
                                   (3, 64, 64)])
def test_architectures_fit_every_supported_shape_and_fold(shape: tuple[int, int, int]):
    arch, enc_arch = archs.default_architecture(5, shape), archs.default_encoder_architecture(5, shape)
    torch.manual_seed(0)
    gen, enc = archs.build({**arch, "batchnorm": True}), archs.build({**enc_arch, "batchnorm": True})
    gen.train()
    gen(torch.randn(8, 5))  # running statistics away from their defaults
    x = torch.rand(2, *shape)
    assert enc.eval()(x).shape == (2, 5)
    gen.eval()
    from gcert.generators.regulate import fold_batchnorm

    plain = archs.build(arch)
    plain.load_state_dict(fold_batchnorm(gen).state_dict())
    z = torch.randn(3, 5)
    assert plain(z).shape == (3, *shape)
    assert torch.allclose(plain(z), gen(z), atol=1e-5)
    fx.symbolic_trace(plain)
    with pytest.raises(ValueError, match="not supported"):
        archs.default_architecture(5, (1, 4, 4))


def test_rgb_folders_and_non_square_csv_rows_are_regulated(tmp_path: Path):
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    gray = draw(12, size=16)
    for i, a in enumerate(gray):
        Image.fromarray(np.stack([a, a[::-1], 255 - a], axis=-1), mode="RGB").save(rgb / f"{i}.png")
    out = tmp_path / "rgb-entry"
    result = invoke("--data", str(rgb), "--out", str(out), "--steps", "20", "--latent", "3")
    assert result.exit_code == 0, result.output
    entry = load_local_entry(out)
    assert entry.image_shape == (3, 16, 16) and entry.control_shape == (3,)
    assert entry.generator(torch.zeros(1, 3)).shape == (1, 3, 16, 16)

    csv = tmp_path / "rows.csv"
    rows = draw(10, size=16)[:, :8, :]  # 8x16 images
    csv.write_text("".join(f"{i % 2}," + ",".join(str(int(v)) for v in r.flatten()) + "\n" for i, r in enumerate(rows)))
    square = invoke("--data", str(csv), "--out", str(tmp_path / "csv-entry"), "--steps", "5")
    assert square.exit_code == 2 and "--input-shape" in square.stderr
    ok = invoke("--data", str(csv), "--out", str(tmp_path / "csv-entry"), "--steps", "5", "--input-shape", "1,8,16")
    assert ok.exit_code == 0, ok.output
    assert load_local_entry(tmp_path / "csv-entry").image_shape == (1, 8, 16)


def test_resume_needs_a_checkpoint_and_excludes_force(npz: Path, tmp_path: Path):
    missing = invoke("--data", str(npz), "--out", str(tmp_path / "new"), "--resume")
    assert missing.exit_code == 2 and "checkpoint.pt does not exist" in missing.stderr
    both = invoke("--data", str(npz), "--out", str(tmp_path / "new"), "--resume", "--force")
    assert both.exit_code == 2 and "contradict" in both.stderr
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    damaged = invoke("--data", str(npz), "--out", str(tmp_path / "new"), "--resume")
    assert damaged.exit_code == 2 and "cannot read" in damaged.stderr and len(damaged.stderr.splitlines()) == 1


def test_warp_moves_a_dot_as_documented():
    from gcert.generators.train import warp

    x = torch.zeros(1, 1, SIZE, SIZE)
    x[0, 0, 2:4, 5:7] = 1  # centre of mass (5.5, 2.5): above the image centre (5.5, 5.5)
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                            indexing="ij")

    def centre(a: torch.Tensor) -> tuple[float, float]:
        m = a[0, 0].sum()
        return float((a[0, 0] * xx).sum() / m), float((a[0, 0] * yy).sum() / m)

    sheared = 5.5 + 3 * math.tan(math.radians(20))  # x moves by tan(angle) x the height above the centre
    for name, v, expected in (("shift_x", 2.0, (7.5, 2.5)), ("shift_y", 2.0, (5.5, 4.5)),
                              ("rotate", 90.0, (2.5, 5.5)), ("shear", 20.0, (sheared, 2.5))):
        got = centre(warp(x, torch.tensor([[v]]), (name,)))
        assert got == pytest.approx(expected, abs=0.05), name
    assert torch.allclose(warp(x, torch.zeros(1, 2), ("rotate", "scale")), x, atol=1e-6)


def test_the_geometric_kind_learns_its_mutation_as_a_latent(npz: Path, tmp_path: Path):
    out = tmp_path / "geo"
    result = invoke("--data", str(npz), "--out", str(out), "--kind", "geometric", "--mutations", "shift_x:2",
                    "--latent", "4", "--steps", "250")
    assert result.exit_code == 0, result.output
    assert "--direction latent:0" in result.output
    entry = load_local_entry(out)
    assert entry.control_shape == (5,) and entry.manifest["regulation"] == "geometric"
    (mutation,) = entry.manifest["mutations"]
    assert mutation["name"] == "shift_x" and mutation["latent_index"] == 0 and mutation["unit"] == "pixels"
    assert mutation["latent_per_unit"] == 0.5 and entry.manifest["control_space"]["content"] == {
        "first": 1, "dim": 4, "prior": "N(0, I) (moment-matched)"}
    g = entry.manifest["figures"]["geometry"]["shift_x"]
    # moving latent 0 draws the shifted held-out image better than leaving the image as it is (0.73 measured)
    assert g["rms_mean"] < 0.9 * g["unchanged_rms_mean"], g
    # and it moves the drawn content sideways: one latent unit is 2 pixels (1.3 to 1.4 measured after 250 steps)
    x = torch.from_numpy(np.load(npz)["images"].astype(np.float32) / 255).unsqueeze(1)
    columns = torch.arange(SIZE, dtype=torch.float32).reshape(1, 1, 1, SIZE)

    def centre_x(a: torch.Tensor) -> torch.Tensor:
        return (a * columns).sum((1, 2, 3)) / a.sum((1, 2, 3))

    with torch.no_grad():
        z = entry.encoder(x)
        base = centre_x(entry.generator(z))
        for sign in (1.0, -1.0):
            moved = z.clone()
            moved[:, 0] += sign
            shift = float((centre_x(entry.generator(moved)) - base).mean())
            assert 0.8 < sign * shift < 3.0, (sign, shift)
    assert lower(entry.generator, (5,)).piecewise_linear
    again = invoke("--data", str(npz), "--out", str(out), "--kind", "geometric", "--mutations", "shift_x:3",
                   "--latent", "4", "--steps", "260", "--resume")
    assert again.exit_code == 2 and "geometry" in again.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--kind", "stylized"], "--kind 'stylized' is not one of"),
    (["--mutations", "rotate"], "--mutations is for --kind geometric"),
    (["--kind", "geometric", "--mutations", "twist"], "unknown 'twist'"),
    (["--kind", "geometric", "--mutations", "rotate:-5"], "the range of rotate must be a number > 0"),
    (["--kind", "geometric", "--mutations", "rotate,rotate"], "names rotate twice"),
])
def test_bad_geometric_options_are_refused_in_one_line(args: list[str], message: str, npz: Path, tmp_path: Path):
    result = invoke("--data", str(npz), "--out", str(tmp_path / "g"), *args)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


def test_exactline_decides_a_segment_through_the_regulated_generator(entry_dir: Path, images: np.ndarray):
    from gcert.generators import mutating_directions
    from gcert.plugins import load_registry
    from gcert.problem import Problem
    from gcert.regions import Segment
    from gcert.spec import Spec

    entry = load_local_entry(entry_dir)
    x = torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)
    y = torch.tensor([i % 2 for i in range(len(x))])  # blob 0, bar 1
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval().requires_grad_(False)
    certifier = load_registry().certifier("exactline")
    options = certifier.parse_options({})
    with torch.no_grad():
        z = entry.encoder(x[:2])
    for i in range(2):
        direction = mutating_directions(entry.generator, z[i : i + 1], k=1).vectors[0].float()
        problem = Problem(net, entry.generator, Segment(z[i], z[i] + direction), Spec.top1(int(y[i]), 2))
        certifier.prepare(problem)
        # exact end to end: the piecewise-linear generator leaves exactline nothing it cannot decide
        assert certifier.certify(problem, options).verdict in ("certified", "falsified")
