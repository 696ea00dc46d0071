"""Bad input is refused before any work: exit code 2, one line naming the value and the fix, and an existing
results file given as --out is byte-identical afterwards (issue 12). Cases that were already handled stay
here as regression cases."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gcert.certificate import read_certificates
from gcert.cli import main

BASE = ("run", "-c", "interval", "-m", "linf", "--limit", "2", "-q")


def _command(extra: list[str]) -> list[str]:
    """The base command with ``extra``; a case's own -m/-c replaces the base's."""
    base = list(BASE)
    for flag in ("-m", "-c"):
        if flag in extra:
            i = base.index(flag)
            del base[i : i + 2]
    return base + extra


def _main(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.fixture(scope="module")
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real results file of the base command (the zoo's digits network, two inputs)."""
    path = tmp_path_factory.mktemp("results") / "r.jsonl"
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--out", str(path)])
        raise SystemExit(0)
    assert exc.value.code in (0, None) and len(read_certificates(path)) == 2
    return path


# --- files the cases need ------------------------------------------------------------------------------

def _npz(tmp: Path, value: float, labels: object = (1, 2)) -> str:
    images = np.full((2, 1, 8, 8), 0.5, dtype=np.float32)
    images[1, 0, 3, 3] = value
    np.savez(tmp / "d.npz", images=images, labels=np.array(labels))
    return str(tmp / "d.npz")


def _csv(tmp: Path, row: str) -> str:
    good = ",".join(["3"] + ["10"] * 64)
    (tmp / "d.csv").write_text(good + "\n" + row + "\n")
    return str(tmp / "d.csv")


def _row(label: str = "3", pixel: str = "10") -> str:
    return ",".join([label, pixel] + ["10"] * 63)


def _folder(tmp: Path) -> str:
    from PIL import Image

    (tmp / "imgs" / "3").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp / "imgs" / "3" / "a.png")
    (tmp / "imgs" / "3" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a damaged PNG
    return str(tmp / "imgs")


def _module(tmp: Path, name: str, source: str) -> str:
    (tmp / f"{name}.py").write_text(source)
    return name


def _onnx(tmp: Path) -> str:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    path = tmp / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 2, 2),), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    return str(path)


def _vnnlib(tmp: Path, body: str) -> str:
    path = tmp / "p.vnnlib"
    path.write_text(body)
    return str(path)


BOX = "".join(f"(declare-const X_{i} Real)\n" for i in range(4)) + "".join(
    f"(declare-const Y_{j} Real)\n" for j in range(3)) + "".join(
    f"(assert (>= X_{i} 0.1))\n(assert (<= X_{i} 0.2))\n" for i in range(4))

FLOAT_PLUGIN = '''
from dataclasses import dataclass
import gcert
from gcert.contracts import Certifier, Outcome

@dataclass(frozen=True)
class Opts:
    rate: float = 0.5

class Floaty(Certifier):
    name = "floaty"
    guarantee = "sound"
    description = "a certifier with a float option"
    Options = Opts
    def certify(self, problem, options):
        return Outcome("unknown")

@gcert.hookimpl
def gcert_register_certifiers(register):
    register(Floaty())
'''

Case = tuple[str, Callable[[Path], list[str]], str]

CASES: list[Case] = [
    # --out that is not a gcert results file, or cannot be written
    ("out-one-line-json", lambda t: ["--out", _file(t, "package.json", b'{"name": "x", "version": "1.0"}\n')],
     "is not a gcert record"),
    ("out-one-line-json-no-newline", lambda t: ["--out", _file(t, "package.json", b'{"name": "x"}')],
     "is not a gcert record"),
    ("out-notes-txt", lambda t: ["--out", _file(t, "notes.txt", b"my notes\nsecond line\n")], "is not a gcert record"),
    ("out-binary-9-bytes", lambda t: ["--out", _file(t, "blob.bin", b"\x00\x01\x02\xff\xfe\x03\x04\x05\x06")],
     "binary"),
    ("out-json-list", lambda t: ["--out", _file(t, "l.jsonl", b"[1, 2, 3]\n")], "is not a gcert record"),
    ("out-under-a-file", lambda t: ["--out", str(Path(_file(t, "notes.txt", b"x\n")) / "r.jsonl")], "is a file"),
    ("out-is-a-folder", lambda t: ["--out", str(t)], "is a directory"),
    # non-finite numbers
    ("delta-nan", lambda t: ["--delta", "nan"], "--delta nan is not a finite number"),
    ("delta-inf", lambda t: ["--delta", "0.01,inf"], "--delta inf is not a finite number"),
    ("tau-nan", lambda t: ["--tau", "nan"], "--tau nan is not a finite number"),
    ("tau-negative", lambda t: ["--tau", "-1"], "--tau -1 must be a finite number > 0"),
    ("mean-nan", lambda t: ["--mean", "nan", "--std", "0.3"], "--mean nan is not a finite number"),
    ("std-nan", lambda t: ["--mean", "0.1", "--std", "nan"], "--std nan is not a finite number"),
    ("std-zero", lambda t: ["--mean", "0.1", "--std", "0"], "--std 0 must be a finite number > 0"),
    ("option-float-nan", lambda t: ["-c", "floaty", "-m", "linf", "--plugin", _module(t, "floaty_plugin", FLOAT_PLUGIN),
                                    "-o", "floaty.rate=nan"], "floaty.rate=nan is not a finite number"),
    ("max-memory-negative", lambda t: ["--max-memory", "-1"], "--max-memory -1 must be a finite number of GB > 0"),
    ("max-memory-nan", lambda t: ["--max-memory", "nan"], "--max-memory nan must be a finite number of GB > 0"),
    # data
    ("npz-nan-pixel", lambda t: ["--data", _npz(t, np.nan)], "NaN or infinite"),
    ("npz-inf-pixel", lambda t: ["--data", _npz(t, np.inf)], "NaN or infinite"),
    ("npz-fractional-label", lambda t: ["--data", _npz(t, 0.5, labels=(1.0, 2.5))], "label 2.5"),
    ("csv-nan-pixel", lambda t: ["--data", _csv(t, _row(pixel="nan"))], "pixel value nan"),
    ("csv-inf-pixel", lambda t: ["--data", _csv(t, _row(pixel="inf"))], "pixel value inf"),
    ("csv-pixel-above-255", lambda t: ["--data", _csv(t, _row(pixel="300"))], "pixel value 300"),
    ("csv-negative-pixel", lambda t: ["--data", _csv(t, _row(pixel="-1"))], "pixel value -1"),
    ("csv-fractional-label", lambda t: ["--data", _csv(t, _row(label="3.5"))], "label 3.5"),
    ("csv-nan-label", lambda t: ["--data", _csv(t, _row(label="nan"))], "label nan"),
    ("folder-corrupt-image", lambda t: ["--data", _folder(t)], "cannot read image"),
    # strengths outside their range
    ("linf-negative-radius", lambda t: ["--delta", "-0.1"], "--delta -0.1 for linf is outside the allowed range"),
    ("foggy-above-1", lambda t: ["-m", "foggy", "--delta", "1.5"], "--delta 1.5 for foggy is outside"),
    ("rainy-negative", lambda t: ["-m", "rainy", "--delta", "-0.2"], "--delta -0.2 for rainy is outside"),
    ("rotate-1e6-deg", lambda t: ["-m", "rotate", "--delta", "1e6"], "--allow-extrapolation"),
    ("generator-images-do-not-fit-model", lambda t: ["-m", "eyes", "--model", "digits-cnn"],
     "draws 3x32x32 images through faces-perceptual but the model's inputs are 1x8x8; use --model faces-cnn"),
    # models that fail to load
    ("module-raises-on-import", lambda t: ["--model", _module(t, "bad_import", "raise RuntimeError('no GPU')\n")
                                           + ":net"], "RuntimeError: no GPU"),
    ("module-syntax-error", lambda t: ["--model", _module(t, "bad_syntax", "def net(:\n") + ":net"], "SyntaxError"),
    ("factory-raises", lambda t: ["--model", _module(t, "bad_factory", "def net():\n    raise ValueError('boom')\n")
                                  + ":net"], "ValueError: boom"),
    # already handled before issue 12 (regression cases)
    ("unknown-mutation", lambda t: ["-m", "fog"], "unknown mutation 'fog'"),
    ("unknown-certifier", lambda t: ["-c", "crwn"], "unknown certifier 'crwn'"),
    ("missing-model-file", lambda t: ["--model", str(t / "nope.onnx")], "does not exist"),
    ("missing-data-file", lambda t: ["--data", str(t / "none.npz")], "does not exist"),
    ("truncated-onnx", lambda t: ["--model", _file(t, "junk.onnx", b"\x08\x07\x12\x04abc")], "ONNX"),
    ("bad-option-key", lambda t: ["-o", "bogus=1"], "has no option 'bogus'"),
    ("mean-without-std", lambda t: ["--mean", "0.5"], "give both --mean and --std"),
    ("delta-not-a-number", lambda t: ["--delta", "abc"], "--delta takes comma-separated numbers"),
    ("limit-zero", lambda t: ["--limit", "0"], "'--limit'"),
]


def _file(tmp: Path, name: str, content: bytes) -> str:
    (tmp / name).write_bytes(content)
    return str(tmp / name)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_results_file_alone(case, results_file, tmp_path, capsys,
                                                                         monkeypatch):
    _, build, message = case
    monkeypatch.syspath_prepend(str(tmp_path))  # for module:attr models and --plugin modules written here
    out = tmp_path / "r.jsonl"
    shutil.copy(results_file, out)
    extra = build(tmp_path)
    args = _command(["--out", str(out), *extra])
    targets = [out] + [Path(extra[i + 1]) for i, a in enumerate(extra) if a == "--out"]
    before = {p: p.read_bytes() if p.is_file() else None for p in targets}
    code, err = _main(capsys, args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("gcert: error: "), err
    assert message in lines[0], err
    for path, content in before.items():
        assert (path.read_bytes() if path.is_file() else None) == content, f"{path} changed"
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_out_in_a_folder_that_is_not_writable(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, err = _main(capsys, [*BASE, "--out", str(locked / "r.jsonl")])
    finally:
        locked.chmod(stat.S_IRWXU)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not writable" in err


def test_max_memory_from_the_environment_must_be_a_number(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GCERT_MAX_MEMORY", "lots")
    code, err = _main(capsys, [*BASE, "--out", str(tmp_path / "r.jsonl")])
    assert code == 2 and err.strip() == "gcert: error: GCERT_MAX_MEMORY='lots' is not a number; give GB, e.g. " \
        "GCERT_MAX_MEMORY=8"
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("out", ["x.txt", "notes.txt/x.png"])
def test_mutate_refuses_an_out_it_cannot_write_before_any_work(out, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me\n")
    code, err = _main(capsys, ["mutate", "-m", "rotate", "--out", str(tmp_path / out)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ".png" in err or "is a file" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me\n" and not (tmp_path / "x.txt").exists()


def test_allow_extrapolation_certifies_beyond_the_trained_range_and_says_so(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    code, err = _main(capsys, ["run", "-c", "interval", "-m", "rotate", "--delta", "90", "--limit", "1", "-q",
                               "--allow-extrapolation", "--out", str(out)])
    assert code == 0, err
    (cert,) = read_certificates(out)
    assert "outside [-60, 60]" in cert.details["extrapolation"]


VNNLIB_CASES = [
    ("empty", lambda t: _vnnlib(t, ""), "assert"),
    ("output-not-in-model", lambda t: _vnnlib(t, BOX + "(declare-const Y_42 Real)\n(assert (>= Y_42 Y_0))\n"),
     "Y_42"),
    ("nan-bound", lambda t: _vnnlib(t, BOX.replace("0.2))", "nan))", 1) + "(assert (>= Y_1 Y_0))\n"), "nan"),
    ("binary", lambda t: _file(t, "p.vnnlib", b"\x00\xff\xfe\x01binary"), "p.vnnlib"),
    ("unbalanced", lambda t: _vnnlib(t, BOX + "(assert (>= Y_1 Y_0)\n"), "p.vnnlib"),
]


@pytest.mark.parametrize("case", VNNLIB_CASES, ids=[c[0] for c in VNNLIB_CASES])
def test_bad_vnnlib_is_one_line_exit_2(case, results_file, tmp_path, capsys):
    _, build, message = case
    out = tmp_path / "r.jsonl"
    shutil.copy(results_file, out)
    before = out.read_bytes()
    code, err = _main(capsys, ["run", "-c", "interval", "--vnnlib", build(tmp_path), "--model", _onnx(tmp_path),
                               "-q", "--out", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert out.read_bytes() == before
