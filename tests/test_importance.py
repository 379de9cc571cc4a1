"""log p(x) with error bars, against the linear-Gaussian VAE's exact log p(x) (and its exact posterior).

Truths: the exact marginal N(x; W mu_p + b, W S_p W^T + sigma^2 I); at the exact posterior every importance
weight equals p(x), so the standard error is 0 and the ESS is K; the spread of repeated estimates (a second,
independent measure of the error) against the delta-method standard error.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import log_likelihood
from pyro_vae.importance import importance_sample
from pyro_vae.linear_gaussian import LinearGaussian, set_guide_to_posterior
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_evaluation import linear_gaussian

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def wide_guide(float64):
    """The linear-Gaussian model with its guide at the exact posterior, std x 1.5, and 200 examples from p(x)."""
    model, guide = linear_gaussian(x_dim=5, z_dim=2)
    lg = LinearGaussian.of(model)
    pyro.set_rng_seed(0)
    x = lg.marginal().sample((200,))
    set_guide_to_posterior(guide, model, scale_factor=1.5)
    return model, guide, x, lg.log_marginal(x)


def test_95_percent_intervals_cover_the_exact_log_likelihood_at_the_stated_rate(wide_guide):
    model, guide, x, exact = wide_guide
    pyro.set_rng_seed(1)
    log_px, stderr = log_likelihood(model, guide, x, num_samples=100, return_stderr=True)
    covered = ((log_px - exact).abs() < 1.96 * stderr).double().mean()
    # Measured 0.945-0.955 over two seeds; with 200 examples a rate of 0.95 has a standard error of 0.015.
    assert float(covered) >= 0.90


def test_the_standard_error_matches_the_spread_of_repeated_estimates(wide_guide):
    model, guide, x, _ = wide_guide
    x = x[:5]
    pyro.set_rng_seed(2)
    runs = [importance_sample(model, guide, x, num_samples=100) for _ in range(200)]
    spread = torch.stack([r.log_likelihood for r in runs]).std(0)
    stated = torch.stack([r.stderr for r in runs]).mean(0)
    # The std of 200 repetitions has a relative standard error of 1/sqrt(400) = 5% per example.
    assert float((spread / stated).mean()) == pytest.approx(1.0, abs=0.1)


def test_at_the_exact_posterior_every_weight_is_p_x_so_the_error_is_zero_and_ess_is_k(float64):
    model, guide = linear_gaussian(x_dim=5, z_dim=2)
    lg = LinearGaussian.of(model)
    x = lg.marginal().sample((7,))
    set_guide_to_posterior(guide, model)
    result = importance_sample(model, guide, x, num_samples=50)
    torch.testing.assert_close(result.log_likelihood, lg.log_marginal(x), atol=1e-10, rtol=0)
    assert float(result.stderr.max()) < 1e-6
    torch.testing.assert_close(result.ess, torch.full((7,), 50.0), atol=1e-6, rtol=0)


def test_the_sweep_converges_to_the_exact_value_and_its_error_shrinks_as_one_over_root_k(wide_guide):
    model, guide, x, exact = wide_guide
    pyro.set_rng_seed(3)
    result = importance_sample(model, guide, x, num_samples=2000, sweep=(10, 100, 1000))
    assert sorted(result.sweep) == [10, 100, 1000]
    errors = {k: float((lp - exact).mean()) for k, (lp, _) in result.sweep.items()}
    errors[2000] = float((result.log_likelihood - exact).mean())
    stderr = {k: float(se.mean()) for k, (_, se) in result.sweep.items()}
    stderr[2000] = float(result.stderr.mean())
    for k in (10, 100, 1000, 2000):
        # The average over 200 examples is within 4 of its standard errors (sqrt(sum SE^2) / N) of the truth.
        assert abs(errors[k]) < 4 * stderr[k] / math.sqrt(200), (k, errors[k])
    for small, large in ((10, 100), (100, 1000), (1000, 2000)):
        assert stderr[large] / stderr[small] == pytest.approx(math.sqrt(small / large), rel=0.15)


def test_the_sweep_is_the_estimate_from_the_first_k_samples(wide_guide):
    model, guide, x, _ = wide_guide
    pyro.set_rng_seed(4)
    nested = importance_sample(model, guide, x[:20], num_samples=300, sweep=(30,))
    pyro.set_rng_seed(4)
    alone = importance_sample(model, guide, x[:20], num_samples=30)
    torch.testing.assert_close(nested.sweep[30][0], alone.log_likelihood)
    torch.testing.assert_close(nested.sweep[30][1], alone.stderr)


def test_one_sample_has_no_standard_error(wide_guide):
    model, guide, x, _ = wide_guide
    _, stderr = log_likelihood(model, guide, x[:3], num_samples=1, return_stderr=True)
    assert torch.isnan(stderr).all()


def test_hand_made_weights_give_the_textbook_standard_error_and_ess():
    """w = (1, 3): mean 2, sample std sqrt(2), so SE = std / (sqrt(K) mean) = 0.5; ESS = (sum w)^2 / sum w^2 = 1.6.
    w = (1, 1, 1, 5): mean 2, std 2, SE = 2 / (2 * 2) = 0.5; ESS = 64 / 28."""
    from pyro_vae.importance import delta_method_stderr, effective_sample_size

    for weights, se, ess in (((1.0, 3.0), 0.5, 1.6), ((1.0, 1.0, 1.0, 5.0), 0.5, 64 / 28)):
        log_w = torch.tensor(weights, dtype=torch.float64).log().unsqueeze(-1)  # (K, 1 example)
        log_sum, log_sum_sq = torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0)
        assert float(delta_method_stderr(log_sum, log_sum_sq, len(weights))) == pytest.approx(se, rel=1e-12)
        assert float(effective_sample_size(log_sum, log_sum_sq)) == pytest.approx(ess, rel=1e-12)


def scaled_model(x):
    """z ~ N(0, 1), x_0 ~ N(z, 1): the posterior is N(x_0 / 2, 1/2), p(x_0) = N(0, 2); x_1 is the guide's widening."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x[:, 0]), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])


def scaled_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x[:, 0] / 2, math.sqrt(0.5) * x[:, 1]))


@pytest.mark.slow
def test_the_aggregated_standard_error_is_the_spread_of_repeated_averages_when_the_errors_differ(float64):
    """Eight examples with the exact posterior as proposal (error 0) and two with a wider one: the average over the
    10 examples has the error sqrt(sum SE_i^2) / N, which mean(SE) / sqrt(N) would understate 2.4-fold here. The
    std of 300 repetitions has a relative standard error of 1/sqrt(598) = 4%; the ratio is within 3 of them."""
    x = torch.tensor([[0.3 * i - 1.0, 1.0] for i in range(8)] + [[0.5, 1.4], [-0.5, 1.8]])
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x[:, 0])
    pyro.set_rng_seed(6)
    runs = [importance_sample(scaled_model, scaled_guide, x, num_samples=50) for _ in range(300)]
    means = torch.tensor([r.mean_and_stderr()[0] for r in runs])
    stated = torch.tensor([r.mean_and_stderr()[1] for r in runs])
    assert float(runs[0].stderr[:8].abs().max()) < 1e-6 and float(runs[0].stderr[8:].min()) > 0.01
    ratio = float(means.std() / stated.pow(2).mean().sqrt())
    assert ratio == pytest.approx(1.0, abs=0.12), ratio
    # and the averages are centred on the truth (within 4 standard errors of the mean of 300)
    assert abs(float(means.mean() - exact.mean())) < 4 * float(means.std()) / math.sqrt(300)
