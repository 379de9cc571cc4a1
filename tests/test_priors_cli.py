"""Every prior x likelihood x {trace, meanfield} trains from the command line, the KL kind is
announced and stored, --require-analytic-kl refuses the Monte Carlo fallback, and bad data gets one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyro_vae import LIKELIHOODS, PRIORS
from pyro_vae.cli import main
from pyro_vae.registry import DISCRETE_LATENTS
from pyro_vae.run_dir import load_run

PRIOR_ARGS = {
    "standard": [],
    "gaussian": ["--prior-loc", "0.5", "--prior-scale", "2.0", "--prior-learn"],
    "mixture": ["--prior-components", "3"],
    "vamp": ["--prior-components", "3", "--prior-learn-weights"],
    "flow": ["--prior-steps", "1", "--prior-hidden", "8"],
    "uniform-sphere": ["--guide", "power-spherical"],  # a prior on the sphere needs a guide on it
}
LIKELIHOOD_ARGS = {
    "bernoulli": [],
    "gaussian": ["--likelihood-sigma", "0.5"],
    "gaussian-learned": ["--likelihood-per-pixel"],
    "continuous-bernoulli": [],
    "discretized-logistic": ["--likelihood-bins", "17"],  # the digits' 17 grey levels
}
KL_KIND = {
    "standard": "analytic",
    "gaussian": "analytic",
    "mixture": "monte-carlo",
    "vamp": "monte-carlo",
    "flow": "monte-carlo",
    "uniform-sphere": "analytic",
}
TINY = ["--epochs", "1", "--hidden", "8", "--z-dim", "2", "--batch-size", "256", "--threads", "1"]


def test_the_tables_name_registered_components():
    """The tables hold extra flags and expectations for some components; every registered one is trained below
    (the names come from the registries, so a new component needs no edit here)."""
    assert set(PRIOR_ARGS) | set(KL_KIND) <= set(PRIORS)
    assert set(LIKELIHOOD_ARGS) <= set(LIKELIHOODS)


@pytest.mark.slow
@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
# The discrete priors need a discrete guide, which trace and meanfield refuse: tests/test_discrete_latents.py has them.
@pytest.mark.parametrize("prior", sorted(p for p in PRIORS if PRIORS[p].latent not in DISCRETE_LATENTS))
def test_prior_likelihood_estimator_trains_from_the_cli(tmp_path, capsys, prior, likelihood, elbo):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--prior", prior, "--likelihood", likelihood, "--elbo", elbo, *TINY]
    assert main([*args, *PRIOR_ARGS.get(prior, []), *LIKELIHOOD_ARGS.get(likelihood, [])]) == 0
    err = capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    kind = KL_KIND.get(prior, records[0]["kl"]["z"])  # a prior not in the table: the kind it reports, said once
    assert records[0]["kl"] == {"z": kind} and kind in ("analytic", "monte-carlo")
    announced = f"KL per latent site: z={kind}"
    assert (announced in err) == (elbo == "meanfield")  # the trace ELBO always estimates the KL by sampling
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"]["prior"], saved["model"]["likelihood"], saved["elbo"]) == (prior, likelihood, elbo)
    # The test ELBO is -(reconstruction + KL), as the terms were stored.
    assert records[0]["test_elbo"] == pytest.approx(-(records[0]["test_recon"] + records[0]["test_kl"]), rel=1e-9)
    run = load_run(out, with_data=False)
    classes = {
        "standard": "StandardNormalPrior",
        "gaussian": "GaussianPrior",
        "mixture": "MixturePrior",
        "vamp": "VampPrior",
        "flow": "FlowPrior",
        "uniform-sphere": "UniformSpherePrior",
    }
    assert type(run.model.prior).__name__ == classes.get(prior, type(run.model.prior).__name__)


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_require_analytic_kl_refuses_the_monte_carlo_fallback(tmp_path, capsys, prior):
    code = main(["train", "--out", str(tmp_path / "run"), "--prior", prior, "--require-analytic-kl", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("pyro-vae: error: --require-analytic-kl") and "z" in err[-1]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_require_analytic_kl_accepts_the_gaussian_prior(tmp_path):
    args = ["train", "--out", str(tmp_path / "run"), "--prior", "gaussian", "--prior-loc", "0.3", "--learn-prior"]
    assert main([*args, "--require-analytic-kl", "--no-progress", *TINY]) == 0


@pytest.mark.parametrize(
    "likelihood,values,message",
    [
        ("continuous-bernoulli", [0.0, 0.5, 1.5], "continuous-bernoulli likelihood needs data in [0, 1]"),
        ("continuous-bernoulli", [-0.2, 0.5, 1.0], "continuous-bernoulli likelihood needs data in [0, 1]"),
    ],
)
def test_data_outside_the_likelihoods_support_is_one_line(tmp_path, capsys, likelihood, values, message):
    data = np.tile(np.array(values, dtype=np.float32), (120, 1))
    np.save(tmp_path / "data.npy", data)
    args = ["train", "--out", str(tmp_path / "run"), "--dataset", str(tmp_path / "data.npy")]
    assert main([*args, "--likelihood", likelihood, "--no-progress", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ") and message in err[0]
