"""`gcert generator regulate` on a user's own images: scikit-learn's 8x8 digits (all 1,797) as the user's data,
through the command a user runs, for the plain kind at several continuity weights and the geometric kind; the
measured figures of each entry (held-out reconstruction, continuity C both sides, Jacobian rank) and the seconds.

    python benchmarks/regulate.py [--steps 2000] [--continuity 0,1,5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import write_report
from sklearn.datasets import load_digits


def _digits(folder: Path) -> Path:
    d = load_digits()
    path = folder / "digits.npz"
    np.savez(path, images=(d.images[:, None] / 16).astype(np.float32), labels=d.target)
    return path


def _regulate(data: Path, out: Path, args: list[str]) -> tuple[dict[str, Any], float]:
    command = [sys.executable, "-m", "gcert.cli", "generator", "regulate", "--data", str(data), "--out", str(out),
               *args]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "gcert-generator.json").read_text()), time.perf_counter() - start


def _row(kind: str, args: list[str], manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    f = manifest["figures"]
    rec, cont, rank = f["reconstruction"], f["continuity"], f["rank"]
    row = {
        "kind": kind, "options": " ".join(args), "held-out images": rec["images"],
        "RMS encoder": rec["encoder"]["rms_mean"], "RMS inverted": rec["inverted"]["rms_mean"],
        "RMS mean image": rec["baseline_mean_image"]["rms_mean"],
        "C between images": cont["between_images"]["c"], "C local": cont["local"]["c"],
        "collapse share": max(cont["between_images"]["collapse_share"], cont["local"]["collapse_share"]),
        "rank": f"{rank['min']}..{rank['max']} of {rank['latent']}", "seconds": round(seconds, 1),
    }
    for name, g in (f.get("geometry") or {}).items():  # drawn vs warped, and the strength the encoder reads back
        row[f"{name}: RMS to the warp (ignoring it)"] = f"{g['rms_mean']} ({g['unchanged_rms_mean']})"
        row[f"{name}: read back within"] = f"{g['factor_error_mean']} {g['unit']}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--continuity", default="0,1,5")
    opts = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _digits(Path(tmp))
        for weight in opts.continuity.split(","):
            args = ["--steps", str(opts.steps), "--continuity", weight]
            manifest, seconds = _regulate(data, Path(tmp) / f"plain-{weight}", args)
            rows.append(_row("plain", args, manifest, seconds))
            print(rows[-1], flush=True)
        args = ["--steps", str(opts.steps), "--kind", "geometric", "--mutations", "rotate:20,shift_x:1"]
        manifest, seconds = _regulate(data, Path(tmp) / "geometric", args)
        rows.append(_row("geometric", args, manifest, seconds))
        print(rows[-1], flush=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_report("regulate-digits", "gcert generator regulate on scikit-learn's digits", columns, rows,
                 notes=(f"All 1,797 8x8 digits as the user's images (90 % training, 10 % held out), latent 8, "
                        f"{opts.steps} steps, the other options at their defaults; one `gcert generator regulate` "
                        "process per row (seconds include start-up and the measurements). RMS: root-mean-square "
                        "pixel error on the held-out images, from the encoder alone, after inversion, and of the "
                        "mean image. C: the bi-Lipschitz constant measured both sides on pairs of encoded images "
                        "and on small steps from them. Produced by `python benchmarks/regulate.py`."))


if __name__ == "__main__":
    main()
