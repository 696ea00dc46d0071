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
