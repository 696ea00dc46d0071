"""VNN-COMP conformance: gcert's certifiers on VNN-COMP benchmarks, scored against the tools that competed.

Runs `gcert.runner.run` on every instance (an ONNX network and a VNN-LIB property), then compares each verdict
with the consensus of the tools that answered. A certified instance whose consensus is not_robust would be a
soundness bug; the script exits 1 if it finds one.

By default it reads the VNN-COMP 2021 material of ../shared/conformance (``vnncomp2021/<bench>/`` and its
``consensus.csv``) and writes benchmarks/results/NAME.json and .md:

    python benchmarks/vnncomp.py [--conformance DIR] [--certifiers interval,deeppoly] [--benchmarks eran,...]

Any year's benchmark and results repositories (github.com/ChristopherBrix/vnncomp2022_benchmarks,
vnncomp2023_benchmarks, ..., and the matching ``vnncomp20XX_results``) work too:

    python benchmarks/vnncomp.py --benchmark-dir vnncomp2023_benchmarks/benchmarks/acasxu \\
        --results-dir vnncomp2023_results --workdir /tmp/acasxu --out /tmp/acasxu-report

``--benchmark-dir`` (repeatable) is one benchmark folder: ``instances.csv`` (or ``<name>_instances.csv``, the
2021 name) with rows ``onnx/net.onnx,vnnlib/prop.vnnlib,timeout`` relative to the folder. Files may be stored
gzipped (``net.onnx.gz`` while instances.csv names ``net.onnx``, as the competition's repositories do); they
are decompressed under ``WORKDIR/unpacked/<bench>/``, never next to the user's files.

``--results-dir`` is a results repository: one folder per tool, each holding ``results.csv`` files
(``<tool>/<bench>/results.csv`` in 2022, ``<tool>/<year>_<bench>/results.csv`` from 2023 on, and an
aggregate ``<tool>/results.csv``), or one ``<tool>.csv`` per tool in ``results_csv/`` (2021); all have
header-less rows ``benchmark,onnx,vnnlib,prepare_time,result,run_time``. Instances are matched by the file
names of their network and property (without ``.gz``).
An instance's consensus is the majority of the tools that answered robust or not_robust (see `tool_verdict`);
a tie, or no such answer, is unknown. The table gets one column per tool: ``robust/not_robust`` answers it gave
on the instances run.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from _report import write_report

from gcert.certificate import read_certificates
from gcert.data import conformance_dir
from gcert.errors import GcertError
from gcert.plugins import PluginSettings
from gcert.runner import RunConfig, run

DEFAULT = conformance_dir()
# ERAN's counts from the issue, for the table (instances certified on eran / verivital / mnistfc).
ERAN_PUBLISHED = {"eran": 47, "verivital": 52, "mnistfc": 35}

Instance = tuple[Path, Path, float]  # onnx, vnnlib (both readable, decompressed if need be), timeout in s
Key = tuple[str, str]  # (onnx file name, vnnlib file name), without any .gz: how instances are matched


def tool_verdict(result: str) -> str:
    """What a VNN-COMP result string says about robustness: ``robust``, ``not_robust`` or ``unknown``.

    VNN-LIB properties state the *unsafe* set, so ``unsat`` / ``holds`` (no input reaches it) is robust and
    ``sat`` / ``violated`` (a counterexample exists) is not_robust. Everything else the competition writes
    (``timeout``, ``unknown``, ``error``, ``error_exit_code_N``, ``run_instance_timeout``,
    ``prepare_instance_error_...``, ``no_result_in_file``, an empty field) says nothing, so it is unknown.
    Case and surrounding blanks are ignored, as the competition's scoring does.
    """
    r = result.strip().lower()
    if r in ("unsat", "holds"):
        return "robust"
    if r in ("sat", "violated"):
        return "not_robust"
    return "unknown"


def key_of(onnx: str | Path, vnnlib: str | Path) -> Key:
    return _plain_name(onnx), _plain_name(vnnlib)


def _plain_name(path: str | Path) -> str:
    name = Path(str(path).strip()).name
    return name[:-3] if name.endswith(".gz") else name


# ---------------------------------------------------------------------------------------------------- instances

def instances_csv(folder: Path) -> Path:
    """The instance list of a benchmark folder: ``instances.csv`` (2022 on) or ``<name>_instances.csv`` (2021)."""
    for path in (folder / "instances.csv", folder / f"{folder.name}_instances.csv"):
        if path.is_file():
            return path
    found = sorted(folder.glob("*instances.csv"))
    if len(found) == 1:
        return found[0]
    raise SystemExit(f"vnncomp: {folder} has no instances.csv (nor {folder.name}_instances.csv)"
                     + (f"; it has {', '.join(p.name for p in found)}" if found else ""))


def bench_name(folder: Path) -> str:
    csv_path = instances_csv(folder)
    return csv_path.name[: -len("_instances.csv")] if csv_path.name != "instances.csv" else folder.resolve().name


def read_instances(folder: Path, unpack: Path) -> list[Instance]:
    """The rows of a benchmark folder's instance list, with files found (and gunzipped into ``unpack``)."""
    rows = []
    with instances_csv(folder).open(newline="") as fh:
        for row in csv.reader(fh):
            row = [c.strip() for c in row]
            if len(row) < 2 or not row[0] or row[0].startswith("#") or row[0].lower() == "onnx":
                continue
            timeout = float(row[2]) if len(row) > 2 and row[2] else math.nan
            rows.append((_locate(folder, row[0], unpack), _locate(folder, row[1], unpack), timeout))
    return rows


def _locate(folder: Path, rel: str, unpack: Path) -> Path:
    """The file ``rel`` of an instance row: as named, else with or without ``.gz``, else the one file of that
    name in the folder (2021 benchmarks moved networks into ``nets/``). A gzipped one is decompressed."""
    rel = rel.removeprefix("./")
    plain = rel[:-3] if rel.endswith(".gz") else rel
    for candidate in (folder / rel, folder / plain, folder / f"{plain}.gz"):
        if candidate.is_file():
            return _gunzip(candidate, folder, unpack)
    name = Path(plain).name
    found = sorted({*folder.rglob(name), *folder.rglob(f"{name}.gz")})
    if len(found) == 1:
        return _gunzip(found[0], folder, unpack)
    raise SystemExit(f"vnncomp: {folder / plain} not found (nor .gz)"
                     + (f"; {len(found)} files of that name in {folder}" if found else ""))


def _gunzip(path: Path, folder: Path, unpack: Path) -> Path:
    if path.suffix != ".gz":
        return path
    try:
        rel = path.resolve().relative_to(folder.resolve())
    except ValueError:
        rel = Path(path.name)
    target = unpack / rel.with_suffix("")
    if not target.is_file() or target.stat().st_mtime < path.stat().st_mtime:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + f".part{os.getpid()}")
        with gzip.open(path, "rb") as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        part.replace(target)
    return target


def instances_2021(root: Path, bench: str, unpack: Path) -> list[Instance]:
    return read_instances(root / "vnncomp2021" / bench, unpack / bench)


# ------------------------------------------------------------------------------------------------------- votes

def consensus_2021(root: Path) -> dict[Key, str]:
    """The majority verdict per instance from ../shared/conformance/vnncomp2021/consensus.csv."""
    with (root / "vnncomp2021" / "consensus.csv").open() as fh:
        return {key_of(r["onnx"], r["vnnlib"]): r["majority"] for r in csv.DictReader(fh)}


def tool_results(results_dir: Path, wanted: set[Key], bench_names: Sequence[str] = ()) -> dict[str, dict[Key, str]]:
    """Per tool of a results repository, the `tool_verdict` on each wanted instance.

    A tool is a folder (not hidden, not SCORING) holding ``results.csv`` files at any depth (2022 on), or a
    ``<tool>.csv`` file in the folder or in its ``results_csv/`` (2021). When several of a tool's files name
    one instance, a row of a benchmark in ``bench_names`` (by its benchmark column or the folder
    ``[<year>_]<bench>`` it sits in) beats one that is not, and a deeper file beats the aggregate one."""
    if not results_dir.is_dir():
        raise SystemExit(f"vnncomp: results folder {results_dir} does not exist")
    flat = results_dir / "results_csv" if (results_dir / "results_csv").is_dir() else results_dir
    sources = {p.stem: [p] for p in sorted(flat.glob("*.csv"))}
    for tool_dir in sorted(p for p in results_dir.iterdir() if p.is_dir() and p != flat):
        if not tool_dir.name.startswith(".") and not tool_dir.name.upper().startswith("SCORING"):
            sources.setdefault(tool_dir.name, []).extend(sorted(tool_dir.rglob("results.csv")))
    names = set(bench_names)
    tools: dict[str, dict[Key, str]] = {}
    for tool, paths in sources.items():
        best: dict[Key, tuple[tuple[bool, int], str]] = {}
        for path in paths:
            depth = len(path.relative_to(results_dir).parts)
            folder_bench = re.sub(r"^\d{4}_", "", path.parent.name)
            with path.open(newline="") as fh:
                for row in csv.reader(fh):
                    if len(row) < 5 or row[0].strip().lower() == "benchmark":
                        continue
                    key = key_of(row[1], row[2])
                    if key not in wanted:
                        continue
                    rank = (row[0].strip() in names or folder_bench in names, depth)
                    if key not in best or rank >= best[key][0]:
                        best[key] = (rank, tool_verdict(row[4]))
        if best:
            tools[tool] = {k: v for k, (_, v) in best.items()}
    if not tools:
        raise SystemExit(f"vnncomp: no tool in {results_dir} has a results row for these instances")
    return tools


def majority(verdicts: Sequence[str]) -> str:
    """robust or not_robust, whichever more tools answered; unknown on a tie or when none answered either."""
    n = Counter(verdicts)
    if n["robust"] > n["not_robust"]:
        return "robust"
    if n["not_robust"] > n["robust"]:
        return "not_robust"
    return "unknown"


# -------------------------------------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conformance", type=Path, default=Path(os.environ.get("GCERT_CONFORMANCE", DEFAULT)))
    ap.add_argument("--certifiers", default="interval,deeppoly")
    ap.add_argument("--benchmarks", default="eran,mnistfc,verivital",
                    help="2021 benchmarks of --conformance (ignored with --benchmark-dir)")
    ap.add_argument("--benchmark-dir", type=Path, action="append", default=[],
                    help="a VNN-COMP benchmark folder of any year (repeatable); replaces --benchmarks")
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="a VNN-COMP results repository (one folder per tool); replaces consensus.csv")
    ap.add_argument("--limit", type=int, default=None, help="instances per benchmark")
    ap.add_argument("--workers", type=int, default=None, help="gcert.runner.run workers (default: automatic)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per instance (gcert's --timeout)")
    ap.add_argument("-o", "--option", action="append", default=[],
                    help="certifier option certifier.key=value (repeatable), as gcert run -o")
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/results/vnncomp"))
    ap.add_argument("--name", default="vnncomp", help="report name (benchmarks/results/NAME.json and .md)")
    ap.add_argument("--out", type=Path, default=None, help="folder for NAME.json and .md (default benchmarks/results)")
    args = ap.parse_args(argv)
    certifiers = tuple(args.certifiers.split(","))
    options: dict[str, dict[str, str]] = {}
    for item in args.option:
        key, _, value = item.partition("=")
        cert, _, key = key.rpartition(".")
        options.setdefault(cert or certifiers[0], {})[key] = value
    refused: list[str] = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    unpack = args.workdir / "unpacked"

    if args.benchmark_dir:
        benches = [(bench_name(d), read_instances(d, unpack / bench_name(d))) for d in args.benchmark_dir]
    else:
        benches = [(b, instances_2021(args.conformance, b, unpack)) for b in args.benchmarks.split(",")]
    benches = [(b, rows[: args.limit]) for b, rows in benches]

    tools: dict[str, dict[Key, str]] = {}
    conflicts: list[str] = []
    if args.results_dir is not None:
        wanted = {key_of(net, prop) for _, rows in benches for net, prop, _ in rows}
        tools = tool_results(args.results_dir, wanted, [b for b, _ in benches])
        votes = {}
        for key in wanted:
            said = [answers[key] for answers in tools.values() if key in answers]
            votes[key] = majority(said)
            if "robust" in said and "not_robust" in said:
                conflicts.append(f"{key[0]} {key[1]}: " + ", ".join(
                    f"{t} {a[key]}" for t, a in tools.items() if a.get(key) in ("robust", "not_robust")))
    elif args.benchmark_dir:
        votes = {}  # no tool answered: every consensus is unknown
    else:
        votes = consensus_2021(args.conformance)

    columns = ["benchmark", "certifier", "instances", "consensus robust", "certified", "falsified", "unknown",
               "certified but not_robust", "falsified but robust", "s per instance"]
    notes = "Each instance runs through gcert.runner.run (ONNX + VNN-LIB). 'certified but not_robust' must be 0."
    if args.benchmark_dir or tools:
        columns.insert(4, "consensus not_robust")
        columns += list(tools)
        title = "VNN-COMP conformance: " + ", ".join(b for b, _ in benches)
        if tools:
            notes += (f" Consensus: the majority of the {len(tools)} tools of {args.results_dir.name} that answered"
                      " holds/unsat (robust) or violated/sat (not_robust); a tie is unknown. Each tool column:"
                      " robust/not_robust answers it gave on the instances run.")
        else:
            notes += " No --results-dir: every consensus is unknown."
    else:
        columns.append("ERAN (published)")
        title = "VNN-COMP 2021 conformance"
        if args.limit is not None:
            notes += (f" Only the first {args.limit} instances of each benchmark ran; ERAN's published count is over"
                      " the whole benchmark.")
    if args.timeout is not None:
        notes += f" Time limit {args.timeout:g} s per instance (gcert's --timeout)."
    command = " ".join(map(str, sys.argv[1:] if argv is None else argv))
    notes += f" Command: python benchmarks/vnncomp.py {command}."
    rows, unsound = [], []
    for bench, todo in benches:
        by_net: dict[Path, list[Path]] = defaultdict(list)
        for net, prop, _ in todo:
            by_net[net].append(prop)
        stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for net, props in by_net.items():
            out = args.workdir / f"{bench}-{net.stem}.jsonl"
            config = RunConfig(mutations=(), certifiers=certifiers, model=str(net), vnnlib=tuple(map(str, props)),
                               plugins=PluginSettings.from_env(), timeout=args.timeout, options=options)
            start = time.perf_counter()
            try:
                run(config, out, workers=args.workers, progress=True)
            except GcertError as exc:  # a certifier refuses the network (e.g. an op it does not read)
                print(f"{bench} {net.name}: refused: {exc}", flush=True)
                refused.append(f"{bench} {net.name}: {exc}")
                for name in certifiers:
                    stats[name]["instances"] += len(props)
                    stats[name]["unknown"] += len(props)
                    stats[name]["refused"] += len(props)
                continue
            print(f"{bench} {net.name}: {len(props)} properties in {time.perf_counter() - start:.1f} s", flush=True)
            names = {prop.name for prop in props}
            for cert in read_certificates(out):
                if Path(cert.input).name not in names or cert.certifier not in certifiers:
                    continue  # a record of an earlier run in this workdir (another --limit or --certifiers)
                vote = votes.get(key_of(net, cert.input), "unknown")
                s = stats[cert.certifier]
                s["instances"] += 1
                s[cert.verdict] += 1
                s["seconds"] += cert.seconds
                s["consensus robust"] += vote == "robust"
                s["consensus not_robust"] += vote == "not_robust"
                if cert.verdict == "certified" and vote == "not_robust":
                    unsound.append(f"{bench} {net.name} {cert.input} by {cert.certifier}")
                    s["certified but not_robust"] += 1
                if cert.verdict == "falsified" and vote == "robust":
                    s["falsified but robust"] += 1
        keys = [key_of(net, prop) for net, prop, _ in todo]
        per_tool = {t: "{}/{}".format(*(sum(answers.get(k) == v for k in keys) for v in ("robust", "not_robust")))
                    for t, answers in tools.items()}
        for name, s in stats.items():
            row = {"benchmark": bench, "certifier": name, "instances": int(s["instances"]),
                   "consensus robust": int(s["consensus robust"]),
                   "consensus not_robust": int(s["consensus not_robust"]), "certified": int(s["certified"]),
                   "falsified": int(s["falsified"]), "unknown": int(s["unknown"]),
                   "certified but not_robust": int(s["certified but not_robust"]),
                   "falsified but robust": int(s["falsified but robust"]),
                   "s per instance": s["seconds"] / max(s["instances"], 1),
                   "ERAN (published)": ERAN_PUBLISHED.get(bench, ""), **per_tool}
            rows.append({c: row[c] for c in columns})

    extra = {"unsound": unsound, "refused": refused, "timeout": args.timeout, "options": options}
    if tools:
        extra |= {"results_dir": str(args.results_dir), "tools": list(tools), "conflicts": conflicts}
    json_path, md_path = write_report(args.name, title, columns, rows, notes=notes, out=args.out, extra=extra)
    print(md_path.read_text())
    return 1 if unsound else 0


if __name__ == "__main__":
    sys.exit(main())
