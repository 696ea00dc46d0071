"""The same 40 tasks on the local process pool and on Ray with 2 workers: wall time side by side, and Ray's
overhead per task.

The tasks are the zero-config ``gcert run -c exactline -c deeppoly -m rotate`` (20 zoo digits x 2 certifiers).
Ray runs on a local instance of 2 CPUs on loopback, started before the timed run (its start-up is measured on
its own); each executor's workers build their context on their first task, inside the timed run. Verdicts of
every executor are compared with the in-process run's.

    python benchmarks/ray_overhead.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _report import write_report

from gcert.certificate import read_certificates
from gcert.runner import RunConfig, run

TASKS_CONFIG = RunConfig(mutations=("rotate",), certifiers=("exactline", "deeppoly"))


def timed(out: Path, **kwargs) -> tuple[float, dict[str, str], float]:
    start = time.perf_counter()
    summary = run(TASKS_CONFIG, out, progress=False, **kwargs)
    wall = time.perf_counter() - start
    certs = read_certificates(out)
    assert summary.written == len(certs) == 40, (summary.written, len(certs))
    return wall, {c.key: c.verdict for c in certs}, sum(c.seconds for c in certs)


def _noop() -> None:
    return None


def dispatch_ms(ray, n: int = 200) -> float:
    """Ray's own cost of one task: submit ``n`` empty tasks (2 in flight per CPU, as the executor does) and wait."""
    remote = ray.remote(num_cpus=1)(_noop)
    ray.get([remote.remote() for _ in range(4)])  # workers started
    start = time.perf_counter()
    pending = []
    for _ in range(n):
        pending.append(remote.remote())
        if len(pending) >= 4:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
    ray.get(pending)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway loopback instance
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    rows, reference = [], None
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        walls: dict[str, list[float]] = {"in-process (1 worker)": [], "local pool (2 workers)": [],
                                         "ray (2 workers)": []}
        work: dict[str, list[float]] = {k: [] for k in walls}
        starts, dispatch = [], []
        agree = True
        for r in range(args.repeats):
            wall, verdicts, busy = timed(Path(tmp, f"in-{r}.jsonl"), workers=1)
            reference = reference or verdicts
            walls["in-process (1 worker)"].append(wall)
            work["in-process (1 worker)"].append(busy)
            wall, verdicts, busy = timed(Path(tmp, f"pool-{r}.jsonl"), workers=2)
            agree &= verdicts == reference
            walls["local pool (2 workers)"].append(wall)
            work["local pool (2 workers)"].append(busy)
            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
            starts.append(time.perf_counter() - t0)
            try:
                wall, verdicts, busy = timed(Path(tmp, f"ray-{r}.jsonl"), workers=2, executor="ray")
                dispatch.append(dispatch_ms(ray))
            finally:
                ray.shutdown()
            agree &= verdicts == reference
            walls["ray (2 workers)"].append(wall)
            work["ray (2 workers)"].append(busy)
    load = (load_before, os.getloadavg()[0])
    pool = statistics.median(walls["local pool (2 workers)"])
    for name, values in walls.items():
        wall = statistics.median(values)
        busy = statistics.median(work[name])
        workers = 1 if name.startswith("in-process") else 2
        rows.append({"executor": name, "wall_s": wall, "task_seconds_sum": busy,
                     "wall_per_task_ms": 1000 * wall / 40,
                     "overhead_per_task_ms": 1000 * (wall * workers - busy) / 40,
                     "vs_local_pool_per_task_ms": 1000 * (wall - pool) / 40})
    notes = (f"40 tasks (zoo digits-cnn, rotate 10 deg, exactline + deeppoly), median of {args.repeats} runs, "
             f"wall time of `gcert.runner.run` including each worker's context build. overhead_per_task_ms = "
             "(wall x workers - sum of the records' seconds) / 40: time a worker slot spent not certifying "
             "(start-up, context build, scheduling, transfers). vs_local_pool_per_task_ms = (wall - local pool "
             f"wall) / 40. Ray start-up (ray.init of a local 2-CPU instance), not in the timed run: median "
             f"{statistics.median(starts):.2f} s. Ray's own cost per task (200 empty tasks, 4 in flight, on the warm "
             f"instance): median {statistics.median(dispatch):.2f} ms. Verdicts identical to the in-process run: "
             f"{agree}. Load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} CPUs: with other jobs running, the sum "
             "of the records' seconds itself varies several-fold between runs, so compare walls within one run.")
    write_report("ray_overhead", "Local process pool vs Ray (2 workers): the same 40 tasks",
                 ["executor", "wall_s", "task_seconds_sum", "wall_per_task_ms", "overhead_per_task_ms",
                  "vs_local_pool_per_task_ms"], rows, notes,
                 extra={"ray_version": ray.__version__, "ray_start_s": starts, "ray_dispatch_ms": dispatch,
                        "walls": walls, "verdicts_agree": agree, "load_average": load})
    for row in rows:
        print(row)
    print(notes)


if __name__ == "__main__":
    main()
