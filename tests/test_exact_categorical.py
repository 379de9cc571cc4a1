"""Exact enumeration (pyro_vae.estimators.exact) of the ``categorical`` family's flat one-hot latents
(``FlatOneHotCategorical``, through its own ``enumerate_support``), and ``compare-estimators`` on a categorical run
reporting the exact log p(x) rather than an importance-sampled one.

Truths: log p(x) and the ELBO of a tiny model (D = 2 variables of C = 3 classes: 9 states) summed over its states
with torch alone; on a trained run, log p(x) summed over its 16 states through Pyro's ``condition`` handler.
"""

from __future__ import annotations

import itertools
import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro_vae.models.onehot import FlatOneHotCategorical
from torch import nn

from pyro_vae.cli import main
from pyro_vae.estimators.exact import enumerate_states, site_size
from pyro_vae.exact_reference import exact_reference
from pyro_vae.run_dir import load_run
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

D, C, X_DIM = 2, 3, 5


class TinyCategorical(nn.Module):
    """p(z) = FlatOneHot(a), p(x | z) = Bernoulli(sigmoid(W z + b)), q(z | x) = FlatOneHot(V x + c): z in {0, 1}^6."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.prior_logits = nn.Parameter(torch.randn(D, C))
        self.decoder = nn.Linear(D * C, X_DIM)
        self.encoder = nn.Linear(X_DIM, D * C)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("tiny_decoder", self.decoder)
        prior = pyro.param("tiny_prior_logits", self.prior_logits)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", FlatOneHotCategorical(prior.expand(x.shape[0], D, C)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("tiny_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", FlatOneHotCategorical(self.encoder(x).reshape(-1, D, C)))

    def direct_sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x), ELBO) per example, each a plain sum over the C^D = 9 states (torch only, no Pyro)."""
        log_prior = torch.log_softmax(self.prior_logits, -1)
        log_q = torch.log_softmax(self.encoder(x).reshape(-1, D, C), -1)
        joint, elbo = [], torch.zeros(x.shape[0])
        for classes in itertools.product(range(C), repeat=D):
            z = torch.zeros(D, C)
            z[range(D), classes] = 1.0
            log_p_z = sum(log_prior[d, c] for d, c in enumerate(classes))
            log_q_z = sum(log_q[:, d, c] for d, c in enumerate(classes))
            log_lik = torch.distributions.Bernoulli(logits=self.decoder(z.reshape(-1))).log_prob(x).sum(-1)
            joint.append(log_p_z + log_lik)
            elbo = elbo + log_q_z.exp() * (log_p_z + log_lik - log_q_z)
        return torch.logsumexp(torch.stack(joint), 0), elbo


def test_enumeration_of_flat_one_hot_latents_equals_the_direct_sum_over_the_nine_states():
    pyro.clear_param_store()
    pair = TinyCategorical()
    x = torch.bernoulli(torch.full((4, X_DIM), 0.4), generator=torch.Generator().manual_seed(0))
    states = enumerate_states(pair.model, pair.guide, x)
    log_px, elbo = pair.direct_sums(x)
    assert states.log_p.shape == (C**D, 4)
    torch.testing.assert_close(states.log_likelihood(), log_px, atol=1e-5, rtol=0)
    torch.testing.assert_close(states.elbo(), elbo, atol=1e-5, rtol=0)
    # The size is read from support_size, before any support is built: 4^20 values would not fit in memory.
    assert site_size(FlatOneHotCategorical(torch.zeros(3, 20, 4))) == 4**20
    # Through exact_reference (what compare-estimators uses): no fallback to importance sampling.
    reference = exact_reference(pair.model, pair.guide, x)
    assert reference is not None and reference.num_states == C**D
    assert abs(reference.log_likelihood() - float(log_px.detach().mean())) < 1e-5


def _log_px_over_the_states(run, x: torch.Tensor, classes: int) -> torch.Tensor:
    """log p(x) per example of a trained categorical run: sum over every one-hot z of p(x, z), each log p(x, z) from
    Pyro's trace of the model conditioned on that z (independent of pyro_vae.estimators.exact)."""
    z_dim = run.config.model.z_dim
    joint = []
    for code in itertools.product(range(classes), repeat=z_dim // classes):
        z = torch.nn.functional.one_hot(torch.tensor(code), classes).float().reshape(-1)
        trace = poutine.trace(poutine.condition(run.model, {"z": z.expand(x.shape[0], z_dim)})).get_trace(x)
        trace.compute_log_prob()
        joint.append(sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample"))
    return torch.logsumexp(torch.stack(joint), 0)


@pytest.mark.slow
def test_compare_estimators_on_a_categorical_run_reports_the_exact_log_likelihood(tmp_path, capsys):
    run = tmp_path / "cat"
    family = ["--prior", "categorical", "--guide", "categorical", "--prior-classes", "4", "--guide-classes", "4"]
    small = ["--z-dim", "8", "--epochs", "1", "--hidden", "16", "--elbo", "enum", "--no-progress"]
    assert main(["train", "--out", str(run), *family, *small]) == 0
    capsys.readouterr()
    args = ["--draws", "3", "--examples", "4", "--snr-ks", "2", "--particles", "2", "--no-progress"]
    assert main(["compare-estimators", str(run), *args]) == 0
    captured = capsys.readouterr()
    report = json.loads((run / "estimators.json").read_text())
    # 2 variables of 4 classes: 16 joint states, enumerated; no importance sampling, so no PSIS k-hat (nor warning).
    assert report["log_likelihood_exact_states"] == 16 and report["log_likelihood_stderr"] == 0
    assert report["log_likelihood_samples"] is None and report["log_likelihood_psis"] is None
    assert "exact log p(x) per example" in captured.out and "k-hat" not in captured.err
    loaded = load_run(run)
    with torch.no_grad():
        truth = _log_px_over_the_states(loaded, loaded.data.test_x_eval[:4], 4)
    assert abs(report["log_likelihood"] - float(truth.mean())) < 1e-4
    enum = {r["name"]: r for r in report["estimators"]}["enum"]
    assert abs(enum["exact_bias"]) < 1e-4 and enum["value_mean"] <= report["log_likelihood"]  # ELBO <= log p(x)
