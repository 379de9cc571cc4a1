"""Figures of a trained VAE (``pyro-vae plot DIR``; also written at the end of ``pyro-vae train``).

- ``reconstructions.png``: test inputs and their reconstructions E[x | z = E_q[z|x]];
- ``samples.png``: decodings E[x|z] of z ~ p(z);
- ``curves.png``: training loss and test ELBO per epoch, and the test KL and reconstruction terms;
- ``latent.png``: the test set's encoder means coloured by label (a PCA projection when z_dim > 2);
- ``manifold.png`` (z_dim = 2): decodings over a regular grid spanning the region the test set's
  encoder means occupy (min to max on each axis, printed on the figure), as in the blog's figures;
- for z on the sphere S^1 or S^2 instead, ``latent_sphere.png`` and ``manifold_sphere.png``
  (``pyro_vae.sphere_figures``).

Matplotlib is used through ``matplotlib.figure.Figure`` with the Agg canvas, so no GUI backend is needed
and the global pyplot state is left alone; image tiles come from ``torchvision.utils.make_grid``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from pyro_vae.checkpoint import write_bytes_atomic
from pyro_vae.data import VAEData
from pyro_vae.elbo_terms import latent_means
from pyro_vae.pairs import as_pair
from pyro_vae.runs import load_run
from pyro_vae.sphere_figures import sphere_figures

#: Tiles per side of the decoded manifold grid.
GRID_SIZE = 15
#: Seed of the prior samples shown in samples.png.
SAMPLE_SEED = 0


def image_grid(images: Tensor, image_shape: tuple[int, int], nrow: int, padding: int = 1) -> np.ndarray:
    """Tile rows of ``images`` (n, H*W) into one greyscale array with ``make_grid`` (``nrow`` per row)."""
    # Imported here: torchvision takes seconds to import, and every CLI command imports this module.
    from torchvision.utils import make_grid

    h, w = image_shape
    tiles = images.detach().float().cpu().clamp(0, 1).reshape(-1, 1, h, w)
    grid = make_grid(tiles, nrow=nrow, padding=padding, pad_value=1.0)
    return grid[0].numpy()


def latent_ranges(means: Tensor) -> list[list[float]]:
    """[[min, max], ...] of each latent axis over the rows of ``means``."""
    return [[float(lo), float(hi)] for lo, hi in zip(means.min(0).values, means.max(0).values, strict=True)]


@torch.no_grad()
def manifold_grid(
    model: torch.nn.Module, ranges: Sequence[Sequence[float]], n: int = GRID_SIZE
) -> tuple[Tensor, Tensor]:
    """Decode an n x n grid of 2-D latents spanning ``ranges`` = [[z1_lo, z1_hi], [z2_lo, z2_hi]].

    Returns ``(images, z)``: ``images`` (n*n, D) the decoded means E[x|z] and ``z`` (n*n, 2), in row-major
    tile order: tile (r, c) has z1 = linspace(z1_lo, z1_hi, n)[c] and z2 = linspace(z2_hi, z2_lo, n)[r],
    so z2 grows upwards as on a plot's axis.
    """
    if len(ranges) != 2:
        raise ValueError(f"the manifold grid needs a 2-D latent space, got {len(ranges)} ranges")
    if n < 1:
        raise ValueError(f"the manifold grid needs n >= 1 tiles per side, got {n}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    z1 = torch.linspace(ranges[0][0], ranges[0][1], n)
    z2 = torch.linspace(ranges[1][1], ranges[1][0], n)
    rows, cols = torch.meshgrid(z2, z1, indexing="ij")
    z = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)
    return model.decode_mean(z.to(device)).cpu(), z


def plot_latent(ax: Axes, means: Tensor, labels: Tensor | None, title: str) -> None:
    """Scatter the encoder means (2-D directly; PCA to 2-D, labelled so, for z_dim > 2), coloured by label."""
    d = means.shape[1]
    if d == 1:
        xy = torch.cat([means, torch.zeros_like(means)], 1).numpy()
        xlabel, ylabel = "z1", ""
    elif d == 2:
        xy = means.numpy()
        xlabel, ylabel = "z1", "z2"
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(means.numpy())
        xy = pca.transform(means.numpy())
        share = pca.explained_variance_ratio_
        xlabel, ylabel = f"PC1 of E[z|x] ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%})"
        title = f"{title} (PCA projection of {d}-D latent means)"
    if labels is not None:
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10", s=8, vmin=-0.5, vmax=9.5)
        ax.figure.colorbar(points, ax=ax, label="label", ticks=sorted(set(labels.tolist()))[:10])
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def plot_manifold(
    ax: Axes,
    model: torch.nn.Module,
    ranges: Sequence[Sequence[float]],
    image_shape: tuple[int, int],
    n: int = GRID_SIZE,
) -> Tensor:
    """Show the decoded grid of ``manifold_grid`` on latent-valued axes; return its images (n*n, D)."""
    images, _ = manifold_grid(model, ranges, n)
    grid = image_grid(images, image_shape, nrow=n, padding=1)
    (lo1, hi1), (lo2, hi2) = ranges
    # Tile centres sit at the grid's z values, so the image reaches half a tile beyond them.
    h1, h2 = ((hi1 - lo1) / (2 * (n - 1)), (hi2 - lo2) / (2 * (n - 1))) if n > 1 else (0.5, 0.5)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, extent=(lo1 - h1, hi1 + h1, lo2 - h2, hi2 + h2), aspect="auto")
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(f"decoded grid: z1 in [{lo1:.2f}, {hi1:.2f}], z2 in [{lo2:.2f}, {hi2:.2f}]", fontsize=9)
    return images


def save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` as PNG and write it atomically (a full disk leaves no half-written image)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getbuffer())
    return path


@torch.no_grad()
def write_figures(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VAEData,
    metrics: Sequence[dict[str, Any]],
    out_dir: str | Path,
    grid_size: int = GRID_SIZE,
) -> list[Path]:
    """Write all figures of one run to ``out_dir``; return their paths (see the module docstring).

    For a model and guide of your own, only the figures whose methods they have (``pyro_vae.pairs``): without
    ``model.decode_mean`` no decoded images, without ``model.prior`` no samples.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, guide = as_pair(model, guide)
    decodes, samples = hasattr(model, "decode_mean"), hasattr(model, "decode_mean") and hasattr(model, "prior")
    written = []
    shape = data.image_shape
    k = min(10, data.test_x.shape[0])

    # Reconstructions of what the model sees (binarised when the likelihood is Bernoulli).
    seen = data.test_x_eval[:k]
    if decodes:
        written.append(_reconstructions(model, guide, data, seen, out))
    if samples:
        written.append(_samples(model, seen, shape, out))
    written += _curves_latent_manifold(model, guide, data, metrics, out, grid_size, decodes)
    return written


def _reconstructions(model: torch.nn.Module, guide: torch.nn.Module, data: VAEData, seen: Tensor, out: Path) -> Path:
    k, shape = seen.shape[0], data.image_shape
    recon = model.decode_mean(latent_means(guide, seen).to(seen.device))
    rows = [data.test_x[:k]] + ([seen] if data.binarize else []) + [recon]
    names = ["input"] + (["binarised"] if data.binarize else []) + ["reconstruction"]
    fig = Figure(figsize=(1.0 * k, 1.1 * len(rows)))
    ax = fig.add_subplot()
    ax.imshow(image_grid(torch.cat(rows), shape, nrow=k), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([(i + 0.5) * (shape[0] + 1) for i in range(len(rows))], names)
    ax.set_title("test images and reconstructions E[x | z = E_q[z|x]]", fontsize=9)
    return save(fig, out / "reconstructions.png")


def _samples(model: torch.nn.Module, seen: Tensor, shape: tuple[int, int], out: Path) -> Path:
    # Samples from the prior, with a fixed seed and without touching the caller's random stream.
    devices = [seen.device] if seen.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(SAMPLE_SEED)
        z = model.prior().sample((64,))
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.imshow(image_grid(model.decode_mean(z), shape, nrow=8), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title("E[x|z] for 64 samples z ~ p(z)", fontsize=9)
    return save(fig, out / "samples.png")


def _curves_latent_manifold(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VAEData,
    metrics: Sequence[dict[str, Any]],
    out: Path,
    grid_size: int,
    decodes: bool,
) -> list[Path]:
    written = []
    if metrics:
        epochs = [m["epoch"] for m in metrics]
        fig = Figure(figsize=(12, 3.4))
        a, b, c = fig.subplots(1, 3)
        a.plot(epochs, [m["train_loss"] for m in metrics], label="train loss (beta-weighted)")
        a.plot(epochs, [-m["test_elbo"] for m in metrics], label="-test ELBO (beta = 1)")
        a.set_ylabel("nats per example")
        a.legend(fontsize=8)
        b.plot(epochs, [m["test_kl"] for m in metrics], color="C2")
        b.set_ylabel("test KL(q || p), nats per example")
        c.plot(epochs, [m["test_recon"] for m in metrics], color="C3")
        c.set_ylabel("test -E_q log p(x|z), nats per example")
        for axis in (a, b, c):
            axis.set_xlabel("epoch")
        fig.tight_layout()
        written.append(save(fig, out / "curves.png"))

    means = latent_means(guide, data.test_x_eval)
    fig = Figure(figsize=(5.5, 4.5))
    plot_latent(fig.add_subplot(), means, data.test_y, "test set: encoder means E_q[z|x]")
    written.append(save(fig, out / "latent.png"))

    on_sphere = decodes and hasattr(guide, "posterior")  # a pair of your own may have no q(z|x) to ask
    spherical = sphere_figures(model, guide, data, out, grid_size) if on_sphere else []  # [] unless z is on S^1, S^2
    written += spherical
    if means.shape[1] == 2 and decodes and not spherical:
        fig = Figure(figsize=(6, 6))
        plot_manifold(fig.add_subplot(), model, latent_ranges(means), data.image_shape, grid_size)
        written.append(save(fig, out / "manifold.png"))
    return written


def plot_run(out_dir: str | Path, device: str = "cpu") -> list[Path]:
    """Load the run in ``out_dir`` (``pyro_vae.runs.load_run``) and write its figures there."""
    run = load_run(out_dir, device=device)
    return write_figures(run.model, run.guide, run.data, run.metrics, run.out_dir)
