"""The ``vnncomp`` certifier runs an external tool (here tests/vnncomp_tool.py, a real decision procedure) on the
exported instance and reads its VNN-COMP result file; an exported zoo instance decided by it, by `gcert run
--vnnlib` and by the direct run agree."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

from gcert.certificate import read_certificates
from gcert.cli import main
from gcert.runner import RunConfig, run
from gcert.testing import BUILTINS_ONLY

TOOL = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).with_name('vnncomp_tool.py')))}"
COMMAND = TOOL + " {onnx} {vnnlib} {timeout} {result}"


def _run(tmp_path, name, command, deltas=(10.0, 60.0), limit=2, timeout=None, tool_timeout=60.0):
    out = tmp_path / f"{name}.jsonl"
    options = {"vnncomp": {"command": command, "timeout": tool_timeout}}
    run(RunConfig(mutations=("rotate",), certifiers=("vnncomp", "exactline"), deltas=deltas, limit=limit,
                  options=options, plugins=BUILTINS_ONLY, timeout=timeout), out, workers=1, progress=False)
    return read_certificates(out)


def test_the_external_tool_decides_like_the_direct_run_with_rechecked_witnesses(tmp_path):
    certs = _run(tmp_path, "ok", COMMAND, limit=1)
    by = {(c.input, c.delta, c.certifier): c for c in certs}
    verdicts = set()
    for (input_id, delta, name), c in by.items():
        if name != "vnncomp":
            continue
        direct = by[(input_id, delta, "exactline")]
        assert c.error is None and c.verdict == direct.verdict, (c.details, c.error)
        verdicts.add(c.verdict)
        if c.verdict == "falsified":  # the tool's point, re-checked by the host's forward pass
            assert c.witness is not None and c.witness.margin <= 0 and 0 <= c.witness.t[0] <= 1
        assert c.details["answer"] in ("sat", "unsat")
    assert verdicts == {"certified", "falsified"}


@pytest.mark.parametrize("mode, reason", [
    ("garbage", "the tool's result file starts with 'maybe?', not sat/unsat/timeout/unknown/error"),
    ("nowitness", "the tool answered sat without a value for X_0 in its counterexample"),
    ("error", "the tool answered error"),
    ("crash", "the tool wrote no result file (exit code 3): tool: something went wrong"),
])
def test_malformed_or_failed_answers_are_unknown_with_the_reason(tmp_path, mode, reason):
    certs = _run(tmp_path, mode, COMMAND + f" {mode}", deltas=(60.0,), limit=1)
    (c,) = [c for c in certs if c.certifier == "vnncomp"]
    assert c.verdict == "unknown" and c.details["reason"] == reason and c.witness is None


def test_a_tool_past_its_time_is_killed_and_the_run_goes_on(tmp_path):
    start = time.monotonic()
    certs = _run(tmp_path, "slow", COMMAND + " sleep", deltas=(10.0,), limit=1, tool_timeout=0.5)
    assert time.monotonic() - start < 30
    (c,) = [c for c in certs if c.certifier == "vnncomp"]
    assert c.verdict == "unknown" and c.details["reason"] == "the tool ran past 0.5 s (+5 s) and was killed"
    assert [c.verdict for c in certs if c.certifier == "exactline"] == ["certified"]
    # under the task's --timeout, the limit binds first: a timed-out task (retried on rerun)
    certs = _run(tmp_path, "task", COMMAND + " sleep", deltas=(10.0,), limit=1, timeout=1.0)
    (c,) = [c for c in certs if c.certifier == "vnncomp"]
    assert c.error == "timed out after 1 s (--timeout)"


@pytest.mark.parametrize("command, message", [
    ("", "vnncomp needs a command"),
    ("tool {onnx} {vnnlib}", "vnncomp.command must pass {result}"),
    ("tool {onnx} {network} {result}", "vnncomp.command has the unknown placeholder {network}"),
    ("tool {onnx {result}", "vnncomp.command is not a valid template"),
])
def test_bad_commands_are_one_line_errors(tmp_path, capsys, command, message):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "-c", "vnncomp", "-m", "rotate", "--limit", "1", "-q", "-o", f"command={command}",
              "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow  # the two halves run by default: test_export.py (--vnnlib vs direct) and the first test here
def test_an_exported_instance_gives_the_same_verdict_three_ways(tmp_path):
    """`gcert export` + the tool on the files, `gcert run --vnnlib` on them, and the direct run."""
    import csv
    import subprocess

    out = tmp_path / "bench"
    main(["export", "-m", "rotate", "--delta", "60", "--limit", "1", "--out", str(out)])
    (onnx_rel, vnnlib_rel, timeout) = next(csv.reader((out / "instances.csv").read_text().splitlines()))
    result = tmp_path / "result.txt"
    subprocess.run(shlex.split(TOOL) + [str(out / onnx_rel), str(out / vnnlib_rel), timeout, str(result)],
                   check=True, timeout=300)
    tool = result.read_text().split()[0]
    via_vnnlib = tmp_path / "v.jsonl"
    run(RunConfig(mutations=(), certifiers=("exactline",), model=str(out / onnx_rel), vnnlib=(str(out / vnnlib_rel),),
                  plugins=BUILTINS_ONLY), via_vnnlib, progress=False)
    direct = tmp_path / "d.jsonl"
    run(RunConfig(mutations=("rotate",), certifiers=("exactline",), deltas=(60.0,), limit=1, plugins=BUILTINS_ONLY),
        direct, progress=False)
    (a,), (b,) = read_certificates(via_vnnlib), read_certificates(direct)
    assert a.verdict == b.verdict == {"sat": "falsified", "unsat": "certified"}[tool]
