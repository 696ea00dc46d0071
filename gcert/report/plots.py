"""The report's plots (matplotlib, the ``report`` extra): the margin along t, and tolerance histograms."""

from __future__ import annotations

import os
from typing import Any

from gcert.certificate import Certificate
from gcert.errors import GcertError

INSTALL_HINT = "pip install 'gcert[report]'"
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a one-line :class:`GcertError` saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise GcertError(f"the HTML report draws its plots with matplotlib, which is not installed: {INSTALL_HINT}"
                         ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def margin_plot(certs: list[Certificate], path: str | os.PathLike[str], lo: float = 0.0, hi: float = 1.0) -> bool:
    """Plot what the records of one task know about the margin along t; False (nothing written) when nothing.

    exactline's ``margin_curve`` (the margin at every breakpoint), each sound certifier's lower bound per split
    piece (``piece_bounds``; its overall ``margin_lower`` when it did not split), sampled points, and every
    witness, with the line margin = 0.
    """
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5.6, 2.8), dpi=80)
    drawn = False
    focus: list[float] = []  # values the y axis must show (curves, samples, witnesses); bounds may fall below
    for i, c in enumerate(sorted(certs, key=lambda c: c.certifier)):
        colour = COLOURS[i % len(COLOURS)]
        curve = c.details.get("margin_curve")
        if isinstance(curve, dict) and curve.get("t"):
            label = f"{c.certifier}: exact margin" + ("" if curve.get("exact") else " (subsampled)")
            ax.plot(curve["t"], curve["margin"], color=colour, lw=1.3, label=label)
            focus += [float(v) for v in curve["margin"] if isinstance(v, int | float)]
            drawn = True
        pieces = c.details.get("piece_bounds")
        if isinstance(pieces, list) and pieces:
            for k, (a, b, m) in enumerate(pieces):
                if isinstance(m, int | float):
                    ax.hlines(m, a, b, color=colour, lw=2, label=f"{c.certifier}: lower bound per piece"
                              if k == 0 else None)
            drawn = True
        elif c.guarantee in ("sound", "complete") and isinstance(c.margin_lower, int | float) and curve is None:
            ax.hlines(c.margin_lower, lo, hi, color=colour, lw=2, ls="--",
                      label=f"{c.certifier}: lower bound {c.margin_lower:.3g}")
            drawn = True
        samples = c.details.get("samples")
        if isinstance(samples, dict) and samples.get("t"):
            ax.scatter(samples["t"], samples["margin"], s=8, color=colour, label=f"{c.certifier}: sampled")
            focus += [float(v) for v in samples["margin"] if isinstance(v, int | float)]
            drawn = True
        if c.witness is not None and c.witness.t:
            ax.axvline(c.witness.t[0], color="red", lw=1, ls=":")
            ax.scatter([c.witness.t[0]], [c.witness.margin], marker="x", s=40, color="red", zorder=5,
                       label=f"{c.certifier}: witness")
            focus.append(float(c.witness.margin))
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.axhline(0.0, color="black", lw=0.8)
    if focus:  # a loose bound far below must not flatten the exact curve; its value is in the legend
        bottom, top = min([*focus, 0.0]), max([*focus, 0.0])
        pad = 0.15 * (top - bottom or 1.0)
        low = min(ax.get_ylim()[0], bottom - pad)
        ax.set_ylim(max(low, bottom - 2 * (top - bottom + pad)), top + pad)
    ax.set_xlim(lo - 0.02 * (hi - lo or 1.0), hi + 0.02 * (hi - lo or 1.0))  # a witness at an end stays visible
    ax.set_xlabel("t along the segment")
    ax.set_ylabel("spec margin")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
    return True


def tolerance_histogram(values: list[float], path: str | os.PathLike[str], title: str, unit: str) -> None:
    """A histogram of the largest certified strength per input."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5.0, 2.6), dpi=80)
    ax.hist(values, bins=min(20, max(5, len(values))), color="tab:blue", edgecolor="white")
    ax.set_xlabel(f"largest certified strength ({unit})" if unit else "largest certified strength")
    ax.set_ylabel("inputs")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
