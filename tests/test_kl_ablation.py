"""The blog's with/without-KL experiment: summary.json's shape, its numbers recomputed independently, and
the claim (with KL the latent std is near 1; without it, several times larger)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_vae.ablation import kl_ablation
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.runs import load_run
from pyro_vae.training import TrainConfig

KEYS = ["latent_mean", "latent_std", "latent_range", "test_elbo", "test_recon_error"]


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
