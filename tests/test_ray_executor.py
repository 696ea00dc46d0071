"""The Ray executor: a local Ray head on 127.0.0.1 with two worker CPUs, a worker killed mid-run, then Ctrl-C; the
rerun resumes, and the JSONL holds each task exactly once with the local run's verdicts. Skips without Ray (the
``ray`` extra; ``tox -e ray`` runs it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from gcert.certificate import read_certificates
from gcert.testing import run_cli

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'gcert[ray]')")

TOKEN_VAR = "GCERT_RAY_TEST_TOKEN"
ARGS = ("run", "-c", "exactline", "-c", "deeppoly", "-m", "rotate", "-q")  # 20 zoo inputs x 2 = 40 tasks
TASKS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ours(token: str, temp: str | None = None) -> list[int]:
    """Processes started by this test's ``ray start``: they inherit its environment token, or (Ray's agents, which
    get another environment) hold files open in its temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if f"{TOKEN_VAR}={token}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
                continue
            if temp and any(_link(fd).startswith(temp + "/") for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
    return pids


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def ray_head():
    """``ray start --head`` on loopback with 2 CPUs and a small object store; stopped (only its own processes)."""
    token = uuid.uuid4().hex
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rg", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # Ray replaces 127.0.0.1 by the machine's address unless it runs as a one-machine cluster: keep it on loopback
    env = {**os.environ, TOKEN_VAR: token, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "disabled"}  # a throwaway loopback cluster of this test only
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_bin, "start", "--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--include-dashboard", "false", "--object-store-memory", str(128 * 1024**2), "--temp-dir", temp,
           "--disable-usage-stats"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}", token, env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _ours(token, temp):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while _ours(token, temp) and time.monotonic() < deadline:
                time.sleep(0.2)
        subprocess.run(["rm", "-rf", temp], check=False)


def _local_verdicts(tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "local.jsonl"
    assert _main(*ARGS, "--workers", "1", "--out", str(out)) == 0
    return {c.key: c.verdict for c in read_certificates(out)}


_main = run_cli


def test_ray_cluster_with_a_worker_killed_mid_run_keeps_each_task_once_and_resumes(ray_head, tmp_path):
    """A worker killed mid-task costs a retry, not a record; Ctrl-C later leaves a valid file the rerun resumes."""
    address, token, env = ray_head
    out = tmp_path / "ray.jsonl"
    cmd = [sys.executable, "-m", "gcert.cli", *ARGS, "--executor", "ray", "--ray-address", address,
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    interrupted = False
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            lines = out.read_text().count("\n") if out.exists() else 0
            if not killed and 3 <= lines < TASKS - 10:
                busy = [p for p in _ours(token) if _cmdline(p).startswith("ray::_solve_on_worker")]
                if busy:
                    os.kill(busy[0], signal.SIGKILL)  # a worker process dies while running a task
                    killed.append(busy[0])
            if killed and not interrupted and lines >= 20:
                proc.send_signal(signal.SIGINT)  # then the user presses Ctrl-C
                interrupted = True
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, f"no Ray worker was seen running a task to kill; stderr: {stderr}"
    assert proc.returncode == 130, stderr
    first = read_certificates(out)
    assert 20 <= len(first) < TASKS and len({c.key for c in first}) == len(first)
    assert all(c.error is None for c in first), [c.error for c in first if c.error]

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{TASKS - len(first)} new records in {out} ({len(first)} were already there)" in resumed.stderr
    certs = read_certificates(out)
    keys = [c.key for c in certs]
    assert len(keys) == TASKS and len(set(keys)) == TASKS  # each task exactly once, none lost to the kill
    assert all(c.error is None for c in certs), [c.error for c in certs if c.error]
    assert {c.key: c.verdict for c in certs} == _local_verdicts(tmp_path)

    before = out.read_bytes()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"0 new records in {out} ({TASKS} were already there)" in again.stderr
    assert out.read_bytes() == before
