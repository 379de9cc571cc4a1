"""Closed-form Gaussian KL (the line before eq. 40, and eq. 40) against torch and against quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from torch.distributions import Normal, kl_divergence

from pyro_vae.closed_form import gaussian_kl, standard_normal_kl

# (mu_q, sigma_q, mu_p, sigma_p), including sigma_q << sigma_p and sigma_q >> sigma_p.
CASES = [
    (0.0, 1.0, 0.0, 1.0),
    (0.3, 0.5, -0.2, 1.4),
    (1.5, 0.01, 0.0, 3.0),
    (-2.0, 20.0, 1.0, 0.5),
    (0.0, 1e-3, 0.0, 1.0),
    (4.0, 7.5, -3.0, 0.2),
]


def quad_kl(mu_q: float, sigma_q: float, mu_p: float, sigma_p: float) -> float:
    """KL(q || p) = int q log(q / p) dz by adaptive quadrature over mu_q +- 40 sigma_q."""
    q, p = stats.norm(mu_q, sigma_q), stats.norm(mu_p, sigma_p)

    def integrand(z: float) -> float:
        lq = q.logpdf(z)
        return math.exp(lq) * (lq - p.logpdf(z))

    lo, hi = mu_q - 40 * sigma_q, mu_q + 40 * sigma_q
    value, _ = integrate.quad(integrand, lo, hi, points=[mu_q], limit=500, epsabs=1e-13, epsrel=1e-11)
    return value


@pytest.mark.parametrize("mu_q,sigma_q,mu_p,sigma_p", CASES)
def test_general_kl_matches_torch_and_quadrature(mu_q, sigma_q, mu_p, sigma_p):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    ours = gaussian_kl(t(mu_q), t(sigma_q), t(mu_p), t(sigma_p)).item()
    theirs = kl_divergence(Normal(t(mu_q), t(sigma_q)), Normal(t(mu_p), t(sigma_p))).item()
    assert ours == pytest.approx(theirs, rel=1e-10, abs=1e-12)
    assert ours == pytest.approx(quad_kl(mu_q, sigma_q, mu_p, sigma_p), rel=1e-6, abs=1e-9)


def test_general_kl_random_draws_match_torch_and_quadrature():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mu_q, mu_p = rng.normal(0, 2, size=2)
        sigma_q, sigma_p = np.exp(rng.normal(0, 1.5, size=2))
        t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        ours = gaussian_kl(t(mu_q), t(sigma_q), t(mu_p), t(sigma_p)).item()
        theirs = kl_divergence(Normal(t(mu_q), t(sigma_q)), Normal(t(mu_p), t(sigma_p))).item()
        assert ours == pytest.approx(theirs, rel=1e-10, abs=1e-12)
        assert ours == pytest.approx(quad_kl(mu_q, sigma_q, mu_p, sigma_p), rel=1e-6, abs=1e-9)


def test_eq40_standard_case_equals_general_formula_summed_over_latents():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sigma = torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 + 0.05
    eq40 = standard_normal_kl(mu, torch.log(sigma**2))
    general = gaussian_kl(mu, sigma, 0.0, 1.0).sum(-1)
    torch_kl = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    torch.testing.assert_close(eq40, general, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eq40, torch_kl, rtol=1e-10, atol=1e-12)


def test_kl_is_asymmetric():
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    forward = gaussian_kl(t(0.0), t(0.5), t(1.0), t(2.0))
    backward = gaussian_kl(t(1.0), t(2.0), t(0.0), t(0.5))
    assert abs(forward.item() - backward.item()) > 0.5


finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    mu_q=st.floats(-10, 10, **finite),
    log_sq=st.floats(-5, 5, **finite),
    mu_p=st.floats(-10, 10, **finite),
    log_sp=st.floats(-5, 5, **finite),
)
def test_kl_nonnegative_and_zero_only_when_equal(mu_q, log_sq, mu_p, log_sp):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    kl = gaussian_kl(t(mu_q), t(math.exp(log_sq)), t(mu_p), t(math.exp(log_sp))).item()
    assert kl >= -1e-12  # eqs. 12-16
    same = gaussian_kl(t(mu_q), t(math.exp(log_sq)), t(mu_q), t(math.exp(log_sq))).item()
    assert abs(same) < 1e-12
    # Strictly positive once the distributions differ: a second-order lower bound around equality,
    # KL >= c * min(d^2, 1) for the standardised differences d (c = 0.1 is loose).
    d_mu = (mu_q - mu_p) / math.exp(log_sp)
    d_log = log_sq - log_sp
    gap = min(d_mu**2 + d_log**2, 1.0)
    if gap > 1e-6:
        assert kl > 0.05 * gap
