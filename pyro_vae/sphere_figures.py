"""Figures for latents on the unit sphere (a guide whose q(z|x) has support ``constraints.sphere``, such as
``power-spherical``), written by ``pyro_vae.figures.write_figures`` in place of the Euclidean decoded grid:

- z on S^2 (z_dim = 3): ``latent_sphere.png``, the test set's mean directions E_q[z|x] / |E_q[z|x]| (for the power
  spherical, mu(x)) coloured by label on the two hemispheres, z3 >= 0 and z3 < 0, each projected orthographically
  onto the (z1, z2) plane (a point near the equator sits near the rim of both discs; areas near the rim are
  foreshortened); ``manifold_sphere.png``, decodings E[x|z] over an n x n grid of each disc, tile (r, c) decoding
  z = (u_c, v_r, +-sqrt(1 - u_c^2 - v_r^2)), with u = linspace(-1, 1, n) and v = linspace(1, -1, n) (tiles outside
  the disc are blank);
- z on S^1 (z_dim = 2): the same two names, the mean angles atan2(z2, z1) against the label, and decodings at
  n equally spaced angles.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pyro.distributions import constraints
from torch import Tensor

from pyro_vae.data import VAEData
from pyro_vae.elbo_terms import latent_means

LATENT = "latent_sphere.png"
MANIFOLD = "manifold_sphere.png"


def on_sphere(guide: torch.nn.Module, x: Tensor) -> bool:
    """Whether the guide's q(z|x) lives on the unit sphere (its support is Pyro's ``constraints.sphere``)."""
    return isinstance(guide.posterior(x[:1]).support, type(constraints.sphere))


def hemisphere_grid(n: int) -> tuple[Tensor, Tensor]:
    """(z, inside): z of shape (2, n * n, 3), the upper (z3 >= 0) then the lower hemisphere's tile centres in
    row-major order (see the module docstring), and ``inside`` (n * n,), True for the tiles on the unit disc."""
    if n < 2:
        raise ValueError(f"the hemisphere grid needs n >= 2 tiles per side, got {n}")
    u = torch.linspace(-1.0, 1.0, n)
    v = torch.linspace(1.0, -1.0, n)
    rows, cols = torch.meshgrid(v, u, indexing="ij")
    plane = torch.stack([cols.reshape(-1), rows.reshape(-1)], -1)
    inside = (plane**2).sum(-1) <= 1.0
    height = (1.0 - (plane**2).sum(-1)).clamp(min=0.0).sqrt()
    upper = torch.cat([plane, height[:, None]], -1)
    lower = torch.cat([plane, -height[:, None]], -1)
    return torch.stack([upper, lower]), inside


def circle_grid(n: int) -> Tensor:
    """n points (cos a, sin a) at the angles a = -pi + 2 pi k / n, k = 0..n-1."""
    angles = -math.pi + 2 * math.pi * torch.arange(n) / n
    return torch.stack([angles.cos(), angles.sin()], -1)


def _tiles(images: Tensor, image_shape: tuple[int, int], nrow: int) -> np.ndarray:
    from torchvision.utils import make_grid  # slow to import: only when a figure is drawn

    h, w = image_shape
    grid = make_grid(images.detach().float().cpu().clamp(0, 1).reshape(-1, 1, h, w), nrow=nrow, pad_value=1.0)
    return grid[0].numpy()


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _directions(guide: torch.nn.Module, x: Tensor) -> Tensor:
    means = latent_means(guide, x)
    return means / means.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def _write_s2(model: torch.nn.Module, guide: torch.nn.Module, data: VAEData, out: Path, n: int) -> list[Path]:
    z = _directions(guide, data.test_x_eval)
    labels = data.test_y
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    for ax, upper in zip(fig.subplots(1, 2), (True, False), strict=True):
        keep = z[:, 2] >= 0 if upper else z[:, 2] < 0
        colour = {"c": labels[keep].numpy(), "cmap": "tab10", "vmin": -0.5, "vmax": 9.5} if labels is not None else {}
        points = ax.scatter(z[keep, 0].numpy(), z[keep, 1].numpy(), s=6, **colour)
        ax.add_patch(_circle())
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", xlabel="z1", ylabel="z2")
        ax.set_title(
            f"{'upper' if upper else 'lower'} hemisphere, z3 {'>=' if upper else '<'} 0: {int(keep.sum())} of {len(z)}",
            fontsize=9,
        )
    if labels is not None:
        fig.colorbar(points, ax=fig.axes, label="label", ticks=sorted(set(labels.tolist()))[:10])
    fig.suptitle(
        "test set: mean directions E_q[z|x] / |E_q[z|x]| on S^2, projected onto the (z1, z2) plane", fontsize=9
    )
    written = [_save(fig, out / LATENT)]

    grid, inside = hemisphere_grid(n)
    device = next(iter(model.parameters())).device
    fig = Figure(figsize=(10, 5.2), layout="constrained")
    for ax, points, name in zip(fig.subplots(1, 2), grid, ("upper, z3 >= 0", "lower, z3 < 0"), strict=True):
        images = model.decode_mean(points.to(device)).cpu()
        images[~inside] = 1.0  # off the disc: no point of the sphere
        ax.imshow(_tiles(images, data.image_shape, n), cmap="gray", vmin=0, vmax=1, extent=(-1.07, 1.07, -1.07, 1.07))
        ax.set(xlabel="z1", ylabel="z2")
        ax.set_title(f"decoded E[x|z] over the {name} hemisphere", fontsize=9)
    return [*written, _save(fig, out / MANIFOLD)]


@torch.no_grad()
def _write_s1(model: torch.nn.Module, guide: torch.nn.Module, data: VAEData, out: Path, n: int) -> list[Path]:
    z = _directions(guide, data.test_x_eval)
    angles = torch.atan2(z[:, 1], z[:, 0]).numpy()
    labels = data.test_y.numpy() if data.test_y is not None else np.zeros(len(angles))
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(angles))
    ax.scatter(angles, labels + jitter, c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=6)
    ax.set(xlim=(-math.pi, math.pi), xlabel="angle atan2(z2, z1) of E_q[z|x], radians", ylabel="label")
    ax.set_title("test set: mean directions on the circle S^1", fontsize=9)
    written = [_save(fig, out / LATENT)]
    device = next(iter(model.parameters())).device
    images = model.decode_mean(circle_grid(n).to(device)).cpu()
    fig = Figure(figsize=(1.0 * n, 1.6))
    ax = fig.add_subplot()
    ax.imshow(_tiles(images, data.image_shape, n), cmap="gray", vmin=0, vmax=1)
    ax.set(xticks=[], yticks=[])
    ax.set_title(f"decoded E[x|z] at {n} angles from -pi (left) in steps of 2 pi / {n}", fontsize=9)
    return [*written, _save(fig, out / MANIFOLD)]


def _circle():
    from matplotlib.patches import Circle

    return Circle((0, 0), 1.0, fill=False, color="0.5", lw=0.8)


def sphere_figures(
    model: torch.nn.Module, guide: torch.nn.Module, data: VAEData, out_dir: str | Path, n: int = 15
) -> list[Path]:
    """Write the figures of the module docstring when z lies on S^1 or S^2; return their paths ([] otherwise)."""
    x = data.test_x_eval
    if not on_sphere(guide, x):
        return []
    z_dim = guide.posterior(x[:1]).event_shape[-1]
    if z_dim not in (2, 3):
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return (_write_s2 if z_dim == 3 else _write_s1)(model, guide, data, out, n)
