"""The approximation and amortisation gaps against closed forms on the linear-Gaussian VAE.

Truths: the exact log p(x); the closed-form ELBO of any diagonal Gaussian q (``exact_elbo``); and the best
diagonal Gaussian for a Gaussian posterior N(m, S), which has mean m and variances 1 / (S^-1)_jj, so that the
approximation gap is KL(q* || p(z|x)) = (log det S + sum_j log (S^-1)_jj) / 2 (Cremer et al. 2018 use the same
fact to check their local optimisation).
"""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_vae import inference_gaps
from pyro_vae.gaps import GapOptions, local_optimisation_gaps
from pyro_vae.linear_gaussian import LinearGaussian, exact_elbo, set_guide_to_posterior
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_evaluation import linear_gaussian
from tests.test_path_estimators_any_guide import X_DIM, set_guide
from tests.test_path_estimators_any_guide import guide as two_level_guide
from tests.test_path_estimators_any_guide import model as two_level_model

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = GapOptions(num_steps=300, elbo_samples=2000, log_likelihood_samples=2000)


@pytest.fixture
def lg(float64):
    model, guide = linear_gaussian(x_dim=5, z_dim=2)
    exact = LinearGaussian.of(model)
    pyro.set_rng_seed(0)
    return model, guide, exact.marginal().sample((20,)), exact


def test_with_the_exact_posterior_as_guide_both_gaps_are_zero(lg):
    model, guide, x, _ = lg
    set_guide_to_posterior(guide, model)
    gaps = inference_gaps(model, guide, x, OPTIONS)
    assert abs(gaps["approximation_gap"]) < 1e-4 and abs(gaps["amortization_gap"]) < 1e-4, gaps


def test_a_shrunk_encoder_has_the_amortisation_gap_that_the_per_example_optimisation_recovers(lg):
    """Orthogonal W: the best diagonal Gaussian is the exact posterior, so ELBO(q*) = log p(x) and the whole
    inference gap, log p(x) - ELBO(q_enc) in closed form, is amortisation gap."""
    model, guide, x, exact = lg
    set_guide_to_posterior(guide, model, scale_factor=0.7)
    truth = float((exact.log_marginal(x) - exact_elbo(model, guide, x).detach()).mean())
    pyro.set_rng_seed(1)
    result = local_optimisation_gaps(model, guide, x, OPTIONS)
    gaps = result.summary()
    assert truth > 0.15  # measured 0.203: the shrunk encoder is visibly off
    assert abs(gaps["amortization_gap"] - truth) < 4 * gaps["amortization_gap_stderr"], (gaps, truth)
    assert abs(gaps["approximation_gap"]) < 1e-3
    # Per example, q* reached the exact posterior: its ELBO is log p(x) with (almost) no Monte Carlo spread.
    torch.testing.assert_close(result.elbo_optimal, exact.log_marginal(x), atol=1e-4, rtol=0)


def test_a_correlated_posterior_has_the_approximation_gap_of_the_best_diagonal_gaussian(float64):
    model, guide = linear_gaussian(x_dim=4, z_dim=2)
    with torch.no_grad():
        model.decoder.linear.weight.copy_(torch.tensor([[1.0, 0.8], [0.5, 1.0], [0.2, -0.4], [0.9, 0.6]]))
    exact = LinearGaussian.of(model)
    pyro.set_rng_seed(2)
    x = exact.marginal().sample((20,))
    s = exact.posterior_covariance()
    precision_diagonal = torch.diagonal(torch.linalg.inv(s))
    kl_best = 0.5 * (torch.logdet(s) + torch.log(precision_diagonal).sum())
    a, c = exact.posterior_affine()
    guide.set_affine(a, c, 1.4 * precision_diagonal.rsqrt())  # the right means, too wide
    elbo_best = exact.log_marginal(x) - kl_best
    amortisation_truth = float((elbo_best - exact_elbo(model, guide, x).detach()).mean())
    pyro.set_rng_seed(3)
    gaps = inference_gaps(model, guide, x, OPTIONS)
    # Measured: truths 0.396 and 0.287; estimates 0.398 ± 0.011 and 0.275 ± 0.009.
    assert float(kl_best) > 0.1 and amortisation_truth > 0.05
    assert abs(gaps["approximation_gap"] - float(kl_best)) < 4 * gaps["approximation_gap_stderr"] + 2e-3, gaps
    assert abs(gaps["amortization_gap"] - amortisation_truth) < 4 * gaps["amortization_gap_stderr"] + 2e-3, gaps


def test_a_two_level_guide_at_its_exact_posterior_has_no_gaps(float64):
    """q(z1|x) q(z2|z1,x) is run again with its per-example offsets frozen for the path gradient; a score term
    leaking through them would move q* off the posterior."""
    pyro.clear_param_store()
    set_guide()
    two_level_model(torch.zeros(1, X_DIM))
    torch.manual_seed(4)
    x = torch.randn(6, X_DIM)
    gaps = inference_gaps(two_level_model, two_level_guide, x, OPTIONS)
    assert abs(gaps["approximation_gap"]) < 1e-4 and abs(gaps["amortization_gap"]) < 1e-4, gaps


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        GapOptions(num_steps=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        GapOptions(lr=-1.0)
