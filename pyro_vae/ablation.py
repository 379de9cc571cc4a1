"""The blog's experiment ("Why we need KL divergence loss in VAEs"): the same 2-D VAE trained with the
KL term (beta = 1) and without it (beta = 0), same data, seed and epochs.

The blog's claim: with the KL term the encoder means fill a compact region about N(0, I) (std about 1
per axis) and the decoded grid changes smoothly; without it, nothing ties the latent scale down, so the
means spread several times wider, with uneven scales per axis and gaps between the classes.

``kl_ablation`` writes OUT/with_kl/ and OUT/without_kl/ (each a full training run with its figures),
OUT/kl_ablation.png (latent scatter and decoded grid side by side, with axis ranges) and
OUT/summary.json:

    {"with_kl": {"latent_mean": [..], "latent_std": [..], "latent_range": [[lo, hi], ..],
                 "test_elbo": x, "test_kl": x, "test_recon_error": x,
                 "inside_prior_95": x, "gap_fraction": x, "grid_step_ratio": x, "largest_step_ratio": x},
     "without_kl": {...}}

latent statistics are over the test set's encoder means E_q[z|x]; ``test_elbo`` is the true ELBO
(beta = 1) per test example in nats for both runs, so the two are comparable, and ``test_kl`` its KL term;
``test_recon_error`` is the blog's reconstruction loss, sum over pixels of (x - x_hat)^2 averaged over test
examples, with x_hat = E[x | z = E_q[z|x]] and x the test set as the model sees it (binarised once, with a
fixed seed). The blog's two properties, measured (tutorial 02 explains them):

- completeness: ``inside_prior_95``, the share of test codes inside the prior's central 95% region
  ||z||^2 <= chi^2_2(0.95) = -2 log 0.05 (0.95 for codes distributed as N(0, I)); ``gap_fraction``, the share of
  the points of a 30 x 30 grid over the occupied box that lie inside the codes' convex hull but further than 3
  typical code spacings (the median nearest-neighbour distance between codes) from every code: holes in the
  region the data occupy, whatever its scale;
- continuity: ``grid_step_ratio``, the mean pixel-space distance between the decodings of adjacent points of the
  15 x 15 decoded grid over the occupied box, divided by the mean distance between two of its decodings at
  random (small: neighbours look alike); ``largest_step_ratio``, the largest such step on the same scale (a jump).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from pyro_vae.atomic import atomic_write_text
from pyro_vae.config import TrainConfig, split_options
from pyro_vae.data import VAEData
from pyro_vae.elbo_terms import latent_means, reconstruction_error
from pyro_vae.errors import UserError
from pyro_vae.figures import (
    GRID_SIZE,
    add_caption,
    latent_ranges,
    manifold_grid,
    plot_latent,
    plot_manifold,
    run_caption,
    save,
)
from pyro_vae.run_dir import CHECKPOINT, RunDir
from pyro_vae.training import TrainResult, train

#: Defaults chosen so that on digits the claim shows clearly and both runs finish in seconds on 2 cores
#: (100 epochs of 6 steps each). One CPU thread: for a model this small per-operation overhead dominates,
#: and with two threads OpenMP's busy-waiting makes a step up to 10x slower when the other core is busy.
ABLATION_DEFAULTS = {"hidden": (128,), "epochs": 100, "batch_size": 256, "lr": 1e-2, "threads": 1}

RUNS = {"with_kl": 1.0, "without_kl": 0.0}

#: chi^2 with 2 degrees of freedom, 95% quantile: P(||z||^2 <= c) = 1 - exp(-c / 2) for z ~ N(0, I_2).
CHI2_2_95 = -2 * math.log(0.05)
#: Codes used for the gap measure (plenty for it; keeps the pairwise distances small for 10,000 MNIST codes).
GAP_CODES = 2000


def inside_prior_95(codes: Tensor) -> float:
    """The share of 2-D ``codes`` inside N(0, I)'s central 95% region, ||z||^2 <= chi^2_2(0.95)."""
    return float(((codes**2).sum(1) <= CHI2_2_95).float().mean())


def gap_fraction(codes: Tensor, ranges: Sequence[Sequence[float]], n: int = 30, factor: float = 3.0) -> float:
    """The share of the points of an n x n grid over ``ranges`` that lie inside the convex hull of ``codes`` but
    further than ``factor`` typical code spacings (median nearest-neighbour distance) from every code."""
    from scipy.spatial import Delaunay

    codes = codes[:GAP_CODES].double()
    spacing = torch.cdist(codes, codes).fill_diagonal_(float("inf")).min(1).values.median()
    grid = torch.cartesian_prod(*[torch.linspace(lo, hi, n, dtype=torch.float64) for lo, hi in ranges])
    inside = torch.from_numpy(Delaunay(codes.numpy()).find_simplex(grid.numpy()) >= 0)
    if not inside.any():
        return 0.0
    nearest = torch.cdist(grid[inside], codes).min(1).values
    return float((nearest > factor * spacing).double().mean())


@torch.no_grad()
def grid_steps(model: torch.nn.Module, ranges: Sequence[Sequence[float]], n: int = GRID_SIZE) -> tuple[Tensor, Tensor]:
    """(pixel-space distances between the decodings of horizontally and vertically adjacent points of the n x n
    decoded grid over ``ranges``, distances between all pairs of its decodings)."""
    images, _ = manifold_grid(model, ranges, n)
    tiles = images.reshape(n, n, -1).double()
    steps = torch.cat(
        [(tiles[:, 1:] - tiles[:, :-1]).norm(dim=-1).reshape(-1), (tiles[1:] - tiles[:-1]).norm(dim=-1).reshape(-1)]
    )
    return steps, torch.pdist(tiles.reshape(n * n, -1))


def continuity(model: torch.nn.Module, ranges: Sequence[Sequence[float]], n: int = GRID_SIZE) -> tuple[float, float]:
    """(mean, largest) step between adjacent grid decodings, each over the mean distance of a random pair."""
    steps, pairs = grid_steps(model, ranges, n)
    scale = float(pairs.mean())
    return float(steps.mean()) / scale, float(steps.max()) / scale


def default_config(data: VAEData | None = None, **options: Any) -> TrainConfig:
    """The ablation's base config (for ``data``, else with the data set's shape left to ``train``): z_dim = 2
    and ``ABLATION_DEFAULTS`` (hidden (128,), 100 epochs, batch 256, Adam lr 1e-2, 1 CPU thread), then
    ``options`` (VAEConfig and TrainConfig fields by name); the rest are TrainConfig defaults (seed 0,
    meanfield ELBO, N(0, I) prior, Bernoulli likelihood)."""
    config = TrainConfig.from_options(*split_options({"z_dim": 2, **ABLATION_DEFAULTS, **options}))
    return config if data is None else config.with_data_shape(data)


def latent_summary(result: TrainResult) -> dict[str, Any]:
    """The summary.json entry of one run (see the module docstring)."""
    means = latent_means(result.guide, result.data.test_x_eval)
    ranges = latent_ranges(means)
    step, largest = continuity(result.model, ranges)
    return {
        "latent_mean": means.mean(0).tolist(),
        "latent_std": means.std(0).tolist(),
        "latent_range": ranges,
        "test_elbo": result.metrics[-1]["test_elbo"],
        "test_kl": result.metrics[-1]["test_kl"],
        "test_recon_error": reconstruction_error(result.model, result.guide, result.data.test_x_eval),
        "inside_prior_95": inside_prior_95(means),
        "gap_fraction": gap_fraction(means, ranges),
        "grid_step_ratio": step,
        "largest_step_ratio": largest,
    }


def kl_ablation(
    out_dir: str | Path,
    base: TrainConfig | None = None,
    *,
    data: VAEData | None = None,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train ``base`` (default: ``default_config`` on digits) with beta = 1 and beta = 0 into OUT/with_kl and
    OUT/without_kl; write the figure and summary.json to ``out_dir``; return the summary.

    The rules of ``train``: runs already under ``out_dir`` are an error unless ``resume`` (each goes on up to
    ``base.epochs``, from its own checkpoint; one not started yet starts) or ``overwrite`` (both are replaced).
    ``out_dir`` is locked for the whole experiment (``pyro_vae.run_dir.RunDir.lock``)."""
    base = default_config() if base is None else base
    if base.model.z_dim != 2:
        raise UserError(f"the KL ablation compares 2-D latent spaces; got z_dim = {base.model.z_dim}")
    if resume and overwrite:
        raise UserError("--resume continues the runs in --out and --overwrite replaces them; give one of them")
    out = Path(out_dir)
    with RunDir.lock(out, "pyro-vae kl-ablation"):
        existing = [name for name in RUNS if (out / name / CHECKPOINT).exists()]
        if existing and not (resume or overwrite):
            raise UserError(
                f"{out} already holds the experiment's runs ({', '.join(existing)}); pass --resume to continue them, "
                "--overwrite to replace them, or choose another --out"
            )
        data = base.load_data() if data is None else data
        results: dict[str, TrainResult] = {}
        for name, beta in RUNS.items():
            config = dataclasses.replace(base, beta=beta, kl_warmup=base.kl_warmup if beta > 0 else 0)
            again = resume and name in existing
            results[name] = train(config, out / name, progress=progress, data=data, resume=again, overwrite=overwrite)
        summary = {name: latent_summary(result) for name, result in results.items()}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_ablation_figure(results, summary, out / "kl_ablation.png")
    return summary


def write_ablation_figure(results: dict[str, TrainResult], summary: dict[str, dict[str, Any]], path: Path) -> Path:
    """Latent scatter and decoded grid over the data's latent region, with and without KL, side by side."""
    fig = Figure(figsize=(12, 11))
    axes = fig.subplots(2, 2)
    titles = {"with_kl": "with KL (beta = 1)", "without_kl": "without KL (beta = 0)"}
    for row, (name, result) in zip(axes, results.items(), strict=True):
        stats = summary[name]
        means = latent_means(result.guide, result.data.test_x_eval)
        std = ", ".join(f"{s:.2f}" for s in stats["latent_std"])
        plot_latent(row[0], means, result.data.test_y, f"{titles[name]}: test encoder means, std ({std})")
        plot_manifold(row[1], result.model, stats["latent_range"], result.data.display_shape)
        row[1].set_title(f"{titles[name]}: " + row[1].get_title(), fontsize=9)
    first = results["with_kl"]
    fig.suptitle(
        f"{Path(first.data.name).name}: 2-D VAE with and without the KL term "
        f"(test ELBO {summary['with_kl']['test_elbo']:.1f} vs {summary['without_kl']['test_elbo']:.1f} nats)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    epoch = first.metrics[-1]["epoch"] if first.metrics else 0
    add_caption(fig, run_caption(first.config, epoch, beta="beta 1 (top) and 0 (bottom)"))
    return save(fig, path)


__all__ = [
    "ABLATION_DEFAULTS",
    "continuity",
    "default_config",
    "gap_fraction",
    "grid_steps",
    "inside_prior_95",
    "kl_ablation",
    "latent_summary",
]
