"""GCert's Table 7, on the zoo: the share of driving scenes whose steering provably stays within tau degrees
under foggy and rainy mutations of small, medium and heavy strength (0.2, 0.5, 0.8).

Runs the zoo's stylized generators composed with the zoo's steering regressors (trained on clear scenes, and
with weather augmentation) on the zoo's sample scenes, with each certifier: certified / falsified / unknown
per strength, seconds per input, affine pieces per segment (exactline).

    python benchmarks/weather.py [--samples 20] [--certifiers interval,exactline,deeppoly] [--samples-for deeppoly=2]
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

import torch
from _report import write_report

from gcert import zoo
from gcert.plugins import PluginSettings
from gcert.runner import Context, RunConfig

LEVELS = (0.2, 0.5, 0.8)
STYLES = ("foggy", "rainy")
MODELS = ("driving-steer", "driving-steer-weather")
PAPER = {"rainy": (97.5, 80.3, 70.9), "foggy": (96.2, 75.2, 61.7)}  # ERAN on real dashcam data (Table 7)


def run_one(style: str, model: str, certifier: str, samples: int, options: dict[str, str]) -> dict[str, object]:
    config = RunConfig(mutations=(style,), certifiers=(certifier,), model=model, deltas=LEVELS, limit=samples,
                       options={certifier: options} if options else {}, plugins=PluginSettings(autoload=False))
    ctx = Context(config)
    verdicts: dict[float, Counter[str]] = {d: Counter() for d in LEVELS}
    seconds, pieces, errors = [], [], 0
    for task in ctx.tasks():
        cert = ctx.solve(task)
        verdicts[task.delta][cert.verdict] += 1
        seconds.append(cert.seconds)
        errors += cert.error is not None
        if certifier == "exactline" and cert.pieces is not None:
            pieces.append(cert.pieces)
    n = len(ctx.data)
    row: dict[str, object] = {"style": style, "regressor": model, "certifier": certifier, "scenes": n}
    for level in LEVELS:
        v = verdicts[level]
        row[f"certified {level:g}"] = 100.0 * v["certified"] / n
        row[f"falsified {level:g}"] = v["falsified"]
    row["s per input"] = statistics.mean(seconds)
    row["pieces per segment"] = statistics.mean(pieces) if pieces else ""
    row["errors"] = errors
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--certifiers", default="interval,exactline,deeppoly")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--styles", default=",".join(STYLES))
    ap.add_argument("--name", default="weather", help="report name under benchmarks/results/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--option", action="append", default=[], help="certifier.key=value")
    ap.add_argument("--samples-for", action="append", default=[], metavar="CERTIFIER=N",
                    help="fewer scenes for a slow certifier, e.g. deeppoly=2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    options: dict[str, dict[str, str]] = {}
    for item in args.option:
        key, _, value = item.partition("=")
        cert, _, name = key.partition(".")
        options.setdefault(cert, {})[name] = value
    fewer = {k: int(v) for k, _, v in (item.partition("=") for item in args.samples_for)}
    rows = []
    styles = args.styles.split(",")
    for style in styles:
        for model in args.models.split(","):
            for certifier in args.certifiers.split(","):
                samples = fewer.get(certifier, args.samples)
                row = run_one(style, model, certifier, samples, options.get(certifier, {}))
                rows.append(row)
                print(row, flush=True)
    columns = ["style", "regressor", "certifier", "scenes"] + [f"certified {d:g}" for d in LEVELS] + \
        [f"falsified {d:g}" for d in LEVELS] + ["s per input", "pieces per segment", "errors"]
    tau = {m: zoo.entry(m)["default_tau"] for m in args.models.split(",")}
    generators = {s: zoo.entry(f"driving-{s}")["metrics"] for s in styles}
    paper = "; ".join(f"{s} {'/'.join(f'{p:g}' for p in v)} %" for s, v in PAPER.items())
    notes = (f"Certified share (%) of the first {args.samples} zoo sample scenes (column 'scenes' where fewer): "
             "|steer(G(a, t delta)) - steer(a)| <= "
             f"tau for every t in [0, 1], tau = {tau} degrees (the zoo default), at strength delta = 0.2 / 0.5 / 0.8 "
             f"(small / medium / heavy). exactline is exact (falsified = a real violation on the segment); "
             f"interval and deeppoly are sound and bisect t (unknown = neither proved nor refuted). "
             f"The paper's Table 7 (ERAN on real dashcam images): {paper}. {args.threads} thread(s); seconds "
             "include building the problem.")
    _, md = write_report(args.name, "Stylized mutations (Table 7 shape): certified steering under fog and rain",
                         columns, rows, notes=notes, extra={"generators": generators, "tau": tau})
    print(md.read_text())


if __name__ == "__main__":
    main()
