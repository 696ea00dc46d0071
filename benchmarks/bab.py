"""bab on boxes of several mutations at once on the zoo: decided within the limit, and checked against exactline on
every edge of the box from the unmutated input (one mutation's segment each) and against dense sampling.

Each case is a composite mutation (``rotate+translate-x+scale``: t in [0, 1]^k, every combination of 0..delta_i of
each part, delta a fraction of each part's default strength) on the zoo network its generator is made for.

    python benchmarks/bab.py [--timeout 60] [--limit 2] [--samples 4096]

Writes benchmarks/results/bab.json and .md. The VNN-COMP part of the bab report is benchmarks/vnncomp.py with
``--certifiers bab --name vnncomp-bab --option bab.timeout=...`` (its own report).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter

import torch
from _report import write_report

from gcert.plugins import PluginSettings
from gcert.problem import Problem
from gcert.regions import Segment
from gcert.runner import Context, RunConfig
from gcert.witness import check_witness

CASES = (
    ("digits", "rotate+translate-x", (0.5, 1.0)),
    ("digits", "rotate+translate-x+scale", (0.35, 0.7)),
    ("shapes", "shapes-rotate+shapes-translate-x+shapes-scale", (0.25,)),  # one bound takes ~40 s here
    ("faces", "eyes+face-orientation+hair-colour+mouth", (0.25,)),
)


def sampled_min(problem: Problem, n: int, seed: int = 0) -> float:
    """The lowest margin over the box's corners and ``n`` uniform points (a falsification-side check)."""
    k = problem.region.dim
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * k).reshape(-1, k)
    points = torch.cat([corners, torch.rand(n, k, generator=torch.Generator().manual_seed(seed),
                                            dtype=torch.float64)])
    return float(torch.cat([problem.margins(c) for c in points.split(512)]).min())


def edges(problem: Problem) -> list[Problem]:
    """The box's edges from the unmutated input: one segment per part (the others at strength 0)."""
    embed = problem.region.embedding()
    k = problem.region.dim
    start = embed(torch.zeros(1, k, dtype=torch.float64))[0]
    out = []
    for i in range(k):
        end = torch.zeros(1, k, dtype=torch.float64)
        end[0, i] = 1.0
        out.append(Problem(problem.network, problem.generator, Segment(start, embed(end)[0]), problem.spec, {}))
    return out


def run_case(generator: str, mutation: str, deltas: tuple[float, ...], args: argparse.Namespace) -> list[dict]:
    config = RunConfig(mutations=(mutation,), certifiers=("bab", "exactline"), deltas=deltas, limit=args.limit,
                       options={"bab": {"timeout": args.timeout}}, plugins=PluginSettings(autoload=False))
    ctx = Context(config)
    bab, exact = ctx.certifiers["bab"], ctx.certifiers["exactline"]
    rows = []
    for task in [t for t in ctx.tasks() if t.certifier == "bab"]:
        problem, inversion_error = ctx.problem(task)
        start = time.perf_counter()
        out = bab.certify(problem, ctx.options["bab"])
        seconds = time.perf_counter() - start
        verdict = out.verdict
        if verdict == "falsified" and check_witness(problem, out.witness_t)[0] is None:
            verdict = "unknown (witness rejected)"
        low = sampled_min(problem, args.samples)
        sampling_ok = not (verdict == "certified" and low <= 0)
        slice_verdicts, slices_ok = [], True
        edge_options = dataclasses.replace(ctx.options["bab"], timeout=min(args.timeout, 20.0))
        for seg in edges(problem):
            line = exact.certify(seg, ctx.options["exactline"]).verdict
            mine = bab.certify(seg, edge_options).verdict
            slice_verdicts.append(line)
            # a certified box certifies each edge; on an edge, bab and exactline decide alike
            slices_ok &= (verdict != "certified" or line == "certified") and (mine == line or mine == "unknown")
        rows.append({
            "generator": generator, "mutations": mutation, "k": problem.region.dim, "delta": task.delta,
            "input": task.input_id, "verdict": verdict, "seconds": round(seconds, 3),
            "domains": out.details.get("domains", 0), "stopped": out.details.get("stopped",
                                                                                 out.details.get("decided_by", "")),
            "margin_lower": out.margin_lower, "sampled_min_margin": round(low, 6), "sampling_agrees": sampling_ok,
            "edges_exactline": "/".join(v[0] for v in slice_verdicts), "edges_agree": slices_ok,
            "inversion_error": round(float(inversion_error), 5),
        })
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=60.0, help="bab's limit per box, seconds")
    ap.add_argument("--limit", type=int, default=2, help="sample inputs per generator")
    ap.add_argument("--samples", type=int, default=4096, help="uniform points per box for the sampling check")
    ap.add_argument("--cases", default=",".join(c[1] for c in CASES), help="composite mutations to run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    wanted = set(args.cases.split(","))
    rows: list[dict] = []
    for generator, mutation, deltas in CASES:
        if mutation in wanted:
            rows += run_case(generator, mutation, deltas, args)
    counts = Counter(r["verdict"] for r in rows)
    decided = counts["certified"] + counts["falsified"]
    summary = {"boxes": len(rows), "decided": decided, "verdicts": dict(counts),
               "sampling_disagreements": sum(not r["sampling_agrees"] for r in rows),
               "edge_disagreements": sum(not r["edges_agree"] for r in rows)}
    notes = (f"bab (timeout {args.timeout:g} s per box, one thread) on boxes of 2-4 mutations of one zoo generator; "
             f"{decided} of {len(rows)} boxes decided. 'sampling_agrees': no certified box has a sampled point "
             f"(corners + {args.samples} uniform) with margin <= 0, and every falsified box's witness is confirmed "
             "by a forward pass. 'edges_exactline': exactline's verdict (c/f/u) on each edge of the box from the "
             "unmutated input; 'edges_agree': a certified box has every edge certified, and bab on each edge "
             "(limit min(timeout, 20) s) answers as exactline (or unknown). delta is the fraction of every part's "
             "default strength. "
             f"Summary: {summary}.")
    columns = ["generator", "mutations", "k", "delta", "input", "verdict", "seconds", "domains", "stopped",
               "margin_lower", "sampled_min_margin", "sampling_agrees", "edges_exactline", "edges_agree"]
    write_report("bab", "bab on multi-mutation boxes of the zoo", columns, rows, notes, extra={"summary": summary})
    print(summary)


if __name__ == "__main__":
    main()
