"""Figures: written and non-empty, the manifold grid's tiles decode the z they claim, PCA for z_dim > 2."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread

from pyro_vae import VAEConfig, build
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.figures import image_grid, manifold_grid, plot_latent
from pyro_vae.training import TrainConfig, train

FIGURES = ["reconstructions.png", "samples.png", "curves.png", "latent.png", "manifold.png"]


def assert_real_png(path, min_side=100):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_train_writes_every_figure_and_plot_rewrites_them(tmp_path, capsys):
    out = tmp_path / "run"
    config = TrainConfig.for_data(load_data("digits"), z_dim=2, hidden=(16,), epochs=2, batch_size=512, threads=1)
    result = train(config, out, progress=False)
    assert [p.name for p in result.figures] == FIGURES
    for name in FIGURES:
        assert_real_png(out / name)
        (out / name).unlink()
    assert main(["plot", str(out)]) == 0
    assert [line.rsplit("/", 1)[-1] for line in capsys.readouterr().out.split()] == FIGURES
    for name in FIGURES:
        assert_real_png(out / name)


def test_no_manifold_grid_for_more_than_two_latents(tmp_path):
    config = TrainConfig.for_data(load_data("digits"), z_dim=3, hidden=(16,), epochs=1, batch_size=512, threads=1)
    result = train(config, tmp_path / "run", progress=False)
    assert [p.name for p in result.figures] == FIGURES[:-1]


def test_manifold_grid_has_n_by_n_tiles_decoding_the_grid_points():
    torch.manual_seed(0)
    model, _ = build(VAEConfig(x_dim=64, z_dim=2, hidden=(8,)))
    ranges = [[-3.0, 1.0], [-0.5, 2.5]]
    images, z = manifold_grid(model, ranges, n=4)
    assert images.shape == (16, 64) and z.shape == (16, 2)
    # Row-major tiles: columns sweep z1 from low to high, rows sweep z2 from high (top) to low.
    assert z[0].tolist() == [-3.0, 2.5] and z[3].tolist() == [1.0, 2.5] and z[15].tolist() == [1.0, -0.5]
    expected_z1 = np.linspace(-3.0, 1.0, 4)
    expected_z2 = np.linspace(2.5, -0.5, 4)
    for r in range(4):
        for c in range(4):
            point = torch.tensor([[expected_z1[c], expected_z2[r]]], dtype=torch.float32)
            with torch.no_grad():
                tile = torch.sigmoid(model.decoder(point))[0]  # Bernoulli mean, computed independently
            assert torch.allclose(images[4 * r + c], tile, atol=1e-6)
    # The tiled image has the requested 4 x 4 layout of 8 x 8 tiles.
    assert image_grid(images, (8, 8), nrow=4, padding=0).shape == (32, 32)
    assert np.array_equal(image_grid(images, (8, 8), nrow=4, padding=0)[8:16, 16:24], images[6].reshape(8, 8).numpy())


def test_latent_plot_uses_pca_for_more_than_two_dimensions():
    rng = np.random.default_rng(0)
    means = torch.as_tensor(rng.normal(size=(200, 3)) * np.array([3.0, 1.0, 0.2]), dtype=torch.float32)
    fig = Figure()
    ax = fig.add_subplot()
    plot_latent(ax, means, torch.as_tensor(rng.integers(0, 10, 200)), "test")
    assert "PCA projection of 3-D latent means" in ax.get_title() and ax.get_xlabel().startswith("PC1")
    # The points are the projection on the top two principal axes (numpy SVD), up to the sign of each axis.
    centred = means.numpy() - means.numpy().mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    shown = ax.collections[0].get_offsets()
    for k in range(2):
        sign = np.sign(expected[0, k] * shown[0, k])
        np.testing.assert_allclose(shown[:, k], sign * expected[:, k], rtol=1e-4, atol=1e-4)


def test_plot_on_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_one_dimensional_latent_plot_puts_the_means_on_the_x_axis():
    fig = Figure()
    ax = fig.add_subplot()
    means = torch.linspace(-1, 1, 5).unsqueeze(1)
    plot_latent(ax, means, None, "1-D")
    assert np.allclose(ax.collections[0].get_offsets()[:, 0], means[:, 0].numpy())
