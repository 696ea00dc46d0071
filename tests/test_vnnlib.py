"""VNN-LIB properties as gcert problems, and the VNN-COMP verdicts of other tools as an oracle."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from gcert.certificate import read_certificates
from gcert.errors import InputError
from gcert.runner import RunConfig, run
from gcert.testing import BUILTINS_ONLY
from gcert.vnnlib import read_vnnlib

PROPERTY = """; a robustness property
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5))
(assert (>= X_0 0.25))
(assert (>= X_1 -1))
(assert (<= X_1 1.0))
(assert (or
    (and (>= Y_0 Y_2))
    (and (<= Y_1 -3.5))
))
"""


def test_property_parses_into_a_box_and_the_complement_of_the_unsafe_set(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text(PROPERTY)
    prop = read_vnnlib(path)
    assert prop.lower.tolist() == [0.25, -1.0] and prop.upper.tolist() == [0.5, 1.0]
    # safe: Y_2 - Y_0 > 0 and Y_1 + 3.5 > 0
    y = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, -3.5, 1.0]])
    assert prop.spec.holds(y).tolist() == [True, False, False]


@pytest.mark.parametrize("body, message", [
    ("(assert (<= X_0 1))", "needs a lower and an upper bound"),
    ("(assert (<= Y_0 nan))", "finite number"),
    ("(assert (foo Y_0 Y_1))", "unsupported formula"),
    ("(assert (<= Y_0 Y_7))", "Y_7 is used but not declared"),
])
def test_unsupported_or_incomplete_properties_are_one_line_errors(tmp_path, body, message):
    head = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(declare-const Y_2 Real)\n"
    bounds = "(assert (<= X_0 1))\n(assert (>= X_0 0))\n" if "X_0 1))" not in body else ""
    (tmp_path / "p.vnnlib").write_text(head + bounds + body + "\n(assert (>= Y_1 Y_0))\n" * ("X_" in body))
    with pytest.raises(InputError, match=message):
        read_vnnlib(tmp_path / "p.vnnlib")


@pytest.mark.conformance
@pytest.mark.parametrize("bench, count", [("mnistfc", 2), ("verivital", 2)])
def test_no_certified_instance_is_not_robust_by_consensus(conformance, tmp_path, bench, count):
    """The first instances of two VNN-COMP benchmarks through `run`: certified ones are robust by consensus,
    and every falsified one carries a witness (confirmed by the runner's plain forward pass)."""
    folder = conformance / "vnncomp2021" / bench
    with (conformance / "vnncomp2021" / "consensus.csv").open() as fh:
        votes = {(Path(r["onnx"]).name, Path(r["vnnlib"]).name): r["majority"] for r in csv.DictReader(fh)}
    with (folder / f"{bench}_instances.csv").open() as fh:
        rows = list(csv.reader(fh))
    picked = rows[:count // 2] + rows[-(count // 2):]  # both radii of the benchmark
    for onnx, prop, _ in picked:
        out = tmp_path / f"{Path(prop).stem}.jsonl"
        config = RunConfig(mutations=(), certifiers=("interval", "deeppoly", "sampling"), model=str(folder / onnx),
                           vnnlib=(str(folder / prop),), plugins=BUILTINS_ONLY)
        run(config, out, workers=1, progress=False)
        for cert in read_certificates(out):
            assert cert.error is None
            vote = votes.get((Path(onnx).name, Path(prop).name), "unknown")  # no tool answered
            if cert.verdict == "certified":
                assert vote != "not_robust"
            if cert.verdict == "falsified":
                assert cert.witness is not None and cert.witness.margin <= 0
                assert vote != "robust"
