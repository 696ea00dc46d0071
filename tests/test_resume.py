"""Resume never answers another question from the file: a record is reused only when everything its answer
depends on is the same (issue 12). One test per field that changes an answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gcert.certificate import read_certificates
from gcert.cli import main
from gcert.errors import InputError
from gcert.runner import RunConfig, run
from gcert.testing import BUILTINS_ONLY


def classifier() -> nn.Module:
    """Two classes over 1x4x4 images: class 0 iff the mean pixel is below 0.5."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]) / 16)
        net[1].bias.copy_(torch.tensor([0.25, -0.25]))
    return net


def regressor() -> nn.Module:
    """One output, the mean pixel times 10."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with torch.no_grad():
        net[1].weight.fill_(10 / 16)
        net[1].bias.zero_()
    return net


def _data(path: Path, values: tuple[float, ...] = (0.1, 0.45), labels: tuple[int, ...] = (0, 1)) -> str:
    images = np.stack([np.full((1, 4, 4), v, dtype=np.float32) for v in values])
    np.savez(path, images=images, labels=np.array(labels))
    return str(path)


def _config(data: str, **kw: object) -> RunConfig:
    base: dict[str, object] = dict(mutations=("brightness",), certifiers=("interval",), model=classifier(),
                                   data=data, deltas=(0.1,), plugins=BUILTINS_ONLY)
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


def _refused(config: RunConfig, out: Path, what: str) -> None:
    before = out.read_bytes()
    with pytest.raises(InputError) as exc:
        run(config, out, workers=1, progress=False)
    message = str(exc.value)
    assert what in message and "--recompute-stale" in message and "\n" not in message, message
    assert out.read_bytes() == before


def test_the_same_command_reuses_every_record(tmp_path):
    data, out = _data(tmp_path / "d.npz"), tmp_path / "r.jsonl"
    first = run(_config(data), out, workers=1, progress=False)
    again = run(_config(data), out, workers=1, progress=False)
    assert (first.written, again.written, again.done_before) == (2, 0, 2)
    for cert in read_certificates(out):
        ident = cert.identity
        assert ident is not None and len(ident["hash"]) == 16
        assert ident["command"] == "run" and ident["options"] == cert.options and ident["labels"] == "auto"
        assert ident["options"]["splits"] == 32  # defaults included
        assert ident["region"] == {"mutation": "brightness", "delta": 0.1, "generator": "pixel"}


def test_other_certifier_options_are_refused_then_recomputed_on_request(tmp_path):
    data, out = _data(tmp_path / "d.npz"), tmp_path / "r.jsonl"
    run(_config(data), out, workers=1, progress=False)
    other = _config(data, options={"interval": {"splits": "1"}})
    _refused(other, out, "other certifier options: {'splits': 32} (now {'splits': 1})")
    summary = run(other, out, workers=1, progress=False, recompute_stale=True)
    assert (summary.written, summary.stale) == (2, 2)
    certs = read_certificates(out)
    assert len(certs) == 2 and all(c.options["splits"] == 1 and c.identity["options"]["splits"] == 1 for c in certs)


def test_another_tau_is_refused(tmp_path):
    data, out = _data(tmp_path / "d.npz"), tmp_path / "r.jsonl"
    run(_config(data, model=regressor(), tau=2.0), out, workers=1, progress=False)
    _refused(_config(data, model=regressor(), tau=0.5), out, "another --tau: 2.0 (now 0.5)")


def test_another_labels_mode_is_refused(tmp_path):
    # input 1 (mean 0.45) is labelled 1 but predicted 0: the two modes certify different classes
    data, out = _data(tmp_path / "d.npz"), tmp_path / "r.jsonl"
    run(_config(data), out, workers=1, progress=False)
    _refused(_config(data, labels="predicted"), out, "another --labels mode: auto (now predicted)")


def test_other_labels_under_the_same_file_name_are_refused(tmp_path):
    path, out = tmp_path / "d.npz", tmp_path / "r.jsonl"
    run(_config(_data(path)), out, workers=1, progress=False)
    _refused(_config(_data(path, labels=(1, 1))), out, "another label: 0 (now 1)")


def test_other_images_under_the_same_file_name_and_ids_are_refused(tmp_path):
    path, out = tmp_path / "d.npz", tmp_path / "r.jsonl"
    run(_config(_data(path)), out, workers=1, progress=False)
    _refused(_config(_data(path, values=(0.2, 0.45))), out, "other input content under the same input id")


def test_tolerance_does_not_take_run_records_as_done(tmp_path):
    data, out = _data(tmp_path / "d.npz"), tmp_path / "r.jsonl"
    run(_config(data), out, workers=1, progress=False)
    _refused(_config(data, tolerance_steps=4), out, "`gcert run` (this is `gcert tolerance`)")
    run(_config(data, tolerance_steps=4), tmp_path / "t.jsonl", workers=1, progress=False)
    _refused(_config(data, tolerance_steps=8), tmp_path / "t.jsonl", "another --steps: 4 (now 8)")


def test_tolerance_on_a_run_file_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    args = ["-c", "interval", "-m", "linf", "--limit", "1", "-q", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main(["run", *args])
        raise SystemExit(0)
    assert exc.value.code == 0
    capsys.readouterr()
    before = out.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["tolerance", *args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "`gcert run`" in err, err
    assert out.read_bytes() == before


def _onnx(tmp: Path) -> str:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1]]))
        net[1].bias.zero_()
    path = tmp / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 2, 2),), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    return str(path)


def _property(path: Path, lo: float, hi: float) -> str:
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(4)) + "(declare-const Y_0 Real)\n" \
        "(declare-const Y_1 Real)\n" + "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n"
                                               for i in range(4)) + "(assert (>= Y_1 Y_0))\n"
    path.write_text(text)
    return str(path)


def test_a_vnnlib_property_with_other_content_under_the_same_name_is_refused(tmp_path):
    model, prop, out = _onnx(tmp_path), tmp_path / "p.vnnlib", tmp_path / "r.jsonl"
    config = RunConfig(mutations=(), certifiers=("interval",), model=model, vnnlib=(_property(prop, 0.1, 0.2),),
                       plugins=BUILTINS_ONLY)
    run(config, out, workers=1, progress=False)
    (cert,) = read_certificates(out)
    assert cert.verdict == "certified" and cert.identity["region"]["property_sha256"]
    assert run(config, out, workers=1, progress=False).written == 0
    _property(prop, -0.5, 0.2)  # a wider box under the same file name: not the same question
    _refused(config, out, "other input content under the same input id")


def test_records_without_an_identity_are_not_reused(tmp_path):
    """Files written before records carried their identity: nothing says what those answers were about."""
    data, out = _data(tmp_path / "d.npz"), tmp_path / "r.jsonl"
    run(_config(data), out, workers=1, progress=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "identity"}) + "\n" for r in lines))
    _refused(_config(data), out, "a gcert that did not record what a result depends on")


def test_non_finite_values_in_the_file_never_break_the_summary(tmp_path, capsys):
    """Older runs wrote records with delta nan and infinite bounds (as strings); the summary still reads them."""
    out = tmp_path / "r.jsonl"
    args = ["run", "-c", "interval", "-m", "linf", "--limit", "1", "-q", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    record = json.loads(out.read_text())
    record.update(input="old", delta="nan", max_delta="inf", margin_lower="-inf", fraction=["nan", 1.0],
                  identity=None)
    with out.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert exc.value.code == 0, err
    assert "linf delta=nan interval" in err and "Traceback" not in err
