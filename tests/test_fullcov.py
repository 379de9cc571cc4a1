"""The full-covariance Gaussian guide and its registered KL to the diagonal priors.

Truths: torch's KL between two MultivariateNormals (where both apply), numerical integration in 2-D, a 10^6-sample
Monte Carlo estimate (4 standard errors), and the linear-Gaussian VAE, whose exact posterior is a correlated
Gaussian: with the guide set to it the ELBO is the exact log p(x); the diagonal guide's best ELBO falls short by the
closed-form mean-field gap (1/2)(sum_j log Lambda_jj - log det Lambda), and fitting the amortised guides
reproduces both.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro_vae.guides import FullCovarianceGuide, MLPEncoder
from scipy import integrate
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae import VAEConfig, build
from pyro_vae.kl_check import kl_kinds
from pyro_vae.linear_gaussian import LinearGaussian, exact_elbo, set_guide_to_posterior


def random_mvn(batch: int, j: int, generator: torch.Generator) -> dist.MultivariateNormal:
    a = torch.randn(batch, j, j, generator=generator)
    cov = a @ a.transpose(-1, -2) + 0.3 * torch.eye(j)
    return dist.MultivariateNormal(torch.randn(batch, j, generator=generator), covariance_matrix=cov)


def diagonal_prior(j: int, generator: torch.Generator, standard: bool) -> dist.Independent:
    if standard:
        return dist.Normal(torch.zeros(j), torch.ones(j)).to_event(1)
    loc = torch.randn(j, generator=generator)
    return dist.Normal(loc, 0.5 + torch.rand(j, generator=generator)).to_event(1)


@pytest.mark.parametrize("standard", [True, False], ids=["standard", "gaussian"])
@pytest.mark.parametrize("j", [1, 2, 5])
def test_registered_kl_equals_torchs_multivariate_normal_kl(j, standard, float64):
    g = torch.Generator().manual_seed(j)
    q, p = random_mvn(4, j, g), diagonal_prior(j, g, standard)
    as_mvn = MultivariateNormal(p.base_dist.loc, covariance_matrix=torch.diag(p.base_dist.scale**2))
    registered = kl_divergence(q, p)
    assert registered.shape == (4,)
    torch.testing.assert_close(registered, kl_divergence(q, as_mvn), rtol=1e-12, atol=1e-12)


def test_registered_kl_equals_numerical_integration_in_2d(float64):
    g = torch.Generator().manual_seed(3)
    q, p = random_mvn(1, 2, g), diagonal_prior(2, g, standard=False)
    m, sd = q.loc[0].numpy(), np.sqrt(np.diag(q.covariance_matrix[0].numpy()))

    def integrand(y: float, x: float) -> float:
        z = torch.tensor([[x, y]])
        log_q, log_p = float(q.log_prob(z)), float(p.log_prob(z))
        return math.exp(log_q) * (log_q - log_p)

    box = [(m[i] - 10 * sd[i], m[i] + 10 * sd[i]) for i in range(2)]
    value, error = integrate.dblquad(integrand, *box[0], *box[1], epsabs=1e-10, epsrel=1e-10)
    assert error < 1e-7
    assert float(kl_divergence(q, p)) == pytest.approx(value, abs=1e-7)


def test_registered_kl_equals_a_million_sample_monte_carlo_estimate_within_4_se():
    g = torch.Generator().manual_seed(4)
    q, p = random_mvn(1, 4, g), diagonal_prior(4, g, standard=False)
    torch.manual_seed(0)
    z = q.sample((10**6,))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).double()
    se = float(log_ratio.std()) / math.sqrt(10**6)
    assert abs(float(log_ratio.mean()) - float(kl_divergence(q, p))) < 4 * se


def test_no_kl_against_other_priors_so_meanfield_says_monte_carlo():
    x = torch.bernoulli(torch.rand(8, 6))
    for prior, kind in (("standard", "analytic"), ("gaussian", "analytic"), ("mixture", "monte-carlo")):
        model, guide = build(VAEConfig(x_dim=6, z_dim=3, hidden=(8,), prior=prior, guide="fullcov"))
        assert kl_kinds(model, guide, x) == {"z": kind}, prior
    with pytest.raises(NotImplementedError):
        kl_divergence(random_mvn(2, 3, torch.Generator()), dist.Laplace(torch.zeros(3), 1.0).to_event(1))


def test_posterior_shapes_and_a_positive_cholesky_diagonal():
    guide = FullCovarianceGuide(MLPEncoder((6,), (16,)), z_dim=4)
    with torch.no_grad():
        guide.head.bias.fill_(-30.0)  # pre-softplus diagonal far negative: L_jj stays at least MIN_SCALE
    q = guide.posterior(torch.rand(5, 6))
    assert (q.batch_shape, q.event_shape) == ((5,), (4,))
    assert (torch.diagonal(q.scale_tril, dim1=-2, dim2=-1) > 0).all()
    assert torch.equal(q.scale_tril, torch.tril(q.scale_tril))


def linear_gaussian(x_dim: int = 6, z_dim: int = 3, guide: str = "fullcov"):
    """A linear-Gaussian VAE whose W has correlated columns, so the exact posterior covariance is not diagonal."""
    config = VAEConfig(
        x_dim=x_dim,
        z_dim=z_dim,
        decoder="linear",
        likelihood="gaussian",
        options={"encoder": {"hidden": ()}, "likelihood": {"sigma": 0.5}},
        guide=guide,
    )
    model, q = build(config)
    g = torch.Generator().manual_seed(1)  # the same model whichever guide was built
    with torch.no_grad():
        w = torch.randn(x_dim, z_dim, generator=g)
        w[:, 1] += 1.5 * w[:, 0]  # strongly correlated columns
        model.decoder.linear.weight.copy_(w)
        model.decoder.linear.bias.copy_(torch.randn(x_dim, generator=g))
    return model, q


def mean_field_gap(lg: LinearGaussian) -> torch.Tensor:
    """min over diagonal q of KL(q || p(z|x)) = (1/2)(sum_j log Lambda_jj - log det Lambda), Lambda = S^-1."""
    precision = torch.linalg.inv(lg.posterior_covariance())
    return 0.5 * (torch.log(torch.diagonal(precision)).sum() - torch.logdet(precision))


def test_the_exact_posterior_gives_an_elbo_equal_to_log_px_which_the_diagonal_guide_cannot(float64):
    model, guide = linear_gaussian()
    lg = LinearGaussian.of(model)
    x = lg.marginal().sample((10,))
    log_px = lg.log_marginal(x)
    set_guide_to_posterior(guide, model)
    torch.testing.assert_close(guide.posterior(x).covariance_matrix[0], lg.posterior_covariance())
    # Closed form (expected log-likelihood minus the registered KL) and single draws of Trace_ELBO: exact.
    torch.testing.assert_close(exact_elbo(model, guide, x).detach(), log_px, rtol=0, atol=1e-5)
    for _ in range(3):
        assert -Trace_ELBO().loss(model, guide, x) == pytest.approx(float(log_px.sum()), abs=1e-5)
    # The best diagonal guide (exact means, variances 1 / Lambda_jj) falls short by the mean-field gap.
    gap = mean_field_gap(lg)
    assert gap > 0.3  # correlated enough to show
    diag_model, diag_guide = linear_gaussian(guide="normal")
    diag_model.load_state_dict(model.state_dict())
    a, c = lg.posterior_affine()
    precision = torch.linalg.inv(lg.posterior_covariance())
    diag_guide.set_affine(a, c, torch.diagonal(precision).rsqrt())
    torch.testing.assert_close(exact_elbo(diag_model, diag_guide, x).detach(), log_px - gap, rtol=0, atol=1e-8)


def fitted_gap(model, guide) -> float:
    """log p(x) - ELBO averaged over 64 draws of x, after L-BFGS on the guide's closed-form ELBO."""
    lg = LinearGaussian.of(model)
    x = lg.marginal().sample((64,))
    optimizer = torch.optim.LBFGS(guide.parameters(), max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -exact_elbo(model, guide, x).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float((lg.log_marginal(x) - exact_elbo(model, guide, x).detach()).mean())


def test_fitting_the_amortised_guides_closes_the_gap_with_fullcov_and_not_with_the_diagonal(float64):
    """Fit each affine-encoder guide alone (the model stays exact) by L-BFGS on its closed-form ELBO."""
    gaps = {family: fitted_gap(*linear_gaussian(guide=family)) for family in ("fullcov", "normal")}
    floor = float(mean_field_gap(LinearGaussian.of(linear_gaussian()[0])))
    assert gaps["fullcov"] < 1e-6  # measured 7e-9, of a floor of 0.85 nats
    assert gaps["normal"] == pytest.approx(floor, rel=1e-6)  # the mean-field optimum, and no better
