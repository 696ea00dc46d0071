"""`gcert export`: N(t) as ONNX (checked against gcert's own N by onnxruntime) and its spec as VNN-LIB (read back
exactly by gcert's reader), and an exported instance run through `gcert run --vnnlib` gives the direct verdict."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from gcert.certificate import read_certificates
from gcert.cli import main
from gcert.errors import InputError
from gcert.export import OPSET, exact, input_shape, onnx_model, vnnlib_text
from gcert.problem import Problem
from gcert.regions import LpBall, Segment
from gcert.runner import Context, RunConfig, run
from gcert.spec import Spec
from gcert.testing import BUILTINS_ONLY, random_network, random_region
from gcert.vnnlib import read_vnnlib

STANDARD_OPS = {"Gemm", "MatMul", "Add", "Mul", "Relu", "Conv", "ConvTranspose", "Reshape", "Transpose", "Flatten",
                "Constant", "MaxPool", "AveragePool", "BatchNormalization", "Sigmoid", "Tanh", "LeakyRelu",
                "Identity", "Concat", "Pad", "Atan", "Div", "Sub", "Clip", "Min", "Max", "Slice", "Squeeze",
                "Unsqueeze", "Gather", "Shape", "Cast"}
MARABOU_OPS = {"Gemm", "MatMul", "Add", "Mul", "Relu", "Conv", "Reshape", "Transpose", "Flatten", "Constant",
               "MaxPool", "BatchNormalization", "Identity", "Concat", "LeakyRelu"}


def _onnx_outputs(model: onnx.ModelProto, points: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.concatenate([session.run(None, {"t": p.reshape(shape).to(torch.float32).numpy()})[0]
                           for p in points])


def _check_against_gcert(problem: Problem, n: int = 300) -> onnx.ModelProto:
    model = onnx_model(problem)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET
    assert {node.op_type for node in model.graph.node} <= STANDARD_OPS
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert tuple(shape) == input_shape(problem.region)
    region = problem.region
    points = torch.cat([region.lower.reshape(1, -1), region.upper.reshape(1, -1),
                        region.sample(n, torch.Generator().manual_seed(1))])
    got, want = _onnx_outputs(model, points), problem.outputs(points).reshape(len(points), -1).double().numpy()
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 2e-5 * scale, np.abs(got - want).max()
    return model


@pytest.mark.parametrize("mutation", ["rotate", "shapes-rotate", "shapes-translate-x", "linf"])
def test_the_exported_network_is_gcerts_N_at_many_points(mutation):
    deltas = (0.05,) if mutation == "linf" else None
    ctx = Context(RunConfig(mutations=(mutation,), certifiers=("interval",), limit=2, deltas=deltas,
                            plugins=BUILTINS_ONLY))
    for task in ctx.tasks():
        problem, _ = ctx.problem(task)
        model = _check_against_gcert(problem)
        # what Marabou's ONNX parser reads: no ConvTranspose, no Sub, no Clip (rewritten into plain ops)
        assert {node.op_type for node in model.graph.node} <= MARABOU_OPS


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["segment", "box", "linf"])
def test_random_networks_and_regions_export_exactly(seed, kind):
    gen = torch.Generator().manual_seed(seed)
    net = random_network(seed, conv=seed % 2 == 1)
    region = random_region(kind, gen, size=3.0)  # far beyond [0, 1]: generator-free regions of any value
    problem = Problem(net, nn.Identity(), region, Spec.top1(seed % 4, 4))
    _check_against_gcert(problem, n=100)


def test_an_l2_ball_is_refused_in_one_line():
    problem = Problem(nn.Flatten(), nn.Identity(), LpBall(torch.zeros(2), 0.1, 2), Spec.top1(0, 2))
    with pytest.raises(InputError, match="L2 ball cannot be written as a VNN-LIB input box"):
        onnx_model(problem)


# --- VNN-LIB round trip ------------------------------------------------------------------------------------

AWKWARD = [0.1, -0.0, 1e-300, 5e-324, -2.5, 1.7976931348623157e308 / 4, 2.0**-30, 1 / 3, 123456789.125]


def _canonical(spec: Spec) -> set[frozenset[tuple[tuple[float, ...], float]]]:
    clauses = spec.clauses if spec.clauses is not None else tuple((r,) for r in range(spec.num_rows))
    return {frozenset((tuple(spec.C[r].tolist()), float(spec.d[r])) for r in c) for c in clauses}


def _roundtrip(tmp_path, lower, upper, spec):
    path = tmp_path / "p.vnnlib"
    path.write_text(vnnlib_text(lower, upper, spec))
    prop = read_vnnlib(path)
    assert torch.equal(prop.lower, lower.reshape(-1).double()) and torch.equal(prop.upper, upper.reshape(-1).double())
    assert torch.equal(prop.inner_lower, prop.lower) and torch.equal(prop.inner_upper, prop.upper)
    assert _canonical(prop.spec) == _canonical(spec)
    return prop


def test_exact_decimals_read_back_as_the_same_float64():
    from fractions import Fraction

    for v in AWKWARD + [-v for v in AWKWARD]:
        assert Fraction(exact(v)) == Fraction(v) and float(exact(v)) == v


def test_top1_regression_and_general_specs_round_trip_exactly(tmp_path):
    lower = torch.tensor([-3.0, 0.1, 1e-300, 0.0], dtype=torch.float64)
    upper = torch.tensor([-2.5, 0.30000000000000004, 2.0, 5e-324], dtype=torch.float64)
    _roundtrip(tmp_path, lower, upper, Spec.top1(2, 5))
    _roundtrip(tmp_path, lower, upper, Spec.regression(0.7, 0.1))
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        m, k = 1 + trial % 5, 2 + trial % 4
        C = torch.randn(m, k, generator=gen, dtype=torch.float64)
        C[C.abs() < 0.3] = 0.0
        C[0, trial % k] = 1.0 if trial % 2 else -1.0
        d = torch.tensor([AWKWARD[(trial + r) % len(AWKWARD)] * (-1) ** r for r in range(m)], dtype=torch.float64)
        rows = list(range(m))
        clauses = (tuple(rows[: (m + 1) // 2]), tuple(rows[(m + 1) // 2:])) if m > 1 else ((0,),)
        spec = Spec(C, d, clauses=tuple(c for c in clauses if c))
        prop = _roundtrip(tmp_path, lower, upper, spec)
        # the property's own formula agrees with the spec on random outputs
        for _ in range(20):
            y = torch.randn(1, k, generator=gen, dtype=torch.float64) * 3
            x = (lower + upper) / 2
            assert prop.violated(x, y[0]) == (not bool(spec.holds(y)[0]))


def test_the_reader_refuses_coefficients_no_float64_holds(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                    "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= (+ (* 0.1 Y_0) (- Y_1)) 0))\n")
    with pytest.raises(InputError, match="coefficient 1/10 is not exactly a float64"):
        read_vnnlib(path)
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                    "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= (+ (* 0.5 Y_0) (- Y_1) -2) 0))\n")
    spec = read_vnnlib(path).spec
    assert spec.C.tolist() == [[0.5, -1.0]] and spec.d.tolist() == [-2.0]  # safe: 0.5 Y_0 - Y_1 - 2 > 0


# --- the command ------------------------------------------------------------------------------------------


def test_gcert_export_writes_instances_that_gcert_run_decides_like_the_direct_run(tmp_path, capsys):
    out = tmp_path / "bench"
    main(["export", "-m", "rotate", "--delta", "10,60", "--limit", "1", "--timeout", "30", "--out", str(out)])
    rows = list(csv.reader((out / "instances.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(r[2] == "30" for r in rows)
    manifest = json.loads((out / "gcert-export.json").read_text())
    direct = tmp_path / "direct.jsonl"
    run(RunConfig(mutations=("rotate",), certifiers=("exactline",), deltas=(10.0, 60.0), limit=1,
                  plugins=BUILTINS_ONLY), direct, progress=False)
    verdicts = {(c.input, c.delta): c.verdict for c in read_certificates(direct)}
    assert set(verdicts.values()) == {"certified", "falsified"}  # both answers are exercised
    for (onnx_rel, vnnlib_rel, _), info in zip(rows, manifest["instances"], strict=True):
        res = tmp_path / f"{vnnlib_rel.replace('/', '_')}.jsonl"
        run(RunConfig(mutations=(), certifiers=("exactline",), model=str(out / onnx_rel),
                      vnnlib=(str(out / vnnlib_rel),), plugins=BUILTINS_ONLY), res, progress=False)
        (cert,) = read_certificates(res)
        task = info["task"]
        assert cert.verdict == verdicts[(task["input"], task["delta"])], (vnnlib_rel, cert.error)


def test_gcert_export_never_writes_into_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "-m", "rotate", "--limit", "1", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gcert: error: --out {tmp_path} is not empty; give a new or empty folder (gcert never "
                   "overwrites files)"]
    assert (tmp_path / "mine.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == [
        "mine.txt"]


@pytest.mark.parametrize("args, message", [
    (["--timeout", "0"], "--timeout 0 must be a finite number of seconds > 0"),
    (["--timeout", "nan"], "--timeout nan is not a finite number"),
    (["-m", "l2", "--delta", "0.1"], "L2 ball cannot be written as a VNN-LIB input box"),
])
def test_bad_export_options_are_one_line_errors_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "x"
    base = [] if "-m" in args else ["-m", "rotate"]
    with pytest.raises(SystemExit) as exit_:
        main(["export", *base, *args, "--limit", "1", "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_segment_ends_beyond_float32_are_exported_within_float32_rounding():
    start = torch.full((1, 2, 2), 1e6, dtype=torch.float64) + 0.1
    problem = Problem(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), nn.Identity(),
                      Segment(start, start * -1), Spec.top1(0, 3))
    problem.network.double()
    model = onnx_model(problem)
    points = torch.linspace(0, 1, 11, dtype=torch.float64).reshape(-1, 1)
    got, want = _onnx_outputs(model, points), problem.outputs(points).numpy()
    assert np.allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))
    assert math.isfinite(float(got.max()))
