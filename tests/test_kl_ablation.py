"""The blog's with/without-KL experiment: summary.json's shape, its numbers recomputed independently, and
the claim (with KL the latent std is near 1; without it, several times larger)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_vae import VAEConfig, build
from pyro_vae.ablation import continuity, gap_fraction, grid_steps, inside_prior_95, kl_ablation
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.figures import manifold_grid
from pyro_vae.run_dir import load_run
from pyro_vae.training import TrainConfig
from tests.test_conv import mnist_dir, needs_mnist

KEYS = [
    "latent_mean",
    "latent_std",
    "latent_range",
    "test_elbo",
    "test_kl",
    "test_recon_error",
    "inside_prior_95",
    "gap_fraction",
    "grid_step_ratio",
    "largest_step_ratio",
]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    # The README's main-job command, with its default options.
    out = tmp_path_factory.mktemp("ablation")
    assert main(["kl-ablation", "--dataset", "digits", "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_summary_has_the_documented_shape(ablation):
    _, summary = ablation
    assert list(summary) == ["with_kl", "without_kl"]
    for side in summary.values():
        assert list(side) == KEYS
        assert len(side["latent_mean"]) == 2 and len(side["latent_std"]) == 2
        assert len(side["latent_range"]) == 2 and all(lo < hi for lo, hi in side["latent_range"])
        assert isinstance(side["test_elbo"], float) and isinstance(side["test_recon_error"], float)


@pytest.mark.slow
def test_summary_numbers_match_the_saved_runs(ablation):
    out, summary = ablation
    for name in ("with_kl", "without_kl"):
        run = load_run(out / name)
        assert run.config.beta == (1.0 if name == "with_kl" else 0.0) and run.config.model.z_dim == 2
        with torch.no_grad():
            loc, _ = run.guide.loc_scale(run.data.test_x_eval)
            x_hat = torch.sigmoid(run.model.decoder(loc))
        means = loc.double().numpy()
        np.testing.assert_allclose(summary[name]["latent_mean"], means.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(summary[name]["latent_std"], means.std(0, ddof=1), rtol=1e-5)
        np.testing.assert_allclose(summary[name]["latent_range"], np.stack([means.min(0), means.max(0)], 1), rtol=1e-6)
        err = ((run.data.test_x_eval - x_hat) ** 2).sum(1).mean().item()
        assert summary[name]["test_recon_error"] == pytest.approx(err, rel=1e-5)
        # test_elbo is the beta = 1 ELBO of the last epoch for both runs.
        last = json.loads((out / name / "metrics.jsonl").read_text().splitlines()[-1])
        assert summary[name]["test_elbo"] == last["test_elbo"] == -(last["test_recon"] + last["test_kl"])


@pytest.mark.slow
def test_the_blogs_claim_holds_on_digits(ablation):
    _, summary = ablation
    with_kl, without = np.array(summary["with_kl"]["latent_std"]), np.array(summary["without_kl"]["latent_std"])
    assert np.all(np.abs(with_kl - 1) < np.abs(without - 1))
    assert np.all(np.abs(with_kl - 1) < 0.35)
    assert np.all(without > 2 * with_kl)
    # The KL term is what makes the ELBO (at beta = 1) good: without it the KL part of the bound is large.
    assert summary["with_kl"]["test_elbo"] > summary["without_kl"]["test_elbo"] + 5


@pytest.mark.slow
def test_every_figure_is_written(ablation):
    out, _ = ablation
    assert (out / "kl_ablation.png").stat().st_size > 20_000
    for name in ("with_kl", "without_kl"):
        for fig in ("reconstructions.png", "samples.png", "curves.png", "latent.png", "manifold.png"):
            assert (out / name / fig).stat().st_size > 1_000


def test_needs_a_two_dimensional_latent_space(tmp_path):
    base = TrainConfig.for_data(load_data("digits"), z_dim=3, epochs=1)
    with pytest.raises(UserError, match="2-D latent spaces; got z_dim = 3"):
        kl_ablation(tmp_path, base, progress=False)


# --- the blog's properties, measured: each measure against a case whose answer is known -------------------------


def test_inside_prior_95_is_095_for_codes_drawn_from_the_prior():
    torch.manual_seed(0)
    n = 20_000
    share = inside_prior_95(torch.randn(n, 2))
    assert abs(share - 0.95) < 4 * (0.95 * 0.05 / n) ** 0.5


def test_gap_fraction_finds_a_square_hole_of_known_size():
    # Codes on a 51 x 51 lattice over [0, 1]^2 (spacing 0.02), without those in the open square (0.3, 0.7)^2.
    side = torch.linspace(0, 1, 51, dtype=torch.float64)
    lattice = torch.cartesian_prod(side, side)
    hole = ((lattice > 0.3 + 1e-9) & (lattice < 0.7 - 1e-9)).all(1)
    ranges = [[0.0, 1.0], [0.0, 1.0]]
    assert gap_fraction(lattice, ranges) == 0.0
    holed = lattice[~hole][torch.randperm(int((~hole).sum()))]  # order must not matter...
    # ...but the measure uses the first GAP_CODES codes: give it all of them.
    import pyro_vae.ablation as ablation_module

    old, ablation_module.GAP_CODES = ablation_module.GAP_CODES, len(holed)
    try:
        share = gap_fraction(holed, ranges)
    finally:
        ablation_module.GAP_CODES = old
    # Grid points k / 29 further than 3 x 0.02 from every code: inside (0.36, 0.64) on both axes, k = 11..18.
    inner = [k for k in range(30) if 0.36 < k / 29 < 0.64]
    assert len(inner) == 8 and share == pytest.approx(len(inner) ** 2 / 900, abs=1e-12)


def test_grid_steps_of_a_linear_decoder_are_its_columns_times_the_grid_spacing():
    from scipy.spatial.distance import pdist

    torch.manual_seed(0)
    model, _ = build(VAEConfig(x_dim=5, z_dim=2, decoder="linear", likelihood="gaussian"))
    ranges, n = [[-2.0, 2.0], [-1.0, 5.0]], 7
    steps, pairs = grid_steps(model, ranges, n)
    w = model.decoder.weight.detach().double()
    horizontal, vertical = w[:, 0].norm() * 4 / (n - 1), w[:, 1].norm() * 6 / (n - 1)
    assert steps.shape == (2 * n * (n - 1),)
    np.testing.assert_allclose(steps[: n * (n - 1)].numpy(), horizontal.item(), rtol=1e-5)
    np.testing.assert_allclose(steps[n * (n - 1) :].numpy(), vertical.item(), rtol=1e-5)
    _, z = manifold_grid(model, ranges, n)
    expected_pairs = pdist((z.double() @ w.T).numpy())  # distances between decodings W z (+ b cancels)
    np.testing.assert_allclose(np.sort(pairs.numpy()), np.sort(expected_pairs), rtol=1e-5)
    mean, largest = continuity(model, ranges, n)
    assert mean == pytest.approx(float((horizontal + vertical) / 2) / expected_pairs.mean(), rel=1e-5)
    assert largest == pytest.approx(float(max(horizontal, vertical)) / expected_pairs.mean(), rel=1e-5)


@needs_mnist
@pytest.mark.slow
def test_the_blogs_claim_holds_on_real_mnist(tmp_path):
    """A short run (3 epochs of 60,000 images each): the KL term already fixes the scale and fills the region."""
    out = tmp_path / "mnist"
    args = ["kl-ablation", "--dataset", "mnist", "--data-dir", str(mnist_dir()), "--no-download", "--epochs", "3"]
    assert main([*args, "--hidden", "256", "--lr", "3e-3", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    with_kl, without = summary["with_kl"], summary["without_kl"]
    assert all(abs(s - 1) < 0.35 for s in with_kl["latent_std"])
    assert all(w > 2 * s for w, s in zip(without["latent_std"], with_kl["latent_std"], strict=True))
    # Completeness: most codes where the prior puts its mass, and fewer holes in the occupied region.
    assert with_kl["inside_prior_95"] > 0.75 and without["inside_prior_95"] < with_kl["inside_prior_95"] - 0.3
    assert with_kl["gap_fraction"] < without["gap_fraction"]
    assert with_kl["test_elbo"] > without["test_elbo"] + 20
    assert (out / "kl_ablation.png").stat().st_size > 50_000
