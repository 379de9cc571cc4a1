"""The power spherical guide and the uniform prior on the sphere (hyperspherical latents).

Truths: the sphere itself (|z| = 1), quadrature over S^2 (both densities integrate to 1; the KL as an integral),
Monte Carlo estimates within 4 standard errors (the registered KL, the mean and the variance), and for a VAE trained
on the digits, log p(x) = integral of p(x|z) p(z) over S^2 by quadrature against ``log_likelihood``'s importance
sampling.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro_vae.guides import PowerSpherical
from pyro_vae.models.priors import UniformSphere
from torch.distributions import kl_divergence

from pyro_vae import TrainConfig, VAEConfig, build, log_likelihood, train
from pyro_vae.data import load_data
from pyro_vae.estimators import per_example_log_weights
from pyro_vae.kl_check import kl_kinds

CONCENTRATIONS = [0.01, 1.0, 20.0, 1e4]


def sphere_quadrature(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes z (n * 2n, 3) on S^2 and weights summing to 4 pi: Gauss-Legendre in cos(theta) times the periodic
    trapezoid rule in phi (exact for smooth integrands as n grows)."""
    c, wc = np.polynomial.legendre.leggauss(n)
    phi = np.arange(2 * n) * (np.pi / n)
    c_, phi_ = np.meshgrid(c, phi, indexing="ij")
    s = np.sqrt(1 - c_**2)
    z = np.stack([s * np.cos(phi_), s * np.sin(phi_), c_], -1).reshape(-1, 3)
    w = (wc[:, None] * np.full(2 * n, np.pi / n)[None, :]).reshape(-1)
    return torch.from_numpy(z), torch.from_numpy(w)


def random_posterior(dim: int, concentrations: list[float], seed: int = 0) -> PowerSpherical:
    g = torch.Generator().manual_seed(seed)
    loc = F.normalize(torch.randn(len(concentrations), dim, generator=g), dim=-1)
    return PowerSpherical(loc, torch.tensor(concentrations))


@pytest.mark.parametrize("dim", [2, 3, 10])
def test_samples_lie_on_the_sphere(dim, float64):
    z = random_posterior(dim, CONCENTRATIONS).rsample((2000,))
    assert z.shape == (2000, len(CONCENTRATIONS), dim)
    assert float((z.norm(dim=-1) - 1).abs().max()) < 1e-6
    assert float((UniformSphere(dim, (3,)).rsample((2000,)).norm(dim=-1) - 1).abs().max()) < 1e-6


def test_both_densities_integrate_to_one_over_s2(float64):
    z, w = sphere_quadrature()
    assert float((w * UniformSphere(3).log_prob(z).exp()).sum()) == pytest.approx(1.0, abs=1e-12)
    q = random_posterior(3, [0.01, 1.0, 20.0, 200.0])
    mass = (w[:, None] * q.log_prob(z[:, None, :]).exp()).sum(0)
    # (1 + mu^T z)^kappa has a cusp at z = -mu for small kappa, where the rule converges slowly (2e-7 at 0.01).
    torch.testing.assert_close(mass, torch.ones(4), rtol=0, atol=1e-6)


def test_registered_kl_equals_quadrature_over_s2(float64):
    z, w = sphere_quadrature()
    q = random_posterior(3, [0.01, 1.0, 20.0, 200.0], seed=1)
    log_q = q.log_prob(z[:, None, :])
    by_quadrature = (w[:, None] * log_q.exp() * (log_q - UniformSphere(3).log_prob(z)[:, None])).sum(0)
    kl = kl_divergence(q, UniformSphere(3, (4,)))
    assert kl.shape == (4,)
    torch.testing.assert_close(kl, by_quadrature, rtol=0, atol=1e-7)  # measured 4e-8 at kappa = 0.01 (the cusp)


@pytest.mark.parametrize("dim", [2, 3, 10])
def test_registered_kl_mean_and_variance_agree_with_monte_carlo_within_4_se(dim, float64):
    q = random_posterior(dim, CONCENTRATIONS, seed=dim)
    torch.manual_seed(dim)
    n = 200_000
    z = q.rsample((n,))
    log_ratio = q.log_prob(z) - UniformSphere(dim).log_prob(z)
    kl = kl_divergence(q, UniformSphere(dim, (len(CONCENTRATIONS),)))
    assert ((log_ratio.mean(0) - kl).abs() < 4 * log_ratio.std(0) / math.sqrt(n) + 1e-12).all()
    assert ((z.mean(0) - q.mean).abs() < 4 * z.std(0) / math.sqrt(n) + 1e-12).all()
    # Var of the sample variance is about (m4 - var^2) / n.
    centred = (z - q.mean) ** 2
    assert ((centred.mean(0) - q.variance).abs() < 4 * centred.std(0) / math.sqrt(n) + 1e-12).all()


def test_in_the_model_the_kl_is_analytic_with_the_batch_shape_of_the_data():
    model, guide = build(VAEConfig(x_dim=8, z_dim=3, hidden=(8,), prior="uniform-sphere", guide="power-spherical"))
    x = torch.bernoulli(torch.rand(6, 8))
    assert kl_kinds(model, guide, x) == {"z": "analytic"}
    trace = pyro.poutine.trace(model).get_trace(x)
    prior = trace.nodes["z"]["fn"]
    assert isinstance(prior, UniformSphere) and prior.batch_shape == (6,)
    q = guide.posterior(x)
    assert (q.batch_shape, q.event_shape, q.mean.shape) == ((6,), (3,), (6, 3))
    # Two estimators of the same ELBO: the analytic-KL one and Trace_ELBO's log p(x, z) - log q(z|x), 4 SE apart.
    with torch.no_grad():
        meanfield = torch.tensor([TraceMeanField_ELBO().loss(model, guide, x) for _ in range(400)])
        trace = torch.tensor([Trace_ELBO().loss(model, guide, x) for _ in range(400)])
    se = math.sqrt((meanfield.var() + trace.var()) / 400)
    assert abs(float(meanfield.mean() - trace.mean())) < 4 * se
    assert meanfield.std() < trace.std()  # the analytic KL removes part of the noise


def log_px_by_quadrature(model, x: torch.Tensor, n: int) -> torch.Tensor:
    """log p(x_i) = log sum_g w_g p(x_i | z_g) / (4 pi), over the product rule's nodes z_g on S^2."""
    z, w = sphere_quadrature(n)
    with torch.no_grad():
        log_lik = torch.cat([model.likelihood_dist(zb.float()).log_prob(x[:, None]) for zb in z.split(20_000)], -1)
    return torch.logsumexp(log_lik.double() + torch.log(w) - math.log(4 * math.pi), -1)


@pytest.mark.slow
def test_the_model_trains_and_log_likelihood_matches_quadrature_over_the_sphere(tmp_path):
    data = load_data("digits")
    small = dict(z_dim=3, hidden=(64,), prior="uniform-sphere", guide="power-spherical", threads=1, batch_size=64)
    # KL warm-up: without it the posteriors sit at the concentration floor for the first ~10 epochs (uninformative)
    untrained = train(
        TrainConfig.for_data(data, **small, epochs=1, lr=1e-12), tmp_path / "u", progress=False, figures=False
    ).metrics[-1]["test_elbo"]
    result = train(
        TrainConfig.for_data(data, **small, epochs=20, kl_warmup=5), tmp_path / "run", progress=False, figures=False
    )
    assert result.metrics[-1]["kl"] == {"z": "analytic"}
    assert result.metrics[-1]["test_elbo"] > untrained + 15.0  # measured -25.3 against -47.2
    assert result.metrics[-1]["test_kl"] > 1.0  # z is used (measured 2.1 nats), so the integral below is not flat
    model, guide = result.model, result.guide
    x = result.data.test_x_eval[:12]
    exact = log_px_by_quadrature(model, x, 300)
    torch.testing.assert_close(exact, log_px_by_quadrature(model, x, 200), rtol=0, atol=1e-6)  # converged
    pyro.set_rng_seed(0)
    estimate = log_likelihood(model, guide, x, num_samples=4000).double()
    with torch.no_grad():
        w = per_example_log_weights(model, guide, x, num_particles=4000).double()
    # Delta method: sd(log mean w) ~ sd(w) / (sqrt(K) mean(w)), with w rescaled by its maximum.
    w = (w - w.max(0).values).exp()
    se = w.std(0) / (w.mean(0) * math.sqrt(4000))
    assert ((estimate - exact).abs() < 4 * se + 1e-4).all(), (estimate - exact, se)  # measured at most 1.6 SE
