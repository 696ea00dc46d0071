"""Faults cost nothing but the task they hit (issue 12): gcert killed with -9 or stopped with SIGTERM leaves
no worker behind and a file the rerun completes; one writer per results file; a certifier that crashes in
prepare or certify, or a worker the kernel kills, becomes an ``unknown`` record and the run goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gcert.certificate import ResultStore, read_certificates
from gcert.cli import main
from gcert.plugins import PluginSettings
from gcert.runner import RunConfig, run

SLOW = '''
import os, time
import gcert
from gcert_plugins.interval import IntervalCertifier

class SlowInterval(IntervalCertifier):
    """interval, after sleeping $SLOW_SECONDS: tasks that take a while without using the CPU."""
    name = "slow-interval"
    def certify(self, problem, options):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
        return super().certify(problem, options)

@gcert.hookimpl
def gcert_register_certifiers(register):
    register(SlowInterval())
'''

# 20 tasks of 0.4 s each on two workers: about 4 s of work after the workers start
DELTAS = "0.001,0.002,0.003,0.004,0.005,0.006,0.007,0.008,0.009,0.01"
JOB = ["run", "--plugin", "slow_plugin", "-c", "slow-interval", "-m", "linf", "--delta", DELTAS, "--limit", "2",
       "--workers", "2", "-q"]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "slow_plugin.py").write_text(SLOW)
    return folder


def _env(plugin_dir: Path, seconds: float = 0.4) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "SLOW_SECONDS": str(seconds)}


def _start(out: Path, plugin_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gcert.cli", *JOB, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(plugin_dir))


def _wait_for_records(out: Path, proc: subprocess.Popen[str], n: int = 1, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_bytes().splitlines()) >= n:
            return len(out.read_bytes().splitlines())
        time.sleep(0.02)
    raise AssertionError(f"no record after {timeout} s (exit {proc.poll()})")


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _verdicts(path: Path) -> dict[str, str]:
    return {c.key: c.verdict for c in read_certificates(path)}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path) -> dict[str, str]:
    """The same job without interruption, in this process, without the sleep."""
    out = tmp_path_factory.mktemp("clean") / "r.jsonl"
    sys.path.insert(0, str(plugin_dir))
    try:
        config = RunConfig(mutations=("linf",), certifiers=("slow-interval",),
                           deltas=tuple(float(d) for d in DELTAS.split(",")), limit=2,
                           plugins=PluginSettings.from_env(extra=("slow_plugin",)))
        run(config, out, workers=1, progress=False)
    finally:
        sys.path.remove(str(plugin_dir))
    verdicts = _verdicts(out)
    assert len(verdicts) == 20 and len(set(verdicts.values())) > 1  # some certified, some not
    return verdicts


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_kill_9_leaves_no_worker_behind_and_the_rerun_gives_the_clean_verdicts(clean_run, plugin_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    proc = _start(out, plugin_dir)
    _wait_for_records(out, proc)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "expected the pool's worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "worker processes outlived gcert"
    for line in out.read_text().splitlines():
        json.loads(line)
    done = len(read_certificates(out))
    assert 1 <= done < 20
    rest = subprocess.run([sys.executable, "-m", "gcert.cli", *JOB, "--out", str(out)], capture_output=True,
                          text=True, timeout=600, env=_env(plugin_dir, 0))
    assert rest.returncode == 0, rest.stderr
    assert f"({done} were already there)" in rest.stderr
    assert _verdicts(out) == clean_run and len(read_certificates(out)) == 20


def test_sigterm_stops_like_ctrl_c_with_exit_143(plugin_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    proc = _start(out, plugin_dir)
    _wait_for_records(out, proc)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    assert 1 <= len(read_certificates(out)) < 20
    for line in out.read_text().splitlines():
        json.loads(line)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]
    assert not Path(str(out) + ".lock").exists()


def test_a_second_concurrent_run_on_the_same_file_is_refused(plugin_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.jsonl"
    proc = _start(out, plugin_dir)
    monkeypatch.syspath_prepend(str(plugin_dir))
    try:
        _wait_for_records(out, proc)
        before = out.read_bytes()
        with pytest.raises(SystemExit) as exc:
            main([*JOB, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        assert f"is being written by another gcert run (process {proc.pid})" in err
        assert out.read_bytes()[: len(before)] == before
    finally:
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    certs = read_certificates(out)
    assert len(certs) == 20 and len({c.key for c in certs}) == 20  # nothing written twice


def test_a_held_results_file_is_refused_in_process(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    with ResultStore(out):
        with pytest.raises(SystemExit) as exc:
            main(["run", "-c", "interval", "-m", "linf", "--limit", "1", "-q", "--out", str(out)])
        err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "is being written by another gcert run" in err and len(err.splitlines()) == 1
    assert not out.exists()


CRASHING = '''
import os, signal
from dataclasses import dataclass
import gcert
from gcert.contracts import Certifier, Outcome

class PrepareBug(Certifier):
    name = "prepare-bug"
    guarantee = "sound"
    def prepare(self, problem):
        raise RuntimeError("prepare exploded")
    def certify(self, problem, options):
        return Outcome("certified")

class Killer(Certifier):
    """Dies like a worker the kernel's OOM killer picked, on the input 'digits:1' only."""
    name = "killer"
    guarantee = "sound"
    def certify(self, problem, options):
        if problem.meta["input"] == "digits:1":
            os.kill(os.getpid(), signal.SIGKILL)
        return Outcome("unknown")

@gcert.hookimpl
def gcert_register_certifiers(register):
    register(PrepareBug())
    register(Killer())
'''


@pytest.fixture
def crashing_plugin(tmp_path, monkeypatch) -> PluginSettings:
    (tmp_path / "crashing_plugin.py").write_text(CRASHING)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get the parent's sys.path
    return PluginSettings(autoload=False, extra=("crashing_plugin",))


def test_a_certifier_crashing_in_prepare_gives_unknown_records_and_the_run_goes_on(crashing_plugin, tmp_path):
    out = tmp_path / "r.jsonl"
    config = RunConfig(mutations=("linf",), certifiers=("prepare-bug", "interval"), limit=2, plugins=crashing_plugin)
    warnings: list[str] = []
    summary = run(config, out, workers=1, progress=False, on_warning=warnings.append)
    certs = read_certificates(out)
    assert summary.written == 4 and len(certs) == 4
    bug = [c for c in certs if c.certifier == "prepare-bug"]
    assert all(c.verdict == "unknown" and "RuntimeError: prepare exploded" in c.error for c in bug)
    assert all(c.error is None for c in certs if c.certifier == "interval")
    assert warnings == ["prepare-bug.prepare failed: RuntimeError: prepare exploded; its tasks are recorded as unknown"]


def test_a_worker_killed_by_the_kernel_costs_its_task_only(crashing_plugin, tmp_path):
    out = tmp_path / "r.jsonl"
    config = RunConfig(mutations=("linf",), certifiers=("killer",), deltas=(0.01,), limit=4,
                       plugins=crashing_plugin)
    warnings: list[str] = []
    summary = run(config, out, workers=2, progress=False, on_warning=warnings.append)
    certs = {(c.input, c.delta): c for c in read_certificates(out)}
    assert summary.written == 4 and len(certs) == 4
    for (input_id, _), cert in certs.items():
        if input_id == "digits:1":
            assert cert.verdict == "unknown" and "killed by SIGKILL" in cert.error, cert.error
        else:
            assert cert.error is None, cert.error
    killed = [w for w in warnings if "killed by SIGKILL" in w]
    assert len(killed) == 1 and killed[0].startswith("digits:1 linf delta=0.01 killer: ") and "\n" not in killed[0]


def test_max_memory_caps_the_workers_and_says_so(tmp_path):
    out = tmp_path / "r.jsonl"
    config = RunConfig(mutations=("linf",), certifiers=("interval",), deltas=(0.01, 0.02), limit=2,
                       plugins=PluginSettings(autoload=False))
    warnings: list[str] = []
    summary = run(config, out, workers=2, progress=False, max_memory=1.0, on_warning=warnings.append)
    assert summary.workers == 1 and summary.written == 4
    assert len(warnings) == 1 and "--max-memory 1 GB allows 1" in warnings[0], warnings
