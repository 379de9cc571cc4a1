"""Likelihoods: the continuous Bernoulli against its closed form with the normaliser and
against quadrature, the learned-sigma Gaussian against scipy, and every likelihood's support check."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro_vae.models.likelihoods import ContinuousBernoulliLikelihood, LearnedGaussianLikelihood
from scipy import integrate, stats

from pyro_vae import LIKELIHOODS, VAEConfig, build
from pyro_vae.closed_form import gaussian_kl
from tests.helpers import guide_trace

mpmath.mp.dps = 40

# lambda values: the tails, and a ladder towards 1/2 that crosses into torch's Taylor region (0.499, 0.501).
LAMBDAS = [1e-4, 0.02, 0.3, 0.45, 0.499, 0.4999, 0.5 - 1e-6, 0.5, 0.5 + 1e-7, 0.5 + 1e-4, 0.501, 0.502, 0.8, 0.999]


def cb_log_norm_exact(lam: float) -> float:
    """log C(lambda), C = 2 atanh(1 - 2 lambda) / (1 - 2 lambda), in 40-digit arithmetic; C(1/2) = 2 (the limit)."""
    lam = mpmath.mpf(lam)
    u = 1 - 2 * lam
    if u == 0:
        return float(mpmath.log(2))
    return float(mpmath.log(2 * mpmath.atanh(u) / u))


def logit(lam: float) -> float:
    return float(mpmath.log(mpmath.mpf(lam) / (1 - mpmath.mpf(lam))))


def cb(lam: float) -> torch.distributions.Distribution:
    """The likelihood's distribution for one pixel with parameter lambda (decoder output = logit lambda)."""
    return ContinuousBernoulliLikelihood()(torch.tensor([[logit(lam)]], dtype=torch.float64))


def test_normaliser_tends_to_two_at_one_half():
    for eps in (1e-2, 1e-4, 1e-6, 1e-8):
        for lam in (0.5 - eps, 0.5 + eps):
            c = math.exp(cb_log_norm_exact(lam))
            # C(1/2 + e) = 2 (1 + (2e)^2 / 3 + ...): the gap to 2 shrinks like e^2.
            assert abs(c - 2) == pytest.approx(8 / 3 * eps**2, rel=1e-3)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_continuous_bernoulli_log_density_equals_closed_form_with_normaliser(lam):
    x = np.array([0.0, 0.1, 0.37, 0.5, 0.93, 1.0])
    d = cb(lam)
    ours = np.array([d.log_prob(torch.tensor([[v]], dtype=torch.float64)).item() for v in x])
    expected = x * math.log(lam) + (1 - x) * math.log1p(-lam) + cb_log_norm_exact(lam)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lam", [1e-3, 0.2, 0.4999, 0.5, 0.5 + 1e-4, 0.7, 0.99])
def test_continuous_bernoulli_integrates_to_one_and_its_mean_is_the_true_mean(lam):
    d = cb(lam)

    def density(v: float) -> float:
        return math.exp(d.log_prob(torch.tensor([[v]], dtype=torch.float64)).item())

    total, _ = integrate.quad(density, 0, 1, epsabs=1e-13, epsrel=1e-12)
    assert total == pytest.approx(1.0, abs=1e-9)
    first_moment, _ = integrate.quad(lambda v: v * density(v), 0, 1, epsabs=1e-13, epsrel=1e-12)
    mean = ContinuousBernoulliLikelihood().mean(torch.tensor([[logit(lam)]], dtype=torch.float64)).item()
    assert mean == pytest.approx(first_moment, rel=1e-7)
    if abs(lam - 0.5) > 0.1:
        assert abs(mean - lam) > 0.05  # E[x] is not lambda: the Bernoulli mean would be the wrong image


@pytest.mark.parametrize("learn_prior", [False, True], ids=["fixed-prior", "learnable-prior"])
def test_meanfield_loss_with_continuous_bernoulli_equals_closed_form(float64, learn_prior):
    torch.manual_seed(0)
    cfg = VAEConfig(
        x_dim=6,
        z_dim=3,
        hidden=(7,),
        prior="gaussian",
        options={"prior": {"loc": [0.7, -1.2, 0.1], "scale": [2.3, 0.4, 1.1], "learn": learn_prior}},
        likelihood="continuous-bernoulli",
    )
    model, guide = build(cfg)
    if learn_prior:  # move the learnable mu_p, sigma_p away from their initial values
        with torch.no_grad():
            model.prior.loc.add_(0.3)
            model.prior.raw_scale.sub_(0.2)
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(1))
    trace = guide_trace(guide, x)
    loss = TraceMeanField_ELBO().loss(model, poutine.replay(guide, trace=trace), x)

    loc, scale = guide.loc_scale(x)
    mu_p = np.array([0.7, -1.2, 0.1]) + (0.3 if learn_prior else 0.0)
    sigma_p = np.array([2.3, 0.4, 1.1])
    if learn_prior:
        sigma_p = np.log1p(np.exp(np.log(np.expm1(sigma_p)) - 0.2))  # softplus(softplus^-1(sigma) - 0.2)
    kl = gaussian_kl(loc, scale, torch.from_numpy(mu_p), torch.from_numpy(sigma_p)).sum(-1)
    lam = torch.sigmoid(model.decoder(trace.nodes["z"]["value"])).detach().numpy()
    xs = x.numpy()
    log_norm = np.vectorize(cb_log_norm_exact)(lam)
    log_lik = (xs * np.log(lam) + (1 - xs) * np.log1p(-lam) + log_norm).sum(-1)
    assert loss == pytest.approx((kl.detach().numpy() - log_lik).sum(), rel=1e-6)


# --- the Gaussian with learned sigma --------------------------------------------------------------


@pytest.mark.parametrize("per_pixel", [False, True])
def test_learned_gaussian_log_density_matches_scipy(float64, per_pixel):
    lik = LearnedGaussianLikelihood(x_shape=5, init_sigma=0.8, per_pixel=per_pixel)
    assert lik.sigma.shape == ((5,) if per_pixel else (1,))
    torch.testing.assert_close(lik.sigma, torch.full_like(lik.sigma, 0.8))
    with torch.no_grad():
        lik.raw_sigma.normal_()
    g = torch.Generator().manual_seed(0)
    decoded, x = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    sigma = np.broadcast_to(lik.sigma.detach().numpy(), (5,))
    expected = stats.norm(decoded.numpy(), sigma).logpdf(x.numpy()).sum(-1)
    np.testing.assert_allclose(lik(decoded).log_prob(x).detach().numpy(), expected, rtol=1e-12)


def test_learned_sigma_reaches_the_maximum_likelihood_value_per_pixel(float64):
    """With the decoder output fixed, the MLE of each pixel's sigma is its root-mean-square residual."""
    g = torch.Generator().manual_seed(0)
    decoded = torch.randn(200, 4, generator=g)
    x = decoded + torch.randn(200, 4, generator=g) * torch.tensor([0.05, 0.3, 1.0, 2.5])
    lik = LearnedGaussianLikelihood(x_shape=4, per_pixel=True)
    opt = torch.optim.Adam(lik.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        (-lik(decoded).log_prob(x).sum()).backward()
        opt.step()
    rms = ((x - decoded) ** 2).mean(0).sqrt()
    torch.testing.assert_close(lik.sigma.detach(), rms, rtol=1e-3, atol=0)


def test_learned_sigma_has_a_floor():
    lik = LearnedGaussianLikelihood(x_shape=3, per_pixel=True, min_sigma=0.01)
    with torch.no_grad():
        lik.raw_sigma.fill_(-100.0)
    assert torch.all(lik.sigma >= 0.01) and torch.allclose(lik.sigma, torch.full((3,), 0.01))
    with pytest.raises(ValueError, match="must exceed min_sigma"):
        VAEConfig(
            x_dim=3,
            likelihood="gaussian-learned",
            options={"likelihood": {"sigma": 0.001, "min_sigma": 0.01}},
        )
    with pytest.raises(ValueError, match="min_sigma must be a finite number > 0"):
        VAEConfig(x_dim=3, likelihood="gaussian-learned", options={"likelihood": {"min_sigma": 0.0}})


def test_meanfield_loss_with_learned_sigma_equals_closed_form_and_sigma_gets_a_gradient(float64):
    torch.manual_seed(0)
    cfg = VAEConfig(
        x_dim=6,
        z_dim=3,
        hidden=(7,),
        prior="gaussian",
        options={"prior": {"loc": 0.3, "scale": 1.4}, "likelihood": {"sigma": 0.7, "per_pixel": True}},
        likelihood="gaussian-learned",
    )
    model, guide = build(cfg)
    assert "likelihood.raw_sigma" in dict(model.named_parameters())
    with torch.no_grad():
        model.likelihood.raw_sigma.normal_()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    trace = guide_trace(guide, x)
    loss = TraceMeanField_ELBO().differentiable_loss(model, poutine.replay(guide, trace=trace), x)
    loc, scale = guide.loc_scale(x)
    kl = gaussian_kl(loc, scale, 0.3, 1.4).sum(-1).detach().numpy()
    mean = model.decoder(trace.nodes["z"]["value"]).detach().numpy()
    log_lik = stats.norm(mean, model.likelihood.sigma.detach().numpy()).logpdf(x.numpy()).sum(-1)
    assert loss.item() == pytest.approx((kl - log_lik).sum(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, model.likelihood.raw_sigma)
    assert (grad.abs() > 0).all()


# --- every likelihood: support checks, binarisation flag, shapes -----------------------------------

BAD_DATA = {
    "bernoulli": [(torch.full((2, 4), 0.5), "needs binary data")],
    "gaussian": [
        (torch.tensor([[0.0, float("nan"), 1.0, 2.0]]), "needs finite data"),
        (torch.tensor([[0.0, float("inf"), 1.0, 2.0]]), "needs finite data"),
    ],
    "gaussian-learned": [(torch.tensor([[0.0, float("nan"), 1.0, 2.0]]), "needs finite data")],
    "continuous-bernoulli": [
        (torch.tensor([[0.0, 1.5, 0.5, 0.2]]), r"needs data in \[0, 1\]"),
        (torch.tensor([[-0.1, 0.5, 0.5, 0.2]]), r"needs data in \[0, 1\]"),
        (torch.tensor([[float("nan"), 0.5, 0.5, 0.2]]), r"needs data in \[0, 1\]"),
    ],
    "discretized-logistic": [
        (torch.tensor([[0.0, 1.5, 0.5, 0.2]]), r"needs pixel values in \[0, 1\]"),
        (torch.tensor([[0.0, 0.5, 1.0, 0.2]]), r"needs pixel values k/255 \(256 levels\)"),
    ],
}
GOOD_DATA = {
    "bernoulli": torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
    "gaussian": torch.tensor([[-3.0, 0.5, 7.0, 0.0]]),
    "gaussian-learned": torch.tensor([[-3.0, 0.5, 7.0, 0.0]]),
    "continuous-bernoulli": torch.tensor([[0.0, 0.25, 0.5, 1.0]]),
    "discretized-logistic": torch.tensor([[0.0, 1.0, 128.0, 255.0]]) / 255,
}


def test_every_registered_likelihood_is_covered():
    assert set(BAD_DATA) == set(LIKELIHOODS) == set(GOOD_DATA)


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_each_likelihood_rejects_data_outside_its_support_with_one_line(name):
    model, _ = build(VAEConfig(x_dim=4, likelihood=name, hidden=(3,)))
    model.likelihood.check_support(GOOD_DATA[name])  # accepted
    for bad, message in BAD_DATA[name]:
        with pytest.raises(ValueError, match=message) as err:
            model.likelihood.check_support(bad)
        assert "\n" not in str(err.value) and f"{name} likelihood" in str(err.value)


@pytest.mark.parametrize("name", sorted(GOOD_DATA))
def test_likelihood_interface_shapes_and_binarisation_flag(name):
    model, _ = build(VAEConfig(x_dim=4, likelihood=name, hidden=(3,)))
    decoded = torch.randn(3, 4)
    d = model.likelihood(decoded)
    assert d.event_shape == (4,) and d.batch_shape == (3,)
    assert model.likelihood.mean(decoded).shape == (3, 4)
    assert model.likelihood.binary_data is (name == "bernoulli")


@pytest.mark.parametrize("event_ndim", [1, 3], ids=["flat", "image"])
def test_bernoulli_likelihood_gives_torchs_bernoulli_log_density_to_the_bit(event_ndim):
    """The likelihood sums the cross-entropy before negating (one pass less over (K, N, D)): the same numbers as
    torch's Bernoulli(logits).to_event, bit for bit, also for logits of K particles against data of N rows, after
    Pyro's expand, and grey pixels still fail validation."""
    from pyro_vae.models.likelihoods import BernoulliLikelihood

    shape = (6,) if event_ndim == 1 else (1, 3, 2)
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(5, 7, *shape, generator=g)  # K = 5 particles, N = 7 rows
    x = torch.bernoulli(torch.full((7, *shape), 0.3), generator=g)
    ours = BernoulliLikelihood(event_ndim)(logits)
    torchs = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), event_ndim)
    assert ours.batch_shape == torchs.batch_shape == (5, 7) and ours.event_shape == torchs.event_shape
    assert torch.equal(ours.log_prob(x), torchs.log_prob(x))
    expanded = ours.expand((2, 5, 7))
    assert type(expanded) is type(ours) and torch.equal(expanded.log_prob(x), torchs.expand((2, 5, 7)).log_prob(x))
    with pytest.raises(ValueError, match="support"):
        BernoulliLikelihood(event_ndim)(logits).log_prob(torch.full_like(x, 0.5))
