"""Pareto k-hat per example (pyro_vae.psis), against truths of the linear-Gaussian VAE and against Pyro itself.

Truths: at the exact posterior every weight is p(x), so the weights have no tail (k-hat -inf, far below 0.5); with
the proposal's std r times the posterior's in every one of J = 2 dimensions, log w = const + (1/r^2 - 1) r^2 u / 2
with u ~ chi^2_2, so P(w > t) ~ t^(-1/(1 - r^2)): the exact tail shape is k = 1 - r^2 (0.91 at r = 0.3; 1.5 times
wider, bounded weights, k < 0). Pyro's ``psis_diagnostic`` given the same weights gives the same k.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pyro
import pyro.infer.importance as pyro_importance
import pytest
import torch

from pyro_vae.estimators.log_weights import per_example_log_weights
from pyro_vae.gaps import GapOptions, local_optimisation_gaps
from pyro_vae.importance import importance_sample
from pyro_vae.linear_gaussian import LinearGaussian, set_guide_to_posterior
from pyro_vae.psis import KhatSummary, TopLogWeights, khat_threshold, pareto_khat, tail_size
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_evaluation import linear_gaussian

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def lg_model(float64):
    model, guide = linear_gaussian(x_dim=5, z_dim=2)
    lg = LinearGaussian.of(model)
    pyro.set_rng_seed(0)
    return model, guide, lg.marginal().sample((40,))


def test_at_the_exact_posterior_the_weights_are_constant_and_k_hat_is_minus_infinity(lg_model):
    model, guide, x = lg_model
    set_guide_to_posterior(guide, model)
    result = importance_sample(model, guide, x, num_samples=500)
    assert result.khat is not None and bool((result.khat == -math.inf).all())
    summary = KhatSummary.of(result.khat, 500)
    assert summary.fraction_above_threshold == 0 and summary.warning("log p(x)") is None


def test_in_float32_too_weights_equal_to_rounding_give_minus_infinity_and_a_guide_2_percent_narrow_does_not():
    model, guide = linear_gaussian(x_dim=5, z_dim=2)  # float32, the default
    pyro.set_rng_seed(0)
    x = LinearGaussian.of(model).marginal().sample((50,))
    set_guide_to_posterior(guide, model)
    # float32 log weights tie in their last bits, which Pyro's fit cannot use (division by zero, too few distinct).
    assert bool((importance_sample(model, guide, x, num_samples=1000).khat == -math.inf).all())
    set_guide_to_posterior(guide, model, scale_factor=0.98)
    khat = importance_sample(model, guide, x, num_samples=1000).khat
    # Measured median 0.10; the exact tail shape is 1 - 0.98^2 = 0.04.
    assert bool(torch.isfinite(khat).all()) and float(khat.median()) < 0.5


def test_a_proposal_narrower_than_the_posterior_has_k_hat_near_its_exact_tail_shape_above_07(lg_model):
    model, guide, x = lg_model
    set_guide_to_posterior(guide, model, scale_factor=0.3)  # exact k = 1 - 0.3^2 = 0.91
    pyro.set_rng_seed(1)
    result = importance_sample(model, guide, x, num_samples=2000)
    khat = result.khat
    # Measured: median 0.85 (0.84-0.91 over three seeds), std over the 40 examples 0.15, so the median's standard
    # error is ~1.25 * 0.15 / sqrt(40) = 0.03; allowed: 3 of those plus 0.05 for the fit's known low bias at finite S.
    assert float(khat.median()) > 0.7
    assert float(khat.median()) == pytest.approx(0.91, abs=3 * 1.25 * 0.15 / math.sqrt(40) + 0.05)
    summary = KhatSummary.of(khat, 2000)
    assert summary.fraction_above_0_7 > 0.5
    assert "unreliable" in (summary.warning("the IS log p(x)") or "")


def test_a_wider_proposal_has_bounded_weights_and_negative_k_hat(lg_model):
    model, guide, x = lg_model
    set_guide_to_posterior(guide, model, scale_factor=1.5)  # w <= p(x) * 1.5^2 * ...: bounded, k < 0
    pyro.set_rng_seed(2)
    khat = importance_sample(model, guide, x, num_samples=1000).khat
    assert float(khat.max()) < 0.0


def test_k_hat_per_example_equals_pyros_psis_diagnostic_on_the_same_weights(lg_model, monkeypatch):
    model, guide, x = lg_model
    set_guide_to_posterior(guide, model, scale_factor=0.5)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        log_w = per_example_log_weights(model, guide, x[:6], num_particles=1000)
    ours = pareto_khat(log_w)
    for i in range(6):
        # Pyro's psis_diagnostic draws its weights with vectorized_importance_weights: hand it example i's.
        monkeypatch.setattr(
            pyro_importance, "vectorized_importance_weights", lambda *a, i=i, **k: (log_w[:, i].clone(),)
        )
        assert float(ours[i]) == pytest.approx(pyro_importance.psis_diagnostic(model, guide, num_particles=1000))


def test_k_hat_from_the_largest_weights_kept_in_chunks_equals_k_hat_from_all_of_them():
    torch.manual_seed(4)
    log_w = torch.randn(3000, 5, dtype=torch.float64) * 2
    top = TopLogWeights(3000)
    for chunk in log_w.split(700):
        top.add(chunk)
    assert top.top is not None and top.top.shape == (tail_size(3000) + 1, 5)
    torch.testing.assert_close(top.khat(), pareto_khat(log_w))


def test_the_threshold_depends_on_the_sample_size_as_published():
    # min(1 - 1/log10(S), 0.7) (Vehtari et al. 2024): 0.5 at S = 100, 2/3 at 1000, 0.7 from S = 10^(10/3) on.
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(2 / 3)
    assert khat_threshold(5000) == 0.7
    assert tail_size(100) == 20 and tail_size(5000) == 213


def test_too_few_samples_give_an_undefined_k_hat_and_say_so():
    khat = pareto_khat(torch.randn(20, 3))
    assert bool(torch.isnan(khat).all())
    summary = KhatSummary.of(khat, 20)
    assert summary.num_undefined == 3 and "too few" in (summary.warning("log p(x)") or "")


def test_the_gaps_report_k_hat_of_their_mixture_weights_low_at_the_posterior_high_when_both_are_narrow(
    lg_model,
):
    model, guide, x = lg_model
    x = x[:10]
    set_guide_to_posterior(guide, model)
    # At the exact posterior q* starts at the posterior and Adam moves it only by steps of about its learning rate
    # (its normalised update makes even rounding-sized gradients full steps): the mixture is close to the posterior,
    # the weights nearly constant and bounded. Measured: k-hat from -0.76 to 0.24 over the 10 examples.
    options = GapOptions(num_steps=5, elbo_samples=10, log_likelihood_samples=500)
    exact = local_optimisation_gaps(model, guide, x, options)
    assert exact.log_likelihood_khat is not None and float(exact.log_likelihood_khat.max()) < 0.5
    assert exact.summary()["psis"]["num_samples"] == 500
    # An encoder 0.3 times as wide, and q* kept at it (one step of a negligible learning rate): the mixture of two
    # equal narrow Gaussians is that Gaussian, whose weights have the exact tail shape 1 - 0.3^2 = 0.91.
    set_guide_to_posterior(guide, model, scale_factor=0.3)
    pyro.set_rng_seed(5)
    narrow = local_optimisation_gaps(
        model, guide, x, replace(options, num_steps=1, lr=1e-12, log_likelihood_samples=2000)
    )
    psis = narrow.summary()["psis"]
    assert psis["median"] > 0.7 and psis["fraction_above_0_7"] >= 0.5
    # Given log p(x) (from AIS), there are no weights and no k-hat.
    given = local_optimisation_gaps(model, guide, x, options, log_px=torch.zeros(10))
    assert given.log_likelihood_khat is None and given.summary()["psis"] is None
