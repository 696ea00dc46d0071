"""Shared output of the benchmark scripts: one JSON file and one markdown table per benchmark.

Files go to ``benchmarks/results/NAME.json`` and ``NAME.md`` (or ``--out DIR``), with the machine described.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), **stamp()}


def stamp() -> dict[str, str]:
    """What the numbers were measured on: the git commit (``+dirty`` with uncommitted changes to tracked files)
    and the sha256 of the zoo manifest."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=30).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    try:
        from gcert import zoo

        manifest = hashlib.sha256((zoo.zoo_dir() / "manifest.json").read_bytes()).hexdigest()[:12]
    except Exception:  # noqa: BLE001 - a report is still worth writing without it
        manifest = "unknown"
    return {"commit": commit + ("+dirty" if dirty else ""), "zoo_manifest_sha256": manifest}


def write_report(name: str, title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]],
                 notes: str = "", out: Path | None = None, extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``rows`` (dicts keyed by ``columns``) as NAME.json and a markdown table NAME.md; return both paths."""
    folder = out or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "title": title, "machine": machine(), "columns": list(columns), "rows": list(rows),
               "notes": notes, **(extra or {})}
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# {title}", "", notes, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    m = payload["machine"]
    lines += ["", f"_{m['date']}, Python {m['python']}, torch {m['torch']}, "
              f"{m['cpus']} CPUs ({m['threads']} threads); commit {m['commit']}, zoo manifest "
              f"{m['zoo_manifest_sha256']}._"]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
