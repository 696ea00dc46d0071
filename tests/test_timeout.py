"""`--timeout`: a task past its limit is recorded as unknown with the reason, the run goes on, and a rerun
(with a longer limit) computes it again."""

from __future__ import annotations

import time

import pytest

from gcert.certificate import read_certificates
from gcert.cli import main
from gcert.plugins import PluginSettings
from gcert.runner import RunConfig, run
from gcert.timeouts import TaskTimeout, remaining, time_limit

PLUGIN = '''
import time
from dataclasses import dataclass
import gcert
from gcert.contracts import Certifier, Outcome


@dataclass(frozen=True)
class SpinOptions:
    seconds: float = 0.0  # spin this long in Python before answering


class Spin(Certifier):
    """Answers 'unknown' after spinning (a pure-Python loop, as native certifiers run) or sleeping."""
    name = "spin"
    guarantee = "sound"
    Options = SpinOptions

    def certify(self, problem, options):
        end = time.monotonic() + options.seconds
        try:
            while time.monotonic() < end:
                pass
        except Exception:  # a certifier's own catch-all must not swallow the time limit
            return Outcome("unknown", details={"reason": "swallowed"})
        return Outcome("unknown", details={"reason": "done"})


@gcert.hookimpl
def gcert_register_certifiers(register):
    register(Spin())
'''


@pytest.fixture
def spin(tmp_path, monkeypatch) -> PluginSettings:
    (tmp_path / "spin_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return PluginSettings(autoload=False, extra=("spin_plugin",))


def test_a_task_past_its_limit_is_unknown_with_the_reason_and_the_run_goes_on(spin, tmp_path):
    out = tmp_path / "r.jsonl"
    config = RunConfig(mutations=("linf",), certifiers=("spin", "interval"), deltas=(0.01,), limit=2,
                       options={"spin": {"seconds": 30.0}}, plugins=spin, timeout=0.5)
    start = time.monotonic()
    run(config, out, workers=1, progress=False)
    assert time.monotonic() - start < 15
    certs = read_certificates(out)
    assert len(certs) == 4
    for c in certs:
        if c.certifier == "spin":
            assert c.verdict == "unknown" and c.error == "timed out after 0.5 s (--timeout)", c.error
            assert c.details["reason"] == c.error and 0.4 < c.seconds < 5
        else:
            assert c.error is None and c.details.get("reason") != "timed out after 0.5 s (--timeout)"
    # a rerun with a longer limit computes the timed-out tasks again (and only those), now to the end
    config = RunConfig(mutations=("linf",), certifiers=("spin", "interval"), deltas=(0.01,), limit=2,
                       options={"spin": {"seconds": 0.1}}, plugins=spin, timeout=20.0)
    summary = run(config, out, workers=1, progress=False)
    assert summary.done_before == 2 and summary.written == 2
    spun = [c for c in read_certificates(out) if c.certifier == "spin"]
    assert [(c.error, c.details["reason"]) for c in spun] == [(None, "done")] * 2


def test_the_limit_holds_in_pool_workers_and_for_tolerance(spin, tmp_path):
    out = tmp_path / "t.jsonl"
    config = RunConfig(mutations=("linf",), certifiers=("spin",), deltas=(0.01,), limit=2, tolerance_steps=4,
                       options={"spin": {"seconds": 30.0}}, plugins=spin, timeout=1.0)
    run(config, out, workers=2, progress=False)
    certs = read_certificates(out)
    assert [c.error for c in certs] == ["timed out after 1 s (--timeout)"] * 2


def test_time_limit_without_signals_is_cooperative():
    import threading

    seen: list[object] = []

    def body() -> None:
        try:
            with time_limit(0.2):
                seen.append(remaining())
                time.sleep(0.3)
        except TaskTimeout as exc:
            seen.append(str(exc))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert 0 < seen[0] <= 0.2 and seen[1] == "timed out after 0.2 s (--timeout)"
    assert remaining() is None


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_a_bad_timeout_is_refused_in_one_line(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "-c", "interval", "-m", "linf", "--limit", "1", "--timeout", value, "-q",
              "--out", str(tmp_path / "r.jsonl")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--timeout" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "r.jsonl").exists()
