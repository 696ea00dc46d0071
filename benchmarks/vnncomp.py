"""VNN-COMP 2021 conformance: gcert's certifiers on the eran, mnistfc and verivital benchmarks.

Runs `gcert.runner.run` on every instance (an ONNX network and a VNN-LIB property), then compares each verdict
with the consensus of the tools that answered in VNN-COMP 2021. A certified instance whose consensus is
not_robust would be a soundness bug; the script exits 1 if it finds one.

    python benchmarks/vnncomp.py [--conformance DIR] [--certifiers interval,deeppoly] [--benchmarks eran,...]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from _report import write_report

from gcert.certificate import read_certificates
from gcert.data import conformance_dir
from gcert.plugins import PluginSettings
from gcert.runner import RunConfig, run

DEFAULT = conformance_dir()
# ERAN's counts from the issue, for the table (instances certified on eran / verivital / mnistfc).
ERAN_PUBLISHED = {"eran": 47, "verivital": 52, "mnistfc": 35}


def instances(root: Path, bench: str) -> list[tuple[Path, Path, float]]:
    folder = root / "vnncomp2021" / bench
    rows = []
    with (folder / f"{bench}_instances.csv").open() as fh:
        for onnx, prop, timeout in csv.reader(fh):
            base = folder / "nets" if (folder / "nets" / Path(onnx).name).exists() else folder
            rows.append((base / Path(onnx).name, folder / prop, float(timeout)))
    return rows


def consensus(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    out = {}
    with (root / "vnncomp2021" / "consensus.csv").open() as fh:
        for row in csv.DictReader(fh):
            out[(Path(row["onnx"]).name, Path(row["vnnlib"]).name)] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conformance", type=Path, default=Path(os.environ.get("GCERT_CONFORMANCE", DEFAULT)))
    ap.add_argument("--certifiers", default="interval,deeppoly")
    ap.add_argument("--benchmarks", default="eran,mnistfc,verivital")
    ap.add_argument("--limit", type=int, default=None, help="instances per benchmark")
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/results/vnncomp"))
    ap.add_argument("--name", default="vnncomp", help="report name (benchmarks/results/NAME.json and .md)")
    args = ap.parse_args()
    certifiers = tuple(args.certifiers.split(","))
    votes = consensus(args.conformance)
    rows, unsound = [], []
    args.workdir.mkdir(parents=True, exist_ok=True)
    for bench in args.benchmarks.split(","):
        todo = instances(args.conformance, bench)[: args.limit]
        by_net: dict[Path, list[Path]] = defaultdict(list)
        for net, prop, _ in todo:
            by_net[net].append(prop)
        stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for net, props in by_net.items():
            out = args.workdir / f"{bench}-{net.stem}.jsonl"
            config = RunConfig(mutations=(), certifiers=certifiers, model=str(net), vnnlib=tuple(map(str, props)),
                               plugins=PluginSettings.from_env())
            start = time.perf_counter()
            run(config, out, workers=None, progress=True)
            print(f"{bench} {net.name}: {len(props)} properties in {time.perf_counter() - start:.1f} s", flush=True)
            for cert in read_certificates(out):
                vote = votes.get((net.name, Path(cert.input).name), {}).get("majority", "unknown")
                s = stats[cert.certifier]
                s["instances"] += 1
                s[cert.verdict] += 1
                s["seconds"] += cert.seconds
                s["consensus robust"] += vote == "robust"
                if cert.verdict == "certified" and vote == "not_robust":
                    unsound.append(f"{bench} {net.name} {cert.input} by {cert.certifier}")
                    s["certified but not_robust"] += 1
                if cert.verdict == "falsified" and vote == "robust":
                    s["falsified but robust"] += 1
        for name, s in stats.items():
            rows.append({"benchmark": bench, "certifier": name, "instances": int(s["instances"]),
                         "consensus robust": int(s["consensus robust"]), "certified": int(s["certified"]),
                         "falsified": int(s["falsified"]), "unknown": int(s["unknown"]),
                         "certified but not_robust": int(s["certified but not_robust"]),
                         "falsified but robust": int(s["falsified but robust"]),
                         "s per instance": s["seconds"] / max(s["instances"], 1),
                         "ERAN (published)": ERAN_PUBLISHED.get(bench, "")})
    columns = ["benchmark", "certifier", "instances", "consensus robust", "certified", "falsified", "unknown",
               "certified but not_robust", "falsified but robust", "s per instance", "ERAN (published)"]
    json_path, md_path = write_report(
        args.name, "VNN-COMP 2021 conformance", columns, rows,
        notes="Each instance runs through gcert.runner.run (ONNX + VNN-LIB). 'certified but not_robust' must be 0.",
        extra={"unsound": unsound})
    print(md_path.read_text())
    return 1 if unsound else 0


if __name__ == "__main__":
    sys.exit(main())
