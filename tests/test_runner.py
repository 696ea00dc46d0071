"""The runner: streaming, resume, interruption, witnesses, worker pool, model/data loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gcert
from gcert.certificate import read_certificates
from gcert.data import load_inputs
from gcert.errors import InputError, ModelLoadError
from gcert.models import load_model
from gcert.runner import Context, RunConfig, run
from gcert.spec import Spec
from gcert.testing import BUILTINS_ONLY


def tiny_classifier() -> nn.Module:
    """A fixed 2-class linear network over 1x4x4 images: class 0 iff the mean pixel is below 0.5."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]) / 16)
        net[1].bias.copy_(torch.tensor([0.25, -0.25]))
    return net


@pytest.fixture
def npz_data(tmp_path):
    images = np.stack([np.full((1, 4, 4), v, dtype=np.float32) for v in (0.1, 0.3, 0.45, 0.9)])
    path = tmp_path / "data.npz"
    np.savez(path, images=images, labels=np.array([0, 0, 0, 1]))
    return path


def _config(data, **kw) -> RunConfig:
    base = dict(mutations=("brightness",), certifiers=("interval", "sampling"), model=tiny_classifier(),
                data=str(data), deltas=(0.1,), plugins=BUILTINS_ONLY)
    base.update(kw)
    return RunConfig(**base)


def test_run_streams_records_and_a_rerun_does_no_new_work(npz_data, tmp_path):
    out = tmp_path / "r.jsonl"
    first = run(_config(npz_data), out, workers=1, progress=False)
    assert (first.written, first.done_before, first.total) == (8, 0, 8)
    certs = read_certificates(out)
    assert len(certs) == 8
    by = {(c.input, c.certifier): c for c in certs}
    # mean 0.1 + 0.1 stays below 0.5: certified; mean 0.45 + up to 0.1 crosses it: falsified
    assert by[("data:0", "interval")].verdict == "certified"
    assert by[("data:2", "interval")].verdict == "falsified"
    assert by[("data:2", "sampling")].verdict == "falsified"
    assert by[("data:0", "sampling")].verdict == "unknown"  # a falsifier never certifies
    second = run(_config(npz_data), out, workers=1, progress=False)
    assert (second.written, second.done_before) == (0, 8)
    assert len(read_certificates(out)) == 8
    third = run(_config(npz_data, deltas=(0.1, 0.2)), out, workers=1, progress=False)
    assert (third.written, third.done_before) == (8, 8)


def test_every_falsified_record_carries_a_witness_that_a_forward_pass_confirms(npz_data, tmp_path):
    out = tmp_path / "r.jsonl"
    run(_config(npz_data, mutations=("brightness", "linf"), deltas=(0.1,)), out, workers=1, progress=False)
    net = tiny_classifier()
    falsified = [c for c in read_certificates(out) if c.verdict == "falsified"]
    assert falsified
    for c in falsified:
        image = torch.tensor(c.witness.control).reshape(1, 1, 4, 4).clamp(0, 1)  # the pixel generator
        y = net(image)
        assert torch.allclose(y.reshape(-1), torch.tensor(c.witness.outputs), atol=1e-6)
        assert float(Spec.top1(c.label, 2).margin(y)) <= 0


def test_interrupted_run_leaves_a_valid_file_and_resumes(npz_data, tmp_path):
    out = tmp_path / "r.jsonl"
    seen = []

    def stop_after_three(cert):
        seen.append(cert)
        if len(seen) == 3:
            raise KeyboardInterrupt

    summary = run(_config(npz_data), out, workers=1, progress=False, on_record=stop_after_three)
    assert summary.interrupted and summary.written == 3
    assert len(read_certificates(out)) == 3
    rest = run(_config(npz_data), out, workers=1, progress=False)
    assert (rest.done_before, rest.written) == (3, 5)
    assert len({c.key for c in read_certificates(out)}) == 8


def test_rerun_with_another_model_into_the_same_file_is_refused(npz_data, tmp_path):
    out = tmp_path / "r.jsonl"
    run(_config(npz_data), out, workers=1, progress=False)
    other = tiny_classifier()
    with torch.no_grad():
        other[1].bias.add_(0.01)
    with pytest.raises(InputError, match="another model"):
        run(_config(npz_data, model=other), out, workers=1, progress=False)


def test_process_pool_gives_the_same_records(npz_data, tmp_path):
    torch.save(tiny_classifier(), tmp_path / "unused.pt")  # the pool rebuilds the model from the config
    ts = torch.jit.script(tiny_classifier())
    ts.save(str(tmp_path / "net.ts"))
    serial, pooled = tmp_path / "s.jsonl", tmp_path / "p.jsonl"
    run(_config(npz_data, model=str(tmp_path / "net.ts")), serial, workers=1, progress=False)
    run(_config(npz_data, model=str(tmp_path / "net.ts")), pooled, workers=2, progress=False)

    def table(path):
        return {c.key: (c.verdict, c.margin_lower) for c in read_certificates(path)}

    assert table(serial) == table(pooled)


def test_python_api_certify_on_tensors():
    images = torch.stack([torch.full((1, 4, 4), v) for v in (0.1, 0.45)])
    certs = gcert.certify(tiny_classifier(), mutation="brightness", inputs=images, labels=[0, 0],
                          certifier="interval", delta=0.1, plugins=BUILTINS_ONLY)
    assert [c.verdict for c in certs] == ["certified", "falsified"]


def test_failing_certifier_becomes_an_error_record_not_a_crash(npz_data, tmp_path):
    def boom(*a, **k):
        raise RuntimeError("engine exploded")

    ctx = Context(_config(npz_data, certifiers=("interval",)))
    ctx.certifiers["interval"].certify = boom  # type: ignore[method-assign]
    out = tmp_path / "r.jsonl"
    run(ctx.config, out, workers=1, progress=False, context=ctx)
    certs = read_certificates(out)
    assert all(c.verdict == "unknown" and c.error == "RuntimeError: engine exploded" for c in certs)


def test_models_load_from_torchscript_module_attr_and_normalisation(tmp_path):
    net = tiny_classifier()
    torch.jit.script(net).save(str(tmp_path / "m.ts"))
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(load_model(str(tmp_path / "m.ts")).module(x), net(x))
    loaded = load_model("tests.test_runner:tiny_classifier")
    assert torch.allclose(loaded.module(x), net(x))
    normed = load_model(net, mean=[0.5], std=[0.25])
    assert torch.allclose(normed.module(x), net((x - 0.5) / 0.25), atol=1e-6)
    with pytest.raises(ModelLoadError, match="not a file, a module:attr object or a zoo network"):
        load_model("no/such/model.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot read .* as TorchScript"):
        load_model(str(tmp_path / "junk.pt"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "junk.onnx"))


def test_data_loads_from_csv_npz_and_image_folders(tmp_path):
    from PIL import Image

    rows = ["3," + ",".join(str(v) for v in range(0, 256, 16)), "7," + ",".join(["255"] * 16)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    d = load_inputs(tmp_path / "d.csv")
    assert d.images.shape == (2, 1, 4, 4) and d.labels == [3, 7]
    assert math.isclose(float(d.images[1].max()), 1.0)
    assert math.isclose(float(d.images[0, 0, 0, 1]), 16 / 255, rel_tol=1e-6)
    folder = tmp_path / "imgs"
    (folder / "5").mkdir(parents=True)
    Image.fromarray(np.full((4, 4, 3), 128, dtype=np.uint8)).save(folder / "5" / "a.png")
    f = load_inputs(folder)
    assert f.images.shape == (1, 3, 4, 4) and f.labels == [5] and f.ids == ["5/a.png"]
    np.savez(tmp_path / "bad.npz", images=np.full((2, 4, 4), 7.0))
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        load_inputs(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="not a square image; pass --input-shape"):
        (tmp_path / "odd.csv").write_text("1,0,0,0\n")
        load_inputs(tmp_path / "odd.csv")


def test_image_shape_mismatch_is_one_clear_line(npz_data, tmp_path):
    images = np.zeros((2, 1, 5, 5), dtype=np.float32)
    np.savez(tmp_path / "five.npz", images=images)
    with pytest.raises(InputError, match=r"shape \(1, 5, 5\) but the model expects \(1, 4, 4\)"):
        net = tiny_classifier()
        net.input_shape = (1, 4, 4)
        Context(_config(tmp_path / "five.npz", model=net))
