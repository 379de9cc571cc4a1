"""A user-defined prior is one small class plus, optionally, one register_kl.

Runs the example block of docs/priors.md, checks its registered KL against scipy quadrature, and shows the three cases:
no KL registered (Monte Carlo), one registered by the user, and one registered by torch already (Laplace).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from scipy import integrate, stats
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae import VAEConfig, build
from pyro_vae.closed_form import LOG_2PI
from pyro_vae.kl_check import ANALYTIC, MONTE_CARLO, kl_kinds
from tests.helpers import guide_trace

README = Path(__file__).resolve().parents[1] / "docs" / "priors.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- user-prior example:[^\n]*-->\n```python\n(.*?)\n```", text, re.S)
    assert match, "the user-prior example block of docs/priors.md is missing"
    return match.group(1)


@pytest.fixture(scope="module")
def example():
    """Execute the docs' block once (it registers a KL globally, so its 'before' line must run first)."""
    namespace: dict = {"__name__": "readme_example"}
    out = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), str(README), "exec"), namespace)
    namespace["printed"] = out.getvalue().splitlines()
    return namespace


def quad_kl(logq, logp, lo: float, hi: float, points: list[float]) -> float:
    """KL(q || p) = int q log(q / p) dz by adaptive quadrature."""
    inside = [p for p in points if lo < p < hi]
    value, _ = integrate.quad(
        lambda z: math.exp(logq(z)) * (logq(z) - logp(z)),
        lo,
        hi,
        points=inside or None,
        limit=500,
        epsabs=1e-13,
        epsrel=1e-11,
    )
    return value


CASES = [(0.3, 0.5, 0.0, 1.0, 2.0), (-1.0, 2.0, 0.5, 0.7, 0.4), (2.0, 0.1, -1.0, 3.0, 1.0), (0.0, 1e-2, 0.0, 1.0, 5.0)]


def test_readme_example_runs_and_the_kl_kind_flips_once_registered(example):
    assert example["printed"] == [str({"z": MONTE_CARLO}), str({"z": ANALYTIC})]
    losses = example["losses"]
    assert len(losses) == 50
    # It trains: 50 Adam steps on one fixed batch lower the loss well beyond its step-to-step noise.
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 3 * np.std(losses[:10])


@pytest.mark.parametrize("mu,s,m,b,kappa", CASES)
def test_registered_kl_matches_quadrature_with_scipys_asymmetric_laplace(example, mu, s, m, b, kappa):
    t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
    q, p = dist.Normal(t(mu), t(s)), dist.AsymmetricLaplace(t(m), t(b), t(kappa))
    Q, P = stats.norm(mu, s), stats.laplace_asymmetric(kappa, loc=m, scale=b)
    zs = np.linspace(m - 5, m + 5, 11)  # same parametrisation as scipy: left scale b kappa, right b / kappa
    np.testing.assert_allclose(p.log_prob(torch.from_numpy(zs)).numpy(), P.logpdf(zs), rtol=1e-12)
    expected = quad_kl(Q.logpdf, P.logpdf, mu - 40 * s, mu + 40 * s, [m])
    assert example["kl_normal_asymmetric_laplace"](q, p).item() == pytest.approx(expected, rel=1e-8)
    assert kl_divergence(q, p).item() == pytest.approx(expected, rel=1e-8)  # dispatch finds it


def test_at_kappa_one_the_registered_kl_is_torchs_normal_laplace_kl(example):
    g = torch.Generator().manual_seed(0)
    mu, m = torch.randn(2, 20, generator=g, dtype=torch.float64)
    s, b = torch.rand(2, 20, generator=g, dtype=torch.float64) + 0.1
    ours = example["kl_normal_asymmetric_laplace"](dist.Normal(mu, s), dist.AsymmetricLaplace(m, b, torch.ones(20)))
    torch.testing.assert_close(ours, kl_divergence(dist.Normal(mu, s), dist.Laplace(m, b)), rtol=1e-12, atol=1e-12)


def test_meanfield_elbo_uses_the_registered_kl(example, float64):
    torch.manual_seed(1)
    prior = example["AsymmetricLaplacePrior"](z_dim=2, scale=0.8, asymmetry=1.7)
    model, guide = build(VAEConfig(x_dim=6, z_dim=2, hidden=(5,)), prior=prior)
    x = torch.bernoulli(torch.full((4, 6), 0.4), generator=torch.Generator().manual_seed(2))
    trace = guide_trace(guide, x)
    replayed = poutine.replay(guide, trace=trace)
    meanfield = TraceMeanField_ELBO().loss(model, replayed, x)

    loc, scale = (t.detach().numpy() for t in guide.loc_scale(x))
    P = stats.laplace_asymmetric(1.7, loc=0.0, scale=0.8)
    kl = sum(
        quad_kl(stats.norm(mu, s).logpdf, P.logpdf, mu - 40 * s, mu + 40 * s, [0.0])
        for mu, s in zip(loc.ravel(), scale.ravel(), strict=True)
    )
    probs = torch.sigmoid(model.decoder(trace.nodes["z"]["value"])).detach().numpy()
    log_lik = stats.bernoulli(probs).logpmf(x.numpy()).sum()
    assert meanfield == pytest.approx(kl - log_lik, rel=1e-8)
    assert abs(meanfield - Trace_ELBO().loss(model, replayed, x)) > 1e-3  # not the one-sample estimate


class LaplacePrior(nn.Module):
    def __init__(self, z_dim: int, scale: float = 1.0):
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.full((z_dim,), scale))

    def forward(self):
        return dist.Laplace(self.loc, self.scale).to_event(1)


class StudentTPrior(nn.Module):
    def __init__(self, z_dim: int, df: float = 3.0):
        super().__init__()
        self.register_buffer("df", torch.full((z_dim,), df))
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self):
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)


def folded_normal_kl(mu: np.ndarray, s: np.ndarray, b: float) -> np.ndarray:
    """KL(N(mu, s^2) || Laplace(0, b)) = -1/2 log(2 pi e s^2) + log 2b + E|z| / b,
    E|z| = s sqrt(2/pi) exp(-mu^2 / 2 s^2) + mu (1 - 2 Phi(-mu / s)), the folded-normal mean."""
    folded_mean = s * math.sqrt(2 / math.pi) * np.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * stats.norm.cdf(-mu / s))
    return -0.5 * (LOG_2PI + 1 + 2 * np.log(s)) + math.log(2 * b) + folded_mean / b


def test_laplace_prior_is_analytic_out_of_the_box(float64):
    for mu, s, b in [(0.3, 0.5, 1.0), (-2.0, 1.5, 0.4), (0.0, 0.05, 2.0)]:
        expected = quad_kl(stats.norm(mu, s).logpdf, stats.laplace(0, b).logpdf, mu - 40 * s, mu + 40 * s, [0.0])
        assert folded_normal_kl(np.array(mu), np.array(s), b) == pytest.approx(expected, rel=1e-8)
    torch.manual_seed(1)
    model, guide = build(VAEConfig(x_dim=6, z_dim=2, hidden=(5,)), prior=LaplacePrior(2, scale=0.7))
    x = torch.bernoulli(torch.full((4, 6), 0.4), generator=torch.Generator().manual_seed(2))
    assert kl_kinds(model, guide, x) == {"z": ANALYTIC}
    trace = guide_trace(guide, x)
    meanfield = TraceMeanField_ELBO().loss(model, poutine.replay(guide, trace=trace), x)
    loc, scale = (t.detach().numpy() for t in guide.loc_scale(x))
    probs = torch.sigmoid(model.decoder(trace.nodes["z"]["value"])).detach().numpy()
    log_lik = stats.bernoulli(probs).logpmf(x.numpy()).sum()
    assert meanfield == pytest.approx(folded_normal_kl(loc, scale, 0.7).sum() - log_lik, rel=1e-8)


def test_student_t_prior_trains_with_the_monte_carlo_kl(float64):
    torch.manual_seed(1)
    model, guide = build(VAEConfig(x_dim=6, z_dim=2, hidden=(5,)), prior=StudentTPrior(2))
    x = torch.bernoulli(torch.full((4, 6), 0.4), generator=torch.Generator().manual_seed(2))
    assert kl_kinds(model, guide, x) == {"z": MONTE_CARLO}
    replayed = poutine.replay(guide, trace=guide_trace(guide, x))
    assert TraceMeanField_ELBO().loss(model, replayed, x) == pytest.approx(
        Trace_ELBO().loss(model, replayed, x), rel=1e-12
    )
