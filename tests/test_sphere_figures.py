"""Figures for spherical latents: the hemisphere grid's tiles are the points of S^2 they claim, and a trained run on
S^2 or S^1 writes the sphere figures instead of the Euclidean decoded grid."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae import VAEConfig, build
from pyro_vae.data import load_data
from pyro_vae.sphere_figures import circle_grid, hemisphere_grid, on_sphere
from pyro_vae.training import TrainConfig, train
from tests.test_figures import assert_real_png


def test_hemisphere_tiles_lie_on_the_sphere_where_the_disc_is():
    n = 15
    z, inside = hemisphere_grid(n)
    assert z.shape == (2, n * n, 3) and inside.shape == (n * n,)
    torch.testing.assert_close(z[:, inside].norm(dim=-1), torch.ones(2, int(inside.sum())), rtol=0, atol=1e-6)
    assert (z[0, :, 2] >= 0).all() and (z[1, :, 2] <= 0).all()
    # Tile (r, c) sits at u = -1 + 2c / (n - 1), v = 1 - 2r / (n - 1); the centre tile is a pole.
    for r, c in ((0, 0), (7, 7), (0, 7), (3, 11), (14, 14)):
        u, v = -1 + 2 * c / (n - 1), 1 - 2 * r / (n - 1)
        tile = r * n + c
        assert z[0, tile, :2].tolist() == pytest.approx([u, v], abs=1e-6)
        assert bool(inside[tile]) == (u * u + v * v <= 1 + 1e-9)
        if inside[tile]:
            assert float(z[0, tile, 2]) == pytest.approx(math.sqrt(max(0.0, 1 - u * u - v * v)), abs=1e-6)
    assert z[0, 7 * n + 7].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)
    assert z[1, 7 * n + 7].tolist() == pytest.approx([0.0, 0.0, -1.0], abs=1e-6)
    # The tiles on the disc are the lattice points (i, j), |i|, |j| <= 7, with i^2 + j^2 <= 49.
    assert int(inside.sum()) == sum(1 for i in range(-7, 8) for j in range(-7, 8) if i * i + j * j <= 49)


def test_circle_grid_is_equally_spaced_on_s1():
    points = circle_grid(8)
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(8))
    steps = torch.remainder(torch.diff(torch.atan2(points[:, 1], points[:, 0])), 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((7,), math.pi / 4), rtol=0, atol=1e-6)
    assert points[0].tolist() == pytest.approx([-1.0, 0.0], abs=1e-6)  # the first tile is at angle -pi


@pytest.mark.parametrize(("guide", "spherical"), [("normal", False), ("fullcov", False), ("iaf", False)])
def test_only_spherical_guides_count_as_on_the_sphere(guide, spherical):
    _, q = build(VAEConfig(x_dim=6, z_dim=3, hidden=(4,), guide=guide))
    assert on_sphere(q, torch.rand(2, 6)) is spherical
    _, q = build(VAEConfig(x_dim=6, z_dim=3, hidden=(4,), guide="power-spherical", prior="uniform-sphere"))
    assert on_sphere(q, torch.rand(2, 6))


@pytest.mark.parametrize("z_dim", [2, 3])
def test_a_run_on_the_sphere_writes_the_sphere_figures(z_dim, tmp_path):
    config = TrainConfig.for_data(
        load_data("digits"),
        z_dim=z_dim,
        hidden=(16,),
        epochs=1,
        batch_size=512,
        threads=1,
        guide="power-spherical",
        prior="uniform-sphere",
    )
    result = train(config, tmp_path / "run", progress=False)
    names = [p.name for p in result.figures]
    assert names == ["reconstructions.png", "samples.png", "curves.png", "latent.png"] + [
        "latent_sphere.png",
        "manifold_sphere.png",
    ]
    for name in ("latent_sphere.png", "manifold_sphere.png"):
        assert_real_png(tmp_path / "run" / name, min_side=80)
