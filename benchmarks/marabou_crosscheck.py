"""Marabou against exactline: two complete certifiers that share no code, on gcert's piecewise-linear problems.

Every mutation of the zoo's digits and shapes generators on their first ``--limit`` sample inputs (each at its
default strength and at ``--scale`` times it, so that both answers occur), then ``--random`` random
piecewise-linear networks on random segments. Both certifiers run through `gcert.runner.run` (exactline's
verdict on its own lowering, Marabou's on the exported ONNX), one record each; the report counts agreements and
sets their times side by side. A disagreement between two decided verdicts exits 1.

    python benchmarks/marabou_crosscheck.py [--limit 2] [--scale 4] [--random 40] [--timeout 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from _report import write_report
from torch import nn

from gcert.certificate import Certificate, read_certificates
from gcert.plugins import PluginSettings
from gcert.problem import Problem
from gcert.regions import Segment
from gcert.runner import RunConfig, run
from gcert.spec import Spec

GENERATORS = {
    "digits": ("rotate", "translate-x", "translate-y", "scale", "shear"),
    "shapes": ("shapes-rotate", "shapes-translate-x", "shapes-translate-y", "shapes-scale", "shapes-shear"),
}


def _pairs(certs: list[Certificate]) -> list[tuple[Certificate, Certificate]]:
    by = {(c.input, c.mutation, c.delta, c.certifier): c for c in certs}
    return [(c, by[(c.input, c.mutation, c.delta, "marabou")]) for c in certs
            if c.certifier == "exactline" and (c.input, c.mutation, c.delta, "marabou") in by]


def zoo_pairs(limit: int, scale: float, timeout: float, workdir: Path, generators: Sequence[str]) -> dict[str, list]:
    from gcert.plugins import load_registry

    registry = load_registry()
    out: dict[str, list] = {}
    for name in generators:
        for m in GENERATORS[name]:
            default = registry.mutation(m).default_delta
            path = workdir / f"{m}.jsonl"
            config = RunConfig(mutations=(m,), certifiers=("exactline", "marabou"), deltas=(default, scale * default),
                               limit=limit, timeout=timeout, options={"marabou": {"timeout": timeout}},
                               plugins=PluginSettings.from_env(), allow_extrapolation=True)
            start = time.perf_counter()
            run(config, path, workers=1, progress=False)
            print(f"{m}: {time.perf_counter() - start:.1f} s", flush=True)
            out.setdefault(name, []).extend(_pairs(read_certificates(path)))
    return out


def random_pairs(n: int, timeout: float) -> list[tuple[str, str, float, float]]:
    """(exactline verdict, marabou verdict, seconds, seconds) on random ReLU / leaky-ReLU / clamp networks."""
    from gcert.testing import make_registry
    from gcert.timeouts import TaskTimeout, time_limit
    from gcert.witness import check_witness

    registry = make_registry(*_marabou_plugin())
    rows = []
    for seed in range(n):
        torch.manual_seed(seed)
        width = 8 + 8 * (seed % 3)
        act = [nn.ReLU(), nn.LeakyReLU(0.2), nn.Hardtanh(-1.0, 1.0)][seed % 3]
        net = nn.Sequential(nn.Linear(6, width), act, nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)).eval()
        gen = torch.Generator().manual_seed(seed)
        start = torch.randn(6, generator=gen)
        end = start + (0.5 + seed % 4) * torch.randn(6, generator=gen)
        label = int(net(start.reshape(1, -1)).argmax())
        problem = Problem(net, nn.Identity(), Segment(start, end), Spec.top1(label, 4))
        answers = []
        for name in ("exactline", "marabou"):
            certifier = registry.certifier(name)
            t0 = time.perf_counter()
            try:
                with time_limit(timeout):
                    outcome = certifier.certify(problem, certifier.parse_options())
                verdict = outcome.verdict
                if verdict == "falsified" and check_witness(problem, outcome.witness_t)[0] is None:
                    verdict = "unknown"
            except TaskTimeout:
                verdict = "unknown"
            answers.append((verdict, time.perf_counter() - t0))
        rows.append((answers[0][0], answers[1][0], answers[0][1], answers[1][1]))
    return rows


def _marabou_plugin() -> list:
    from gcert_marabou import plugin

    return [plugin]


def summarize(label: str, pairs: list[tuple[str, str, float, float]]) -> tuple[dict, list[str]]:
    agree = sum(a == b for a, b, _, _ in pairs)
    decided = [(a, b) for a, b, _, _ in pairs if a != "unknown" and b != "unknown"]
    conflicts = [f"{label}: exactline {a}, marabou {b}" for a, b in decided if a != b]
    verdicts = Counter(a for a, _, _, _ in pairs)
    row = {"problems": label, "tasks": len(pairs), "agree": agree, "both decided": len(decided),
           "conflicts": len(conflicts),
           "exactline verdicts": ", ".join(f"{v} {verdicts[v]}" for v in sorted(verdicts)),
           "marabou unknown": sum(b == "unknown" for _, b, _, _ in pairs),
           "exactline s (total)": sum(x for _, _, x, _ in pairs), "marabou s (total)": sum(y for _, _, _, y in pairs),
           "exactline s (median)": _median([x for _, _, x, _ in pairs]),
           "marabou s (median)": _median([y for _, _, _, y in pairs])}
    return row, conflicts


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=2, help="sample inputs per generator")
    ap.add_argument("--scale", type=float, default=4.0, help="second strength: this many times the default")
    ap.add_argument("--random", type=int, default=40, help="random piecewise-linear networks")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per task (and per Marabou query)")
    ap.add_argument("--generators", default="digits,shapes",
                    help="zoo generators (digits, shapes); Marabou needed 18 GB on shapes-rotate here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the records here (a rerun resumes)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows, conflicts = [], []
    with tempfile.TemporaryDirectory(prefix="gcert-crosscheck-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        zoo = zoo_pairs(args.limit, args.scale, args.timeout, workdir, args.generators.split(","))
        for name, pairs in zoo.items():
            flat = [(a.verdict, b.verdict, a.seconds, b.seconds) for a, b in pairs]
            row, bad = summarize(f"zoo {name} (5 mutations x {args.limit} inputs x 2 strengths)", flat)
            rows.append(row)
            conflicts += bad
    row, bad = summarize(f"random PWL networks ({args.random}, 6-D segments)", random_pairs(args.random,
                                                                                             args.timeout))
    rows.append(row)
    conflicts += bad
    columns = list(rows[0])
    notes = (f"Both certifiers per task; Marabou per-query and per-task limit {args.timeout:g} s (an out-of-time"
             " task counts as unknown). 'conflicts': both decided and differ; must be 0. Times in seconds, this"
             " machine (2 cores shared with other jobs).")
    _, md = write_report("marabou-crosscheck", "Marabou vs exactline (two independent complete certifiers)",
                         columns, rows, notes=notes, out=args.out, extra={"conflicts": conflicts, "args": {
                             k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})
    print(md.read_text())
    return 1 if conflicts else 0


if __name__ == "__main__":
    sys.exit(main())
