"""Figures of a trained VAE (``pyro-vae plot DIR``; also written at the end of ``pyro-vae train``).

- ``reconstructions.png``: test inputs and their reconstructions E[x | z = E_q[z|x]];
- ``samples.png``: decodings E[x|z] of z ~ p(z);
- ``curves.png``: training loss and test ELBO per epoch, and the test KL and reconstruction terms;
- ``latent.png``: the test set's encoder means coloured by label (a PCA projection when z_dim > 2);
- ``manifold.png`` (z_dim = 2): decodings over a regular grid spanning the region the test set's
  encoder means occupy (min to max on each axis, printed on the figure), as in the blog's figures;
- for a discrete guide (bernoulli, categorical) instead: ``codes.png``, the decodings of every value z can take when
  there are at most ``MAX_CODES`` (all 2^J binary codes; all C^D one-hot codes), as a continuous grid over
  {0,1}^2 would decode points the decoder never sees; ``latent.png`` then shows the encoder's probabilities
  E_q[z|x] = q(z_j = 1 | x), which do vary continuously, and reconstructions decode the most probable code;
- for z on the sphere S^1 or S^2 instead, ``latent_sphere.png`` and ``manifold_sphere.png``
  (``pyro_vae.sphere_figures``).

Every figure says what made it: a caption with the data set, prior, likelihood, guide and networks, estimator,
beta and epoch (``run_caption``). Scatters of more than ``MAX_POINTS`` codes show a random subset of them (the axes
still span all of them, and the title says how many are shown), so that 10,000 MNIST codes do not overplot into
one blot. Decoded grids keep their tiles square whatever the two latent ranges are (the axes are scaled instead);
log-scaled axes get plain-number tick labels (``readable_log_axis``).

Matplotlib is used through ``matplotlib.figure.Figure`` with the Agg canvas, so no GUI backend is needed
and the global pyplot state is left alone; image tiles come from ``torchvision.utils.make_grid``.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from torch import Tensor, nn

from pyro_vae.atomic import write_bytes_atomic
from pyro_vae.class_samples import CLASS_SAMPLE_SEED, class_samples
from pyro_vae.config import TrainConfig
from pyro_vae.data import VAEData
from pyro_vae.elbo_terms import is_discrete, latent_codes, latent_means
from pyro_vae.pairs import as_pair
from pyro_vae.run_dir import BEST_FIGURES, load_run
from pyro_vae.sphere_figures import sphere_figures

#: Tiles per side of the decoded manifold grid.
GRID_SIZE = 15
#: Seed of the prior samples shown in samples.png.
SAMPLE_SEED = 0
#: At most this many codes are drawn in a latent scatter (a random subset, with a fixed seed, beyond it).
MAX_POINTS = 2000
#: codes.png shows every code of a discrete latent space of at most this many values (2^8 binary codes).
MAX_CODES = 256


def image_grid(images: Tensor, image_shape: Sequence[int], nrow: int, padding: int = 1) -> np.ndarray:
    """Tile ``images`` ``(n, *x_shape)`` into one array with ``make_grid`` (``nrow`` per row): (H', W') for grey
    images, (H', W', 3) for RGB. ``image_shape`` is (H, W) or (C, H, W); rows of H * W values are reshaped."""
    # Imported here: torchvision takes seconds to import, and every CLI command imports this module.
    from torchvision.utils import make_grid

    c, h, w = (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)
    tiles = images.detach().float().cpu().clamp(0, 1).reshape(-1, c, h, w)
    grid = make_grid(tiles, nrow=nrow, padding=padding, pad_value=1.0)
    return grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()


def show_images(ax: Axes, grid: np.ndarray, **kwargs: Any) -> Any:
    """``ax.imshow`` of an ``image_grid``: grey on [0, 1] for grey images, as they are for RGB."""
    grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if grid.ndim == 2 else {}
    return ax.imshow(grid, **grey, **kwargs)


def run_caption(config: TrainConfig, epoch: int | None = None, beta: str | None = None) -> str:
    """What made a figure, in one line: data set and its shape, prior, likelihood, guide and networks,
    estimator (and particles), beta (and warm-up), epoch. ``beta`` replaces the beta text (two runs in one figure)."""
    m = config.model
    data = Path(config.dataset).name or config.dataset
    shape = "x".join(str(s) for s in m.x_shape) if m.x_shape else "?"
    estimator = config.elbo + (f" (K = {config.particles})" if config.particles > 1 else "")
    if beta is None:
        beta = f"beta {config.beta:g}" + (f" (warm-up {config.kl_warmup} epochs)" if config.kl_warmup else "")
        if config.kl_schedule == "cyclical":
            beta = f"beta {config.beta:g} (cyclical, {config.kl_cycles} cycles, ratio {config.kl_ratio:g})"
    parts = [
        f"{data} ({shape})",
        f"prior {m.prior}",
        f"likelihood {m.likelihood}",
        f"guide {m.guide} ({m.encoder} encoder, {m.decoder} decoder, z_dim {m.z_dim})",
        estimator,
        beta,
    ]
    structure = getattr(m, "model", "vae")
    if structure != "vae":  # its prior and guide are the structure's own (pyro_vae.registry.MODELS)
        parts[1:4] = [f"model {structure}", f"likelihood {m.likelihood}", f"{m.encoder} encoder, {m.decoder} decoder"]
        parts.insert(4, f"z_dim {m.z_dim}")
        if structure == "m2":
            parts[-2] = "TraceEnum_ELBO"
    if epoch is not None:
        parts.append(f"epoch {epoch}")
    return " · ".join(parts)


def add_caption(fig: Figure, caption: str | None) -> None:
    """Put ``caption`` above the figure in small grey type (kept by ``save``'s tight bounding box)."""
    if caption:
        # Wrapped by hand at about 18 characters per inch of 7.5 pt type (matplotlib's wrap=True confuses the tight
        # bounding box): the caption never runs wider than the figure.
        width = max(40, int(fig.get_figwidth() * 18))
        text = "\n".join(textwrap.wrap(caption, width, break_on_hyphens=False))
        fig.text(0.5, 1.0, text, ha="center", va="bottom", fontsize=7.5, color="0.35", linespacing=1.3)


def latent_ranges(means: Tensor) -> list[list[float]]:
    """[[min, max], ...] of each latent axis over the rows of ``means``."""
    return [[float(lo), float(hi)] for lo, hi in zip(means.min(0).values, means.max(0).values, strict=True)]


@torch.no_grad()
def manifold_grid(
    model: torch.nn.Module, ranges: Sequence[Sequence[float]], n: int = GRID_SIZE
) -> tuple[Tensor, Tensor]:
    """Decode an n x n grid of 2-D latents spanning ``ranges`` = [[z1_lo, z1_hi], [z2_lo, z2_hi]].

    Returns ``(images, z)``: ``images`` ``(n*n, *x_shape)`` the decoded means E[x|z] and ``z`` (n*n, 2), in row-major
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


def _projection(means: Tensor, title: str) -> tuple[np.ndarray, str, str, str]:
    """(2-D points, x label, y label, title) of the codes: as they are for z_dim <= 2, PCA for more."""
    d = means.shape[1]
    if d == 1:
        return torch.cat([means, torch.zeros_like(means)], 1).numpy(), "z1", "", title
    if d == 2:
        return means.numpy(), "z1", "z2", title
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(means.numpy())
    share = pca.explained_variance_ratio_
    xlabel, ylabel = f"PC1 of E[z|x] ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%})"
    return pca.transform(means.numpy()), xlabel, ylabel, f"{title} (PCA projection of {d}-D latent means)"


def plot_latent(
    ax: Axes, means: Tensor, labels: Tensor | None, title: str, max_points: int = MAX_POINTS, seed: int = 0
) -> None:
    """Scatter the encoder means (2-D directly; PCA to 2-D, labelled so, for z_dim > 2), coloured by label.

    Beyond ``max_points`` codes a random subset of ``max_points`` is drawn (fixed ``seed``), smaller and
    translucent, while the axis limits still span every code; the title says how many are shown.
    """
    xy, xlabel, ylabel, title = _projection(means, title)
    n = xy.shape[0]
    shown = np.arange(n)
    if n > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        title = f"{title}\n({max_points:,} of {n:,} codes shown, at random; the axes span all)"
    style = {"s": 8 if len(shown) <= 500 else 4, "alpha": 1.0 if len(shown) <= 500 else 0.6, "linewidths": 0}
    if labels is not None:
        lab = labels.numpy()
        points = ax.scatter(xy[shown, 0], xy[shown, 1], c=lab[shown], cmap="tab10", vmin=-0.5, vmax=9.5, **style)
        ax.figure.colorbar(points, ax=ax, label="label", ticks=sorted(set(lab.tolist()))[:10])
    else:
        ax.scatter(xy[shown, 0], xy[shown, 1], **style)
    for axis, values in ((ax.set_xlim, xy[:, 0]), (ax.set_ylim, xy[:, 1])):
        lo, hi = float(values.min()), float(values.max())
        pad = 0.04 * (hi - lo) if hi > lo else 0.5
        axis(lo - pad, hi + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def plot_manifold(
    ax: Axes,
    model: torch.nn.Module,
    ranges: Sequence[Sequence[float]],
    image_shape: Sequence[int],
    n: int = GRID_SIZE,
) -> Tensor:
    """Show the decoded grid of ``manifold_grid`` on latent-valued axes, with square tiles whatever the two ranges
    (each axis is scaled so); return its images ``(n*n, *x_shape)``. ``image_shape``: (H, W) or (C, H, W)."""
    images, _ = manifold_grid(model, ranges, n)
    grid = image_grid(images, image_shape, nrow=n, padding=1)
    (lo1, hi1), (lo2, hi2) = ranges
    # Tile centres sit at the grid's z values, so the image reaches half a tile beyond them.
    h1, h2 = ((hi1 - lo1) / (2 * (n - 1)), (hi2 - lo2) / (2 * (n - 1))) if n > 1 else (0.5, 0.5)
    h1, h2 = h1 or 0.5, h2 or 0.5  # a range of zero width (a collapsed axis) still gets a visible tile
    extent = (lo1 - h1, hi1 + h1, lo2 - h2, hi2 + h2)
    # aspect = height of one y unit / width of one x unit: this makes the image as tall, relative to its width,
    # as its pixels are, so each tile keeps the shape of the images.
    aspect = (extent[1] - extent[0]) / (extent[3] - extent[2]) * grid.shape[0] / grid.shape[1]
    show_images(ax, grid, extent=extent, aspect=aspect)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(f"decoded grid: z1 in [{lo1:.2f}, {hi1:.2f}], z2 in [{lo2:.2f}, {hi2:.2f}]", fontsize=9)
    return images


def readable_log_axis(ax: Axes, which: str = "y") -> None:
    """Give a log-scaled axis plain-number tick labels (120, 150, 200 rather than none or 10^2): the first of the
    mantissa sets {1}, {1, 2, 5}, {1, ..., 9} that puts at least 3 ticks inside the current limits."""
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    lo, hi = min(lo, hi), max(lo, hi)
    if not (lo > 0 and math.isfinite(hi)):
        return
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [
            m * 10.0**e
            for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo <= m * 10.0**e <= hi
        ]
        if len(ticks) >= 3:
            break
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_if_wide(ax: Axes, values: Sequence[float], factor: float) -> None:
    """Log-scale the y axis when all ``values`` are positive and span more than ``factor`` (a warm-up peak)."""
    if values and min(values) > 0 and max(values) / min(values) > factor:
        ax.set_yscale("log")
        ax.autoscale_view()
        readable_log_axis(ax)


def plot_curves(fig: Figure, metrics: Sequence[dict[str, Any]]) -> None:
    """Training loss and -test ELBO, the test KL and the test reconstruction term per epoch, side by side."""
    epochs = [m["epoch"] for m in metrics]
    tested = [m for m in metrics if "test_elbo" in m]  # every eval_every epochs
    test_epochs = [m["epoch"] for m in tested]
    a, b, c = fig.subplots(1, 3)
    train_loss, neg_elbo = [m["train_loss"] for m in metrics], [-m["test_elbo"] for m in tested]
    a.plot(epochs, train_loss, label="train loss (beta-weighted)")
    a.plot(test_epochs, neg_elbo, label="-test ELBO (beta = 1)")
    a.set_ylabel("nats per example")
    a.legend(fontsize=8)
    b.plot(test_epochs, [m["test_kl"] for m in tested], color="C2")
    b.set_ylabel("test KL(q || p), nats per example")
    c.plot(test_epochs, [m["test_recon"] for m in tested], color="C3")
    c.set_ylabel("test -E_q log p(x|z), nats per example")
    for axis in (a, b, c):
        axis.set_xlabel("epoch")
    _log_if_wide(a, train_loss + neg_elbo, 3.0)
    _log_if_wide(b, [m["test_kl"] for m in tested], 10.0)


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
    config: TrainConfig | None = None,
) -> list[Path]:
    """Write all figures of one run to ``out_dir``; return their paths (see the module docstring). With
    ``config`` each figure is captioned with what made it (``run_caption``, at the last epoch of ``metrics``).

    For a model and guide of your own, only the figures whose methods they have (``pyro_vae.pairs``): without
    ``model.decode_mean`` no decoded images, without ``model.prior`` no samples.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    caption = run_caption(config, metrics[-1]["epoch"] if metrics else 0) if config is not None else None
    if getattr(model, "labelled_input", False):  # a conditional or M2 model: its curves and a row per class
        written = [write_class_samples(model, data.display_shape, out, caption)]
        return written + _curves(metrics, out, caption)
    model, guide = as_pair(model, guide)
    decodes, samples = hasattr(model, "decode_mean"), hasattr(model, "decode_mean") and hasattr(model, "prior")
    written = []
    k = min(10, data.test_x.shape[0])

    # Reconstructions of what the model sees (binarised when the likelihood is Bernoulli).
    seen = data.test_x_eval[:k]
    if decodes:
        written.append(_reconstructions(model, guide, data, seen, out, caption))
    if samples:
        written.append(_samples(model, seen, data.display_shape, out, caption))
    written += _curves_latent_manifold(model, guide, data, metrics, out, grid_size, decodes, caption)
    return written


def _reconstructions(
    model: torch.nn.Module, guide: torch.nn.Module, data: VAEData, seen: Tensor, out: Path, caption: str | None
) -> Path:
    k, shape = seen.shape[0], data.display_shape
    recon = model.decode_mean(latent_codes(guide, seen).to(seen.device))
    rows = [data.test_x[:k]] + ([seen] if data.binarize else []) + [recon]
    names = ["input"] + (["binarised"] if data.binarize else []) + ["reconstruction"]
    fig = Figure(figsize=(max(6.0, 1.0 * k), 1.1 * len(rows) + 0.4))
    ax = fig.add_subplot()
    show_images(ax, image_grid(torch.cat(rows), shape, nrow=k))
    ax.set_xticks([])
    ax.set_yticks([(i + 0.5) * (shape[1] + 1) for i in range(len(rows))], names)
    code = "the most probable z" if _discrete_guide(guide, seen) else "E_q[z|x]"
    ax.set_title(f"test images and reconstructions E[x | z = {code}]", fontsize=9)
    add_caption(fig, caption)
    return save(fig, out / "reconstructions.png")


def _samples(model: torch.nn.Module, seen: Tensor, shape: Sequence[int], out: Path, caption: str | None) -> Path:
    # Samples from the prior, with a fixed seed and without touching the caller's random stream.
    devices = [seen.device] if seen.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(SAMPLE_SEED)
        # A hierarchical model draws z_1 through its layers (``sample_code``); its ``prior`` is p(z_L) only.
        z = model.sample_code(64) if hasattr(model, "sample_code") else model.prior().sample((64,))
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    show_images(ax, image_grid(model.decode_mean(z), shape, nrow=8))
    ax.axis("off")
    ax.set_title("E[x|z] for 64 samples z ~ p(z)", fontsize=9)
    add_caption(fig, caption)
    return save(fig, out / "samples.png")


def class_grid(model: nn.Module, per_class: int, display_shape: Sequence[int]) -> np.ndarray:
    """One row of ``per_class`` samples per class, as one image array (H', W') or (H', W', 3)."""
    rows = [class_samples(model, k, per_class, seed=CLASS_SAMPLE_SEED + k) for k in range(model.classes)]
    return image_grid(torch.cat(rows), display_shape, nrow=per_class)


def write_class_samples(
    model: nn.Module, display_shape: Sequence[int], out: Path, caption: str | None = None, per_class: int = 10
) -> Path:
    """``out/class_samples.png``: row k holds ``per_class`` samples of class k."""
    fig = Figure(figsize=(per_class * 0.6 + 0.8, model.classes * 0.6 + 0.8))
    ax = fig.add_subplot()
    show_images(ax, class_grid(model, per_class, display_shape))
    ax.set_xticks([])
    size = display_shape[-2] + 1  # image_grid pads each image by one pixel
    ax.set_yticks([1 + size * k + size / 2 for k in range(model.classes)], [str(k) for k in range(model.classes)])
    ax.set_ylabel("class y")
    ax.set_title("E[x|z,y], z ~ p(z|y): one row per class", fontsize=9)
    add_caption(fig, caption)
    return save(fig, out / "class_samples.png")


def write_one_class(
    model: nn.Module, label: int, count: int, display_shape: Sequence[int], out: Path, caption: str | None = None
) -> Path:
    """``out/class_LABEL_samples.png``: ``count`` samples of class ``label`` (``class_samples``), in rows of ten."""
    images = class_samples(model, label, count)
    nrow = min(count, 10)
    fig = Figure(figsize=(nrow * 0.6 + 0.6, math.ceil(count / nrow) * 0.6 + 0.8))
    ax = fig.add_subplot()
    show_images(ax, image_grid(images, display_shape, nrow=nrow))
    ax.axis("off")
    ax.set_title(f"E[x|z,y={label}], z ~ p(z|y={label})", fontsize=9)
    add_caption(fig, caption)
    return save(fig, out / f"class_{label}_samples.png")


def _curves(metrics: Sequence[dict[str, Any]], out: Path, caption: str | None) -> list[Path]:
    if not metrics:
        return []
    fig = Figure(figsize=(12, 3.4))
    plot_curves(fig, metrics)
    fig.tight_layout()
    add_caption(fig, caption)
    return [save(fig, out / "curves.png")]


def _curves_latent_manifold(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: VAEData,
    metrics: Sequence[dict[str, Any]],
    out: Path,
    grid_size: int,
    decodes: bool,
    caption: str | None,
) -> list[Path]:
    written = _curves(metrics, out, caption)
    means = latent_means(guide, data.test_x_eval)
    discrete = _discrete_guide(guide, data.test_x_eval[:1])
    fig = Figure(figsize=(5.5, 4.8))
    what = "encoder probabilities E_q[z|x] = q(z_j = 1 | x)" if discrete else "encoder means E_q[z|x]"
    plot_latent(fig.add_subplot(), means, data.test_y, f"test set: {what}")
    add_caption(fig, caption)
    written.append(save(fig, out / "latent.png"))

    on_sphere = decodes and hasattr(guide, "posterior")  # a pair of your own may have no q(z|x) to ask
    spherical = sphere_figures(model, guide, data, out, grid_size) if on_sphere else []  # [] unless z is on S^1, S^2
    written += spherical
    if discrete:
        codes = _all_codes(guide, data.test_x_eval[:1]) if decodes else None
        if codes is None and decodes:  # said, so that a missing figure is not a surprise
            warnings.warn(
                f"codes.png not drawn: the discrete latent space has more than {MAX_CODES} codes; samples.png shows "
                "decoded samples of the prior",
                stacklevel=2,
            )
        if codes is not None:
            fig = Figure(figsize=(6, 6))
            plot_codes(fig.add_subplot(), model, codes, data.display_shape)
            add_caption(fig, caption)
            written.append(save(fig, out / "codes.png"))
    elif means.shape[1] == 2 and decodes and not spherical:
        fig = Figure(figsize=(6, 6))
        plot_manifold(fig.add_subplot(), model, latent_ranges(means), data.display_shape, grid_size)
        add_caption(fig, caption)
        written.append(save(fig, out / "manifold.png"))
    return written


def _discrete_guide(guide: torch.nn.Module, x: Tensor) -> bool:
    return hasattr(guide, "posterior") and is_discrete(guide.posterior(x))


def _all_codes(guide: torch.nn.Module, x: Tensor) -> Tensor | None:
    """Every value of q(z|x)'s discrete support, (M, z_dim), when there are at most ``MAX_CODES``; else None."""
    q = guide.posterior(x[:1])
    base = q.base_dist if isinstance(q, torch.distributions.Independent) else q
    if isinstance(base, torch.distributions.Bernoulli):
        j = q.event_shape[-1]
        if 2**j > MAX_CODES:
            return None
        return torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * j).reshape(-1, j).to(x)
    try:
        support = q.enumerate_support(expand=False)
    except NotImplementedError:
        return None
    return support.reshape(support.shape[0], -1) if support.shape[0] <= MAX_CODES else None


def plot_codes(ax: Axes, model: torch.nn.Module, codes: Tensor, image_shape: Sequence[int]) -> Tensor:
    """Show E[x|z] for each code z (rows of ``codes``, in their order: the first coordinate varies slowest) in a
    square grid; return the decoded images."""
    images = model.decode_mean(codes)
    nrow = math.ceil(math.sqrt(codes.shape[0]))
    show_images(ax, image_grid(images.cpu(), image_shape, nrow=nrow, padding=1))
    ax.axis("off")
    ax.set_title(
        f"E[x|z] for all {codes.shape[0]} codes z of the discrete latent space, row by row (first coordinate slowest)",
        fontsize=9,
    )
    return images


def plot_run(out_dir: str | Path, device: str = "cpu", which: str = "last") -> list[Path]:
    """Load the run in ``out_dir`` (``pyro_vae.run_dir.load_run``) and write its figures there; ``which="best"``:
    from ``best.pt``, into ``out_dir/best/`` (beside the last checkpoint's figures, not over them)."""
    run = load_run(out_dir, device=device, which=which)
    out = run.out_dir if which == "last" else run.out_dir / BEST_FIGURES
    return write_figures(run.model, run.guide, run.data, run.metrics, out, config=run.config)
