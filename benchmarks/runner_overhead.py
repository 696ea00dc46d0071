"""Where the time of a zero-config run goes: ``gcert run -c exactline -m rotate`` on the digits zoo (20 inputs).

Each measurement is a fresh Python process running the CLI in-process with ``--workers 1`` (so every task runs
where it can be timed), with timers wrapped around the certifier's ``certify``, the lowering, and the runner's
problem building (the inversion of each input). The share inside certifiers excludes the lowering the
certifier asks for. The plain command with the default workers is timed too, as a user runs it. ``--tree DIR``
measures another checkout (e.g. ``git worktree add /tmp/base 6dff53c``) with this interpreter, for a before/after.

    python benchmarks/runner_overhead.py [--tree /tmp/base --label before] [--merge]

Results: ``benchmarks/results/runner-overhead.{json,md}``, stamped with the git commit and zoo manifest sha256;
``--merge`` keeps the rows of other labels already there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMMAND = ["run", "-c", "exactline", "-m", "rotate"]
ROOT = Path(__file__).resolve().parents[1]


def child(out: str) -> None:
    """Runs in the measured process: the CLI in-process, with timers around the phases."""
    start = time.perf_counter()
    import gcert.cli as cli  # noqa: PLC0415 - timing the import is the point
    import gcert.lowering as lowering  # noqa: PLC0415
    import gcert.runner as runner  # noqa: PLC0415
    from gcert.plugins import load_registry  # noqa: PLC0415

    imported = time.perf_counter()
    spent = {"certify": 0.0, "lowering": 0.0, "problem": 0.0}

    def timed(key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    cls = type(load_registry().certifier("exactline"))
    cls.certify = timed("certify", cls.certify)
    lowering.lower = timed("lowering", lowering.lower)
    try:
        import gcert.composed_cache as cache  # noqa: PLC0415 - absent before the cache existed

        cache.lower = lowering.lower
    except ImportError:
        pass
    runner.Context.problem = timed("problem", runner.Context.problem)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cli.main([*COMMAND, "--workers", "1", "-q", "--out", str(Path(tmp) / "r.jsonl")])
        except SystemExit as exc:
            if exc.code:
                raise
        records = [json.loads(line) for line in (Path(tmp) / "r.jsonl").read_text().splitlines()]
    end = time.perf_counter()
    Path(out).write_text(json.dumps({"imports_s": imported - start, "in_process_s": end - start, **{
        f"{k}_s": v for k, v in spent.items()}, "records": len(records),
        "verdicts": sorted((r["input"], r["verdict"], r["pieces"], r["inversion_error"]) for r in records)}))


def measure(tree: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        t = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(out)], env=env, check=True,
                       cwd=tmp)
        wall = time.perf_counter() - t
        data = json.loads(out.read_text())
        gcert = Path(sys.executable).with_name("gcert")
        exe = [str(gcert)] if gcert.exists() else [sys.executable, "-m", "gcert.cli"]
        t = time.perf_counter()
        subprocess.run([*exe, *COMMAND, "-q", "--out", str(Path(tmp) / "plain.jsonl")], env=env, check=True,
                       cwd=tmp, capture_output=True)
        plain = time.perf_counter() - t
    inside = data["certify_s"] - data["lowering_s"]
    return {"wall_s": wall, "plain_default_workers_s": plain, "imports_s": data["imports_s"],
            "problem_s": data["problem_s"], "lowering_s": data["lowering_s"], "certify_s": data["certify_s"],
            "inside_certifiers_s": inside, "share_inside": inside / wall, "records": data["records"],
            "verdicts": data["verdicts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    parser.add_argument("--label", default="after")
    parser.add_argument("--merge", action="store_true", help="keep rows of other labels in the results file")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _report, beside this script
    from _report import RESULTS, stamp, write_report  # noqa: PLC0415

    result = measure(args.tree)
    row = {"label": args.label, **{k: v for k, v in result.items() if k != "verdicts"}, "answers": result["verdicts"]}
    # (input, verdict, pieces, inversion error) of every record: equal digests mean the same answers
    row["answers_sha256"] = hashlib.sha256(json.dumps(result["verdicts"]).encode()).hexdigest()[:12]
    tree_commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=args.tree, capture_output=True,
                                 text=True).stdout.strip()
    row["measured_commit"] = tree_commit
    row["harness"] = stamp()["commit"]
    rows = [row]
    old = RESULTS / "runner-overhead.json"
    if args.merge and old.exists():
        rows = [r for r in json.loads(old.read_text())["rows"] if r["label"] != args.label] + rows
    columns = ["label", "measured_commit", "wall_s", "imports_s", "problem_s", "lowering_s", "inside_certifiers_s",
               "share_inside", "plain_default_workers_s", "records", "answers_sha256"]
    notes = ("`gcert run -c exactline -m rotate` on the digits zoo (20 inputs, one strength), one fresh process "
             "each, `--workers 1` in-process with timers: `problem_s` builds each task's problem (the inversion), "
             "`lowering_s` lowers networks, `inside_certifiers_s` is the certifier's own time without the lowering, "
             "`share_inside` its share of the process's wall time. `plain_default_workers_s`: the same command as "
             "a user runs it (default workers). Produced by `python benchmarks/runner_overhead.py` "
             "(`--tree DIR --label before` for another checkout). `answers_sha256` digests every record's input, "
             "verdict, pieces and inversion error: equal digests, equal answers.")
    write_report("runner-overhead", "Runner overhead of the zero-config digits run", columns, rows, notes)


if __name__ == "__main__":
    main()
