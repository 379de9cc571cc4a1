"""Figures: written and non-empty, the manifold grid's tiles decode the z they claim, PCA for z_dim > 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from pyro_vae import VAEConfig, build
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.figures import (
    MAX_POINTS,
    image_grid,
    manifold_grid,
    plot_curves,
    plot_latent,
    plot_manifold,
    run_caption,
)
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


# --- figures that explain themselves -----------------------------------------------------------------------------


def test_every_figure_says_what_made_it(tmp_path, monkeypatch):
    import pyro_vae.figures as figures_module

    captured = {}
    real_save = figures_module.save

    def keep(fig, path):
        captured[path.name] = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
        return real_save(fig, path)

    monkeypatch.setattr(figures_module, "save", keep)
    config = TrainConfig.for_data(
        load_data("digits"), z_dim=2, hidden=(16,), epochs=2, batch_size=512, threads=1, beta=0.5, kl_warmup=1
    )
    train(config, tmp_path / "run", progress=False)
    assert sorted(captured) == sorted(FIGURES)
    for caption in captured.values():
        for part in ("digits (64)", "prior standard", "likelihood bernoulli", "guide normal (mlp encoder, mlp decoder"):
            assert part in caption
        assert "meanfield" in caption and "beta 0.5 (warm-up 1 epochs)" in caption and "epoch 2" in caption


def test_run_caption_names_the_particles_and_image_shape(tmp_path):
    (tmp_path / "pets").mkdir()
    config = TrainConfig(
        model=VAEConfig(x_shape=(3, 32, 32), encoder="conv", decoder="conv", prior="vamp"),
        dataset=str(tmp_path / "pets"),
        elbo="iwae",
        particles=10,
    )
    caption = run_caption(config, 7)
    assert caption.startswith("pets (3x32x32) · prior vamp") and "iwae (K = 10)" in caption and "epoch 7" in caption
    assert "guide normal (conv encoder, conv decoder, z_dim 2)" in caption


def test_a_scatter_of_10000_codes_shows_a_subset_but_spans_them_all():
    rng = np.random.default_rng(0)
    means = torch.as_tensor(rng.normal(size=(10_000, 2)) * [4.0, 1.0], dtype=torch.float32)
    means[0] = torch.tensor([30.0, -9.0])  # an outlier the subset may miss: the axes must still show it
    fig = Figure()
    ax = fig.add_subplot()
    plot_latent(ax, means, torch.as_tensor(rng.integers(0, 10, 10_000)), "codes")
    shown = ax.collections[0].get_offsets()
    assert len(shown) == MAX_POINTS and "2,000 of 10,000 codes shown" in ax.get_title()
    # The drawn points are codes (a subset, each once), and the limits include every code.
    drawn = {tuple(p) for p in np.asarray(shown, dtype=np.float32).tolist()}
    assert drawn <= {tuple(p) for p in means.numpy().tolist()} and len(drawn) == MAX_POINTS
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < means[:, 0].min() and x1 > 30 and y0 < -9 and y1 > means[:, 1].max()


def test_decoded_grid_tiles_are_square_when_the_latent_ranges_differ():
    torch.manual_seed(0)
    model, _ = build(VAEConfig(x_shape=(1, 8, 8), z_dim=2, hidden=(8,)))
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ranges = [[0.0, 20.0], [-7.5, 7.5]]  # the blog's ranges without KL: 20 by 15 latent units
    plot_manifold(ax, model, ranges, (1, 8, 8), n=15)
    FigureCanvasAgg(fig).draw()
    box = ax.images[0].get_window_extent()
    rows, cols = ax.images[0].get_array().shape[:2]
    # Displayed pixels per image pixel are the same across and down: every tile is as square as the images.
    assert box.width / cols == pytest.approx(box.height / rows, rel=0.01)
    assert ax.get_xlim()[0] < 0 < 20 < ax.get_xlim()[1]  # the axes still read in latent units


def test_log_scaled_curves_get_plain_number_tick_labels():
    # A KL warm-up run: the loss starts at 600 and settles near 100, the KL spans two decades.
    metrics = [
        {
            "epoch": e,
            "train_loss": 100 + 500 / e**2,
            "test_elbo": -(100 + 300 / e**2),
            "test_kl": 0.5 * e,
            "test_recon": 90,
        }
        for e in range(1, 41)
    ]
    fig = Figure(figsize=(12, 3.4))
    plot_curves(fig, metrics)
    FigureCanvasAgg(fig).draw()
    loss, kl = fig.axes[0], fig.axes[1]
    for ax in (loss, kl):
        assert ax.get_yscale() == "log"
        lo, hi = ax.get_ylim()
        labels = [t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
        assert len(labels) >= 3 and all(label and "$" not in label for label in labels)
        assert all(float(label) > 0 for label in labels)  # plain numbers, not 10^k in mathtext
    assert fig.axes[2].get_yscale() == "linear"  # a flat curve stays linear


def test_rgb_images_are_tiled_in_colour():
    images = torch.rand(6, 3, 4, 5)
    grid = image_grid(images, (3, 4, 5), nrow=3, padding=0)
    assert grid.shape == (8, 15, 3)
    np.testing.assert_array_equal(grid[4:8, 5:10], images[4].permute(1, 2, 0).numpy())
