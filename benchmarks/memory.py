"""Peak memory of gcert's own commands: the README's main command, and one driving scene (``-m foggy --limit 1``,
three strengths) per native certifier, each run as a user runs it (a separate ``gcert`` process).

Each command runs under ``/usr/bin/time -v`` (its "Maximum resident set size": the largest single process of
the tree); where that tool is missing, ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` gives the same figure.
The whole process tree's resident memory (gcert and its workers together) is also sampled from /proc every
0.2 s, since worker pools add up. Results: ``benchmarks/results/memory.md`` and ``.json``, stamped with the
git commit and the zoo manifest's sha256.

    python benchmarks/memory.py [--certifiers exactline,crown] [--timeout 1800] [--skip-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _report import stamp, write_report

CERTIFIERS = ("exactline", "deeppoly", "interval", "genprover", "sampling", "crown")
README_COMMAND = ["run", "--certifier", "exactline", "--certifier", "crown", "--mutation", "rotate", "--mutation",
                  "translate-x"]
GIB = 1024**3
TIME = shutil.which("time", path="/usr/bin") or None


def _gcert() -> list[str]:
    exe = Path(sys.executable).with_name("gcert")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gcert.cli"]


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        rss[pid] = int(found.group(1)) * 1024 if found else 0
    tree, frontier = {root}, {root}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - tree
        tree |= frontier
    return sum(rss.get(p, 0) for p in tree)


def measure(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``gcert ARGS`` in a fresh folder; peak memory, wall time, exit code and what it wrote."""
    commit = stamp()["commit"]  # what is measured: the tree as the command starts
    with tempfile.TemporaryDirectory(prefix="gcert-memory-") as tmp:
        out = Path(tmp) / "results.jsonl"
        command = [*_gcert(), *args, "--out", str(out), "-q"]
        wrapped = [TIME, "-v", *command] if TIME else command
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
        peak_tree = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak_tree[0] = max(peak_tree[0], _tree_rss(proc.pid))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, err = proc.communicate(timeout=timeout)
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            # SIGTERM to gcert itself (it stops like Ctrl-C, its workers with it), so that /usr/bin/time still
            # reports; SIGKILL to whatever is left after 60 s
            gcert = [p for p in _descendants(proc.pid) if p != proc.pid] if TIME else [proc.pid]
            for pid in gcert[:1]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                for pid in sorted(_descendants(proc.pid), reverse=True):
                    _kill(pid)
                proc.kill()
                _, err = proc.communicate()
            code = f"stopped after {timeout:g} s"
        stop.set()
        sampler.join()
        seconds = time.perf_counter() - start
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err or "")
        if found:
            max_rss, how = int(found.group(1)) * 1024, "/usr/bin/time -v"
        else:
            after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            max_rss, how = (after * 1024 if after > before else 0), "getrusage(RUSAGE_CHILDREN)"
        records = out.read_text().count("\n") if out.exists() else 0
        verdicts: dict[str, int] = {}
        if out.exists():
            from gcert.certificate import read_certificates

            for cert in read_certificates(out):
                verdicts[cert.verdict] = verdicts.get(cert.verdict, 0) + 1
        last = [line for line in (err or "").splitlines() if line.startswith("gcert: error")]
        return {"command": "gcert " + " ".join(args), "commit": commit, "exit": code, "seconds": round(seconds, 1),
                "max_rss_gb": round(max_rss / GIB, 2), "tree_rss_gb": round(peak_tree[0] / GIB, 2),
                "records": records, "verdicts": ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())),
                "measured_by": how, "error": last[0] if last else ""}


def _descendants(root: int) -> list[int]:
    """``root``'s descendants, parents before children."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree: list[int] = []
    frontier = {root}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - set(tree)
        tree += sorted(frontier)
    return tree


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certifiers", default=",".join(CERTIFIERS))
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds per command before it is stopped.")
    parser.add_argument("--skip-readme", action="store_true", help="Skip the README's main command.")
    parser.add_argument("--name", default="memory")
    parser.add_argument("--update", action="store_true",
                        help="Keep the other rows of an existing report; replace only the commands run now.")
    args = parser.parse_args()
    commands = [] if args.skip_readme else [README_COMMAND]
    commands += [["run", "-c", c, "-m", "foggy", "--limit", "1"] for c in args.certifiers.split(",") if c]
    rows = []
    for command in commands:
        row = measure(command, args.timeout)
        print(f"{row['command']}: exit {row['exit']}, {row['seconds']} s, max RSS {row['max_rss_gb']} GB, "
              f"tree {row['tree_rss_gb']} GB, {row['records']} records ({row['verdicts']}) {row['error']}",
              flush=True)
        rows.append(row)
    if args.update:
        import json

        from _report import RESULTS

        old = RESULTS / f"{args.name}.json"
        if old.exists():
            ran = {r["command"] for r in rows}
            rows = [r for r in json.loads(old.read_text())["rows"] if r["command"] not in ran] + rows
            order = ["gcert " + " ".join(c) for c in [README_COMMAND]] + [
                f"gcert run -c {c} -m foggy --limit 1" for c in CERTIFIERS]
            rows.sort(key=lambda r: order.index(r["command"]) if r["command"] in order else len(order))
    available = _meminfo("MemAvailable")
    notes = (
        "Peak resident memory of each command as a user runs it (default settings, one fresh results file each). "
        "`max RSS` is the largest single process (`/usr/bin/time -v`, else getrusage); `tree RSS` the largest sum "
        "over gcert and its worker processes, sampled every 0.2 s. The driving rows certify one scene at the "
        "stylized mutations' three default strengths (0.2, 0.5, 0.8). "
        f"Machine: {_meminfo('MemTotal') / GIB:.1f} GB memory, {available / GIB:.1f} GB available at the end."
    )
    write_report(args.name, "Peak memory of gcert commands", ["command", "commit", "exit", "seconds", "max_rss_gb",
                 "tree_rss_gb", "records", "verdicts", "error"], rows, notes=notes)


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
