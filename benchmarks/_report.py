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
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


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
              f"{m['cpus']} CPUs ({m['threads']} threads)._"]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
