"""GCert's Table 4 on the zoo: how precisely a segment in latent space pins down the images it reaches.

For rotation and translation segments of the zoo samples, the exact per-pixel range of G over the segment
(from ExactLine's pieces: G is affine on each, so every pixel's extremes sit at breakpoints) beside the
per-pixel range that interval arithmetic gives for G over the same segment: mean and median widths.

    python benchmarks/input_precision.py [--samples 20]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _report import write_report
from torch import nn

from gcert import zoo
from gcert.bounds import Box, forward_boxes
from gcert.data import load_inputs
from gcert.lowering import lower
from gcert.pieces import propagate, start
from gcert.plugins import PluginSettings
from gcert.runner import Context, RunConfig

MUTATIONS = {"rotate": 10.0, "translate-x": 1.0, "translate-y": 1.0, "scale": 10.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_inputs(zoo.samples_path(zoo.default_network()), args.samples)
    rows = []
    for mutation, delta in MUTATIONS.items():
        ctx = Context(RunConfig(mutations=(mutation,), certifiers=("exactline",), data=data, deltas=(delta,),
                                plugins=PluginSettings(autoload=False)))
        exact_w, interval_w, pieces = [], [], []
        for task in ctx.tasks():
            problem, _ = ctx.problem(task)
            composed = problem.composed()
            image_of_t = nn.Sequential(composed.embed, composed.generator)  # t -> G(c0 + t (c1 - c0))
            lowered = lower(image_of_t, (1,))
            run = propagate(lowered, start(lowered, torch.zeros(1, 1), torch.ones(1, 1)))
            images = run.values[lowered.output].reshape(run.count, -1)
            exact_w.append((images.max(0).values - images.min(0).values).mean().item())
            box = forward_boxes(lowered, {-1: Box(torch.zeros(1, 1, dtype=torch.float64),
                                                  torch.ones(1, 1, dtype=torch.float64))})
            interval_w.append((box.hi - box.lo).reshape(-1).mean().item())
            pieces.append(run.count - 1)
        rows.append({"mutation": f"{mutation} {delta:g} {problem.meta['unit']}",
                     "exact width mean": statistics.mean(exact_w), "exact width median": statistics.median(exact_w),
                     "interval width mean": statistics.mean(interval_w),
                     "interval width median": statistics.median(interval_w),
                     "interval / exact": statistics.mean(interval_w) / max(statistics.mean(exact_w), 1e-12),
                     "pieces of G": statistics.mean(pieces)})
        print(rows[-1], flush=True)
    columns = ["mutation", "exact width mean", "exact width median", "interval width mean", "interval width median",
               "interval / exact", "pieces of G"]
    _, md = write_report("input_precision", "Per-pixel bounds of the generator over a mutation segment", columns,
                         rows, notes=f"Average over pixels, then mean/median over {len(data)} zoo samples, of the "
                         "width of each pixel's range (images in [0, 1]).")
    print(md.read_text())


if __name__ == "__main__":
    main()
