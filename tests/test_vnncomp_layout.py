"""benchmarks/vnncomp.py on a small folder laid out like the VNN-COMP 2022-2025 repositories.

The benchmark folder has ``instances.csv`` rows ``onnx/x.onnx,vnnlib/y.vnnlib,timeout`` with some files stored
only gzipped, as vnncomp20XX_benchmarks does; the results folder has one folder per tool holding
``[<year>_]<bench>/results.csv`` with header-less rows ``benchmark,onnx,vnnlib,prepare_time,result,run_time``,
as vnncomp20XX_results does.
"""

from __future__ import annotations

import gzip
import importlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def vnncomp(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # benchmarks/ is not a package; vnncomp imports _report
    monkeypatch.setenv("GCERT_DISABLE_PLUGIN_AUTOLOAD", "1")
    return importlib.import_module("vnncomp")


def _net(path: Path, y0_bias: float, y1_bias: float) -> None:
    """y0 = relu(x0) + relu(x1) + y0_bias, y1 = relu(x0 + x1) + y1_bias: on x >= 0, y0 - y1 = y0_bias - y1_bias."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([y0_bias, y1_bias]))
    torch.onnx.export(net.eval(), (torch.zeros(1, 2),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"])


def _prop(hi: float) -> str:
    """X in [0, hi]^2; the unsafe set (VNN-LIB states it) is Y_1 >= Y_0."""
    return ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
            f"(assert (>= X_0 0.0))\n(assert (<= X_0 {hi}))\n(assert (>= X_1 0.0))\n(assert (<= X_1 {hi}))\n"
            "(assert (>= Y_1 Y_0))\n")


def _gzip(path: Path) -> None:
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()


# (onnx, vnnlib) -> what each fake tool said. net_a keeps y0 = y1 + 3 (robust), net_b y1 = y0 + 3 (not robust).
INSTANCES = [("net_a", "p1"), ("net_a", "p2"), ("net_b", "p1"), ("net_b", "p3")]
TOOL_A = {("net_a", "p1"): "unsat", ("net_a", "p2"): "unsat", ("net_b", "p1"): "sat",
          ("net_b", "p3"): "error_exit_code_1"}
TOOL_B = {("net_a", "p1"): "holds", ("net_a", "p2"): "timeout", ("net_b", "p1"): "violated",
          ("net_b", "p3"): "run_instance_timeout"}


def _results(root: Path, tool: str, folder: str, said: dict[tuple[str, str], str]) -> None:
    (root / tool / folder).mkdir(parents=True)
    lines = [f"synth,vnncomp2024_benchmarks/benchmarks/synth/onnx/{n}.onnx,"
             f"vnncomp2024_benchmarks/benchmarks/synth/vnnlib/{p}.vnnlib,1.5,{r},0.25\n" for (n, p), r in said.items()]
    (root / tool / folder / "results.csv").write_text("".join(lines))


@pytest.fixture
def synth(tmp_path) -> Path:
    bench = tmp_path / "vnncomp2024_benchmarks" / "benchmarks" / "synth"
    (bench / "onnx").mkdir(parents=True)
    (bench / "vnnlib").mkdir()
    _net(bench / "onnx" / "net_a.onnx", y0_bias=3.0, y1_bias=0.0)
    _net(bench / "onnx" / "net_b.onnx", y0_bias=0.0, y1_bias=3.0)
    for name, hi in (("p1", 1.0), ("p2", 0.5), ("p3", 0.25)):
        (bench / "vnnlib" / f"{name}.vnnlib").write_text(_prop(hi))
    _gzip(bench / "vnnlib" / "p2.vnnlib")  # instances.csv still names p2.vnnlib, as the competition's do
    _gzip(bench / "onnx" / "net_b.onnx")
    (bench / "instances.csv").write_text("".join(f"onnx/{n}.onnx,vnnlib/{p}.vnnlib,30\n" for n, p in INSTANCES))
    return bench


def _main(vnncomp, bench: Path, results: Path, tmp_path: Path, name: str) -> tuple[int, dict]:
    code = vnncomp.main(["--benchmark-dir", str(bench), "--results-dir", str(results), "--certifiers",
                         "interval,sampling", "--workers", "1", "--workdir", str(tmp_path / "work"),
                         "--out", str(tmp_path / "report"), "--name", name])
    return code, json.loads((tmp_path / "report" / f"{name}.json").read_text())


def test_tool_verdicts_map_to_robust_not_robust_unknown(vnncomp):
    assert [vnncomp.tool_verdict(r) for r in ("unsat", "HOLDS ", "sat", "violated")] == \
        ["robust", "robust", "not_robust", "not_robust"]
    for r in ("timeout", "unknown", "error", "error_exit_code_2", "run_instance_timeout", "no_result_in_file", ""):
        assert vnncomp.tool_verdict(r) == "unknown"
    assert vnncomp.majority(["robust", "not_robust", "robust"]) == "robust"
    assert vnncomp.majority(["robust", "not_robust"]) == vnncomp.majority([]) == "unknown"


def test_results_layouts_of_2021_and_later_are_read(vnncomp, tmp_path):
    wanted = {("net_a.onnx", "p1.vnnlib"), ("net_b.onnx", "p1.vnnlib")}
    flat = tmp_path / "vnncomp2021_results" / "results_csv"  # 2021: one <tool>.csv per tool
    flat.mkdir(parents=True)
    (flat / "ERAN.csv").write_text("synth,./synth/net_a.onnx,./synth/p1.vnnlib,0.1,holds,1.0\n"
                                   "other,./other/net_c.onnx,./other/p1.vnnlib,0.1,violated,1.0\n")
    assert vnncomp.tool_results(flat.parent, wanted, ["synth"]) == {"ERAN": {("net_a.onnx", "p1.vnnlib"): "robust"}}
    later = tmp_path / "vnncomp2023_results"  # the aggregate <tool>/results.csv yields to <tool>/<year>_<bench>/
    _results(later, "tool_a", "2023_synth", {("net_a", "p1"): "unsat", ("net_b", "p1"): "sat"})
    (later / "tool_a" / "results.csv").write_text(
        "synth,onnx/net_a.onnx.gz,vnnlib/p1.vnnlib.gz,0.1,violated,1.0\n")
    assert vnncomp.tool_results(later, wanted, ["synth"]) == \
        {"tool_a": {("net_a.onnx", "p1.vnnlib"): "robust", ("net_b.onnx", "p1.vnnlib"): "not_robust"}}


def test_competition_layout_is_scored_against_the_tools(vnncomp, synth, tmp_path):
    results = tmp_path / "vnncomp2024_results"
    _results(results, "tool_a", "2024_synth", TOOL_A)  # 2023-2025 layout: <tool>/<year>_<bench>/results.csv
    _results(results, "tool_b", "synth", TOOL_B)  # 2022 layout: <tool>/<bench>/results.csv
    (results / "SCORING").mkdir()  # the scoring scripts' folder is not a tool
    code, report = _main(vnncomp, synth, results, tmp_path, "synth")
    assert code == 0 and report["unsound"] == []
    assert report["tools"] == ["tool_a", "tool_b"] and report["conflicts"] == []
    assert report["columns"][-2:] == ["tool_a", "tool_b"]
    rows = {r["certifier"]: r for r in report["rows"]}
    for row in rows.values():
        assert row["benchmark"] == "synth" and row["instances"] == 4
        assert (row["consensus robust"], row["consensus not_robust"]) == (2, 1)  # net_b/p3: nobody answered
        assert (row["tool_a"], row["tool_b"]) == ("2/1", "1/1")
        assert row["certified but not_robust"] == row["falsified but robust"] == 0
    assert rows["interval"]["certified"] == 2  # both net_a instances (it may also falsify net_b's by a point)
    assert (rows["sampling"]["certified"], rows["sampling"]["falsified"]) == (0, 2)  # both net_b instances
    # gzipped files were read from a copy under the workdir; the benchmark folder is as it was
    assert sorted(p.name for p in (synth / "vnnlib").iterdir()) == ["p1.vnnlib", "p2.vnnlib.gz", "p3.vnnlib"]
    assert sorted(p.name for p in (synth / "onnx").iterdir()) == ["net_a.onnx", "net_b.onnx.gz"]
    assert (tmp_path / "work" / "unpacked" / "synth" / "vnnlib" / "p2.vnnlib").read_text() == _prop(0.5)
    assert "| synth | interval | 4 | 2 | 1 | 2 |" in (tmp_path / "report" / "synth.md").read_text()


def test_a_certified_instance_the_tools_call_violated_fails_the_run(vnncomp, synth, tmp_path):
    planted = tmp_path / "planted_results"
    _results(planted, "tool_a", "2024_synth", {**TOOL_A, ("net_a", "p1"): "violated"})
    _results(planted, "tool_b", "2024_synth", {**TOOL_B, ("net_a", "p1"): "sat"})
    code, report = _main(vnncomp, synth, planted, tmp_path, "planted")
    assert code == 1
    assert [u.split()[:2] for u in report["unsound"]] == [["synth", "net_a.onnx"]]
    assert "p1.vnnlib by interval" in report["unsound"][0]
    rows = {r["certifier"]: r for r in report["rows"]}
    assert rows["interval"]["certified but not_robust"] == 1
    assert (rows["interval"]["consensus robust"], rows["interval"]["consensus not_robust"]) == (1, 2)
