"""crown on a network nobody on this project wrote (ERAN ConvSmall, MNIST), through the runner as a user runs it."""

from __future__ import annotations

import json

import pytest

from gcert.runner import RunConfig, run

pytestmark = [pytest.mark.conformance, pytest.mark.usefixtures("lirpa")]


def test_crown_never_certifies_what_sampling_falsifies_on_convsmall(conformance, tmp_path):
    config = RunConfig(
        mutations=("linf",), certifiers=("crown", "sampling"),
        model=str(conformance / "networks" / "convSmallRELU__Point.onnx"),
        data=str(conformance / "mnist_test_100.csv"), deltas=(0.005,), limit=10,
    )
    out = tmp_path / "r.jsonl"
    summary = run(config, out, workers=1, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.written == len(records) == 20
    assert [r for r in records if r.get("error")] == []
    verdicts = {(r["input"], r["certifier"]): r["verdict"] for r in records}
    for (input_id, certifier), verdict in verdicts.items():
        if certifier == "crown" and verdict == "certified":
            assert verdicts[(input_id, "sampling")] != "falsified", input_id
    crown = [r for r in records if r["certifier"] == "crown"]
    assert all(r["guarantee"] == "sound" and r["details"]["dtype"] == "float64" for r in crown)
    # ConvSmall at eps 0.005 is robust on nearly all of these digits (ERAN certifies them with DeepPoly).
    assert sum(r["verdict"] == "certified" for r in crown) >= 8


def test_alpha_crown_runs_where_sparse_slopes_broke_and_is_never_looser_than_crown(conformance, tmp_path):
    # Input 2 of mnist_relu_6_100 at eps 0.02 is not certified by CROWN, so alpha-CROWN optimises; with 0.3's
    # default sparse slope storage that raised a shape mismatch there (see compat.BOUND_OPTS).
    config = RunConfig(
        mutations=("linf",), certifiers=("crown", "alpha-crown"),
        model=str(conformance / "networks" / "mnist_relu_6_100.onnx"),
        data=str(conformance / "mnist_test_100.csv"), deltas=(0.02,), limit=3,
    )
    out = tmp_path / "r.jsonl"
    run(config, out, workers=1, progress=False)
    records = {(r["input"], r["certifier"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert len(records) == 6 and not any(r.get("error") for r in records.values())
    alpha, crown = records[("mnist_test_100:2", "alpha-crown")], records[("mnist_test_100:2", "crown")]
    assert "alpha_crown_error" not in alpha["details"]
    assert alpha["margin_lower"] > crown["margin_lower"] + 1.0  # CROWN -49.9, alpha-CROWN about -21.5
