"""How strongly to regulate: the digits generator trained with several continuity weights (and with
Eq. 14's printed sign), each measured for continuity C, collapse and generation quality.

    python benchmarks/regulation.py [--steps N] [--out DIR]

Regulation buys smoothness; too much of it (or the printed sign of Eq. 14) buys it by giving up
generation, which shows as collapsed pairs and lost reconstruction and diversity.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch
from _report import write_report
from gcert_zoo import measure
from gcert_zoo.recipes import GENERATOR_RECIPES, generator_entry, train_generator
from torch import nn

from gcert.generators import continuity_loss


def printed_eq14(generator: nn.Module, z0: torch.Tensor, zT: torch.Tensor,
                 rng: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 14 exactly as printed: ``|| lam G(zT) - G(zt) - (1 - lam) G(z0) ||`` (see continuity_loss)."""
    lam = torch.rand(z0.shape[0], generator=rng).unsqueeze(1)
    zt = z0 + lam * (zT - z0)
    g0, gt, gT = generator(z0), generator(zt), generator(zT)
    lam = lam.reshape(-1, 1, 1, 1)
    return (lam * gT - gt - (1 - lam) * g0).flatten(1).norm(dim=1).mean()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    base = GENERATOR_RECIPES["digits-geometric"]
    runs: list[tuple[str, float, Any]] = [
        ("Eq. 14 (straight segments)", 0.0, continuity_loss),
        ("Eq. 14 (straight segments)", base.continuity, continuity_loss),
        ("Eq. 14 (straight segments)", 1.0, continuity_loss),
        ("Eq. 14 (straight segments)", 5.0, continuity_loss),
        ("Eq. 14 as printed", 1.0, printed_eq14),
    ]
    rows = []
    for label, weight, term in runs:
        recipe = dataclasses.replace(base, continuity=weight)
        gen, enc, seconds = train_generator(recipe, args.steps, regulariser=term)
        figures = measure.generator_figures(generator_entry(recipe), gen, enc)
        cont = figures["continuity"]
        rows.append({
            "term": label, "weight": weight, "C": cont["c"], "C (scale-free)": cont["c_scaled"],
            "collapsed pairs": f"{figures['prior_collapse_share']:.1%}", "reconstruction RMSE":
            figures["reconstruction_rmse"], "diversity": figures["diversity"],
            "rotate calibration error (deg at 10)": figures["mutations"]["rotate"]["abs_error_mean"],
            "seconds": round(seconds),
        })
        print(rows[-1], flush=True)
    write_report("regulation", "Continuity weight against generation quality (digits generator)",
                 list(rows[0]), rows, out=args.out, notes=(
                     f"The digits recipe ({base.name}) with {args.steps} steps per run, only the continuity term "
                     f"changed; the shipped generator uses weight {base.continuity:g} and {base.steps} steps. "
                     "'collapsed pairs': random latent pairs from the prior whose images are identical in 8 bits; "
                     "diversity: mean pairwise distance of generated images over that of held-out real ones."))


if __name__ == "__main__":
    main()
