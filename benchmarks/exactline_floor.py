"""exactline against its floor: one batched float32 forward pass of N over one point per piece.

Per case (driving scenes, a shapes and a faces sample): pieces, verdict, share, exactline's time (one certify
call, one CPU thread, in a fresh process) and the peak memory that call adds, for this checkout and optionally
an older one (``--base DIR``, e.g. ``git worktree add /tmp/base 6dff53c``, run with this interpreter); the floor
is timed in the same process as this checkout's call, on the midpoints of its pieces (the best of two runs).

    python benchmarks/exactline_floor.py [--base /tmp/base] [--cases foggy:0:0.8,rainy:0:0.8]

Results: ``benchmarks/results/exactline-floor.{json,md}``, stamped with the git commit and zoo manifest sha256.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = "foggy:0:0.8,foggy:1:0.8,rainy:0:0.8,shapes-rotate:0:30,face-orientation:0:40"
FLOOR_CHUNK = 512  # points per float32 batch (bounds the floor's own memory)


def _peak_mb() -> float:
    import resource  # noqa: PLC0415

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(case: str, out: str, floor: bool) -> None:
    """Runs in the measured process: one exactline certify call (and the float32 floor)."""
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from gcert.runner import Context, RunConfig  # noqa: PLC0415

    torch.set_num_threads(1)
    mutation, index, delta = case.split(":")
    ctx = Context(RunConfig(mutations=(mutation,), certifiers=("exactline",), deltas=(float(delta),)))
    task = next(t for t in ctx.tasks() if t.index == int(index))
    gen_spec = ctx.registry.generator_spec(ctx.mutations[mutation].generator)
    generator = ctx.registry.generator(gen_spec.name)  # one image's own inversion, the same in every checkout
    ctx._inverted[(gen_spec.name, task.index)] = gen_spec.invert(generator, ctx.data.images[task.index])
    problem, _ = ctx.problem(task)
    certifier, options = ctx.certifiers["exactline"], ctx.options["exactline"]
    base_mb = _peak_mb()
    start = time.perf_counter()
    outcome = certifier.certify(problem, options)  # includes lowering N, as a task does
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"verdict": outcome.verdict, "pieces": outcome.pieces, "seconds": seconds,
                           "share": outcome.details.get("share"), "margin_lower": outcome.margin_lower,
                           "peak_mb_added": _peak_mb() - base_mb, "peak_mb": _peak_mb()}
    if floor and outcome.pieces:
        from gcert.line import analyse_line  # noqa: PLC0415

        lo, hi = float(problem.region.lower[0]), float(problem.region.upper[0])
        line = analyse_line(problem.lowered(), problem.spec, lo, hi)
        mids = ((line.t[:-1] + line.t[1:]) / 2).reshape(-1, 1)
        n = problem.composed()
        generator, network = copy.deepcopy(n.generator).float(), copy.deepcopy(n.network).float()
        with torch.no_grad():
            controls = n.embed(mids.double()).float()  # the embedding is float64 by design; the rest float32
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                for part in controls.split(FLOOR_CHUNK):
                    network(generator(part))
                best = min(best, time.perf_counter() - t0)
        row["floor_seconds"] = best
    Path(out).write_text(json.dumps(row))


def measure(tree: Path, case: str, floor: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--out", str(out)]
        subprocess.run(command + (["--floor"] if floor else []), env=env, check=True, cwd=tmp)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help="an older checkout to time too (the 'before' columns)")
    parser.add_argument("--cases", default=CASES, help="MUTATION:INPUT:DELTA, comma-separated")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.floor)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _report, beside this script
    from _report import write_report  # noqa: PLC0415

    base_commit = None
    if args.base:
        base_commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=args.base,
                                     capture_output=True, text=True).stdout.strip()
    rows = []
    for case in args.cases.split(","):
        after = measure(ROOT, case, floor=True)
        row: dict[str, Any] = {"case": case, "pieces": after["pieces"], "verdict": after["verdict"],
                               "share": after["share"], "seconds": after["seconds"],
                               "floor_seconds": after.get("floor_seconds"),
                               "peak_mb_added": after["peak_mb_added"], "margin_lower": after["margin_lower"]}
        if row["floor_seconds"]:
            row["over_floor"] = after["seconds"] / row["floor_seconds"]
        if args.base:
            before = measure(args.base, case, floor=False)
            row.update({"before_seconds": before["seconds"], "before_pieces": before["pieces"],
                        "before_verdict": before["verdict"], "before_share": before["share"],
                        "before_peak_mb_added": before["peak_mb_added"], "before_margin_lower": before["margin_lower"],
                        "speedup": before["seconds"] / after["seconds"]})
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = ["case", "pieces", "verdict", "share", "seconds", "floor_seconds", "over_floor", "peak_mb_added"]
    if args.base:
        columns += ["before_pieces", "before_verdict", "before_share", "before_seconds", "before_peak_mb_added",
                    "speedup"]
    notes = ("One `exactline` certify call per case (MUTATION:INPUT:DELTA on the zoo samples; lowering included), "
             "one CPU thread, each in a fresh process. `floor_seconds`: one float32 forward pass of N over the "
             "midpoint of every piece, in batches of 512 (best of two). `over_floor` = seconds / floor_seconds "
             "(target <= 2). `peak_mb_added`: how far the call raised the process's peak resident memory. "
             + (f"`before_*`: the same call at commit {base_commit}. " if args.base else "")
             + "Produced by `python benchmarks/exactline_floor.py"
             + (f" --base DIR` (DIR a worktree at {base_commit})." if args.base else "`."))
    write_report("exactline-floor", "exactline against its float32 floor", columns, rows, notes,
                 extra={"base_commit": base_commit})


if __name__ == "__main__":
    main()
