"""Evaluation: chunked importance sampling, ELBO and log p(x) against the linear-Gaussian truth, KL per dimension
against closed forms and quadrature, active units against a direct variance computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from pyro_vae import VAEConfig, build
from pyro_vae.closed_form import gaussian_kl
from pyro_vae.estimators import per_example_log_weights
from pyro_vae.estimators.log_weights import guess_plate_nesting
from pyro_vae.evaluation import active_units, evaluate, importance_sample_stats, kl_per_dimension, log_likelihood
from pyro_vae.linear_gaussian import LinearGaussian, exact_elbo, orthogonal_weight, set_guide_to_posterior


def linear_gaussian(x_dim=5, z_dim=2, sigma=0.5, seed=0, prior=None):
    torch.manual_seed(seed)
    model, guide = build(
        VAEConfig(
            x_dim=x_dim,
            z_dim=z_dim,
            decoder="linear",
            likelihood="gaussian",
            options={"encoder": {"hidden": ()}, "likelihood": {"sigma": sigma}},
        ),
        prior=prior,
    )
    with torch.no_grad():
        model.decoder.linear.weight.copy_(orthogonal_weight(x_dim, z_dim, torch.linspace(0.5, 2.0, z_dim)))
        model.decoder.linear.bias.copy_(torch.randn(x_dim))
    return model, guide


# The documented blocking (importance.py): blocks of min(N, max_rows // min(K, 128)) examples, chunks of
# min(K, max_rows // block) particles; with K = 9: 24 // 9 = 2 examples and 9 particles, then 1 and 4.
@pytest.mark.parametrize(("n", "max_rows", "block", "chunk"), [(10, 24, 2, 9), (10, 4, 1, 4)])
def test_chunked_importance_sampling_equals_the_unchunked_formula_on_the_same_draws(n, max_rows, block, chunk, float64):
    model, guide = linear_gaussian()
    lg = LinearGaussian.of(model)
    x = lg.marginal().sample((n,))
    set_guide_to_posterior(guide, model, scale_factor=1.5)
    k = 9
    pyro.set_rng_seed(3)
    elbo, log_px = importance_sample_stats(model, guide, x, num_samples=k, max_rows=max_rows)
    # The same draws, made by hand with the blocks and chunks above.
    pyro.set_rng_seed(3)
    guess_plate_nesting(model, guide, (x[:block],), {})  # the evaluation runs the guide once first
    rows = []
    for start in range(0, n, block):
        draws = [
            per_example_log_weights(
                model, guide, x[start : start + block], num_particles=min(chunk, k - done), plate_nesting=1
            )
            for done in range(0, k, chunk)
        ]
        rows.append(torch.cat(draws))
    log_w = torch.cat(rows, dim=1).detach()
    assert log_w.shape == (k, n)
    torch.testing.assert_close(log_px, torch.logsumexp(log_w, 0) - math.log(k))
    torch.testing.assert_close(elbo, log_w.mean(0))


def test_evaluate_on_the_linear_gaussian_model_matches_the_exact_values(float64):
    model, guide = linear_gaussian(x_dim=6, z_dim=3)
    lg = LinearGaussian.of(model)
    x = lg.marginal().sample((40,))
    set_guide_to_posterior(guide, model, scale_factor=1.3)
    pyro.set_rng_seed(0)
    result = evaluate(model, guide, x, num_samples=2000, max_rows=5000)

    log_px = lg.log_marginal(x)
    assert result.log_likelihood == pytest.approx(float(log_px.mean()), abs=0.01)
    # ELBO: mean of 2000 x 40 log weights; 4 standard errors from the closed form
    log_w = per_example_log_weights(model, guide, x, num_particles=200).detach()
    se = float(log_w.std()) / math.sqrt(2000 * 40)
    assert abs(result.elbo - float(exact_elbo(model, guide, x).mean())) < 4 * se
    assert result.gap == pytest.approx(result.log_likelihood - result.elbo)
    assert result.gap > 0.05  # the 1.3x guide is visibly off

    loc, scale = guide.loc_scale(x)
    expected_kl = gaussian_kl(loc, scale, 0.0, 1.0).mean(0).detach()
    np.testing.assert_allclose(result.kl_per_dimension, expected_kl.numpy(), rtol=1e-10)
    assert result.kl_total == pytest.approx(float(expected_kl.sum()))
    # posterior means are affine in x: Var_x of each is a quadratic form in the data covariance
    a, c = lg.posterior_affine()
    variances = np.var(x.numpy() @ a.numpy().T + c.numpy(), axis=0)
    np.testing.assert_allclose(result.posterior_mean_variance, variances, rtol=1e-8)
    assert result.active_units == int((variances > 0.01).sum()) == 3
    json.dumps(result.to_dict())  # the CLI writes it as JSON


def test_active_units_counts_dimensions_whose_posterior_mean_varies_over_the_data(float64):
    model, guide = linear_gaussian(x_dim=4, z_dim=4)
    x = torch.randn(500, 4)
    # E[z_j|x] = a_j x_j: Var = a_j^2 Var(x_j); a = (1, 0.05, 0.2, 0) -> about 1, 0.0025, 0.04, 0
    weight = torch.diag(torch.tensor([1.0, 0.05, 0.2, 0.0]))
    guide.set_affine(weight, torch.zeros(4), torch.full((4,), 0.5))
    count, variances = active_units(model, guide, x)
    expected = np.var(x.numpy() * np.array([1.0, 0.05, 0.2, 0.0]), axis=0)
    np.testing.assert_allclose(variances.numpy(), expected, rtol=1e-8)
    assert count == int((expected > 0.01).sum()) == 2


class StudentTPrior(nn.Module):
    """A factorised prior with no registered KL(Normal || StudentT): the per-dimension KL is Monte Carlo."""

    def __init__(self, z_dim: int, df: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("df", torch.tensor(df))
        self.z_dim = z_dim

    def forward(self):
        return dist.StudentT(self.df, torch.zeros(self.z_dim), torch.ones(self.z_dim)).to_event(1)


def test_kl_per_dimension_by_monte_carlo_matches_quadrature(float64):
    model, guide = linear_gaussian(x_dim=4, z_dim=2, prior=StudentTPrior(2))
    x = torch.randn(3, 4)
    torch.manual_seed(1)
    per_dim, total = kl_per_dimension(model, guide, x, num_samples=20000)
    loc, scale = (t.detach().numpy() for t in guide.loc_scale(x))

    def kl_quad(m, s):
        q, p = stats.norm(m, s), stats.t(3.0)
        return integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), m - 12 * s, m + 12 * s)[0]

    expected = np.array([[kl_quad(loc[i, j], scale[i, j]) for j in range(2)] for i in range(3)]).mean(0)
    # 3 x 20000 draws of a log ratio with std < 1: standard error < 0.005; tolerance 0.02
    np.testing.assert_allclose(per_dim.numpy(), expected, atol=0.02)
    assert total == pytest.approx(float(per_dim.sum()))


class OneComponentMixture(nn.Module):
    """N(mu, diag sigma^2) written as a one-component mixture: no per-dimension KL, the total is known."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    def forward(self):
        components = dist.Normal(self.loc[None], self.scale[None]).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(1)), components)


def test_kl_for_a_prior_that_does_not_factorise_is_total_only(float64):
    prior_loc, prior_scale = torch.tensor([0.5, -0.3]), torch.tensor([1.2, 0.8])
    model, guide = linear_gaussian(x_dim=4, z_dim=2, prior=OneComponentMixture(prior_loc, prior_scale))
    x = torch.randn(5, 4)
    torch.manual_seed(2)
    per_dim, total = kl_per_dimension(model, guide, x, num_samples=20000)
    assert per_dim is None
    loc, scale = guide.loc_scale(x)
    expected = float(gaussian_kl(loc, scale, prior_loc, prior_scale).sum(-1).mean())
    assert total == pytest.approx(expected, abs=0.02)  # 5 x 20000 draws: standard error < 0.005


def test_log_likelihood_rejects_bad_sample_counts():
    model, guide = build(VAEConfig(x_dim=4, z_dim=2, hidden=(3,)))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        log_likelihood(model, guide, torch.zeros(2, 4), num_samples=0)
