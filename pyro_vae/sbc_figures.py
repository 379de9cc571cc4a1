"""The SBC rank histogram figure (Talts et al. 2018, Fig. 1): one panel per latent coordinate, the counts of the
ranks of z* in B bins, and the band that holds 99% of a uniform histogram's bin counts, Binomial(N, 1/B)'s 0.5%
and 99.5% quantiles (grey), around its expectation N / B (line)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from pyro_vae.atomic import write_bytes_atomic

#: File name in the run directory.
SBC_FIGURE = "sbc_ranks.png"
#: Panels drawn at most (the first coordinates; all of them are tested and in evaluation.json).
MAX_PANELS = 16


def uniform_band(num_simulations: int, num_bins: int, level: float = 0.99) -> tuple[float, float]:
    """(low, high): the central ``level`` interval of one bin's count when the ranks are uniform."""
    tail = (1 - level) / 2
    binomial = stats.binom(num_simulations, 1 / num_bins)
    return float(binomial.ppf(tail)), float(binomial.ppf(1 - tail))


def plot_sbc(summary: dict[str, Any], path: Path, caption: str | None = None) -> Path:
    """Draw the rank histograms of an SBC ``summary`` (``pyro_vae.sbc.SBCResult.summary()``, as evaluation.json
    keeps it; up to ``MAX_PANELS`` coordinates) and write them to ``path``."""
    names, flagged = list(summary["histogram"]), set(summary["flagged"])
    n, bins, draws = summary["num_simulations"], summary["num_bins"], summary["num_posterior_draws"]
    shown = min(len(names), MAX_PANELS)
    cols = min(4, shown)
    rows = math.ceil(shown / cols)
    fig = Figure(figsize=(3.0 * cols, 2.4 * rows + 0.6))
    FigureCanvasAgg(fig)
    low, high = uniform_band(n, bins)
    width = (draws + 1) / bins
    edges = np.arange(bins) * width
    # One height for every panel, so that the coordinates compare at a glance.
    top = 1.08 * max(high, *(max(summary["histogram"][name]) for name in names[:shown]))
    for j, name in enumerate(names[:shown]):
        ax = fig.add_subplot(rows, cols, j + 1)
        ax.set_ylim(0, top)
        ax.axhspan(low, high, color="0.85", zorder=0)
        ax.axhline(n / bins, color="0.5", lw=1, zorder=1)
        bad = name in flagged
        ax.bar(edges, summary["histogram"][name], width=width, align="edge", color="C3" if bad else "C0", zorder=2)
        ax.set_xlim(0, draws + 1)
        ax.set_title(f"{name}: p = {summary['p_values'][name]:.2g}" + (" (flagged)" if bad else ""), fontsize=9)
        ax.set_xlabel(f"rank of z* among {draws} draws of q(z|x*)", fontsize=8)
        ax.tick_params(labelsize=7)
    more = f"; first {shown} of {len(names)} coordinates" if shown < len(names) else ""
    title = (
        f"SBC (Talts et al. 2018): N = {n} simulations, {bins} bins{more}\n"
        "grey: 99% band of a uniform histogram; U: q too narrow, inverted U: too wide, slope: biased"
    )
    fig.suptitle(title + (f"\n{caption}" if caption else ""), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getbuffer())
    return path
