"""The central claim: Pyro's ELBOs on our model/guide optimise exactly the derived loss (eq. 43)."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAEConfig, build
from pyro_vae.closed_form import batch_loss
from tests.helpers import closed_form_loss, closed_form_terms, guide_trace

PRIORS = [
    dict(prior="standard"),
    dict(
        prior="gaussian",
        options={"prior": {"loc": [0.7, -1.2, 0.1], "scale": [2.3, 0.4, 1.1]}},
    ),
    dict(
        prior="gaussian",
        options={"prior": {"loc": 0.5, "scale": 1.7, "learn": True}},
    ),
]
LIKELIHOODS = ["bernoulli", "gaussian"]


def make(prior_kw, likelihood, x_dim=6, z_dim=3, n=5, sigma=1.0):
    torch.manual_seed(0)
    prior_kw = dict(prior_kw)
    options = {**prior_kw.pop("options", {}), **({"likelihood": {"sigma": sigma}} if likelihood == "gaussian" else {})}
    cfg = VAEConfig(x_dim=x_dim, z_dim=z_dim, likelihood=likelihood, hidden=(7,), options=options, **prior_kw)
    model, guide = build(cfg)
    g = torch.Generator().manual_seed(1)
    if likelihood == "bernoulli":
        x = torch.bernoulli(torch.full((n, x_dim), 0.4), generator=g)
    else:
        x = torch.rand(n, x_dim, generator=g)
    return model, guide, x


@pytest.mark.parametrize("prior_kw", PRIORS, ids=["standard", "gaussian-fixed", "gaussian-learnable"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_meanfield_loss_and_gradients_equal_closed_form(float64, prior_kw, likelihood):
    model, guide, x = make(prior_kw, likelihood, sigma=0.6)
    trace = guide_trace(guide, x)
    replayed = poutine.replay(guide, trace=trace)

    elbo = TraceMeanField_ELBO()
    loss = elbo.differentiable_loss(model, replayed, x)
    expected = closed_form_loss(model, guide, x, trace)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert elbo.loss(model, replayed, x) == pytest.approx(expected.item(), rel=1e-6)

    params = list(model.parameters()) + list(guide.parameters())
    g_pyro = torch.autograd.grad(loss, params, retain_graph=True)
    g_closed = torch.autograd.grad(expected, params)
    assert len(params) > 0
    for a, b in zip(g_pyro, g_closed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def test_meanfield_with_L_particles_equals_eq43_with_L_samples(float64):
    """Eq. 43's (1/L) sum_l over L reparameterised draws equals TraceMeanField_ELBO(num_particles=L)."""
    model, guide, x = make(PRIORS[1], "bernoulli")
    L = 4
    pyro.set_rng_seed(123)
    loss = TraceMeanField_ELBO(num_particles=L).loss(model, guide, x)
    # The ELBO draws one guide trace per particle, in order; the model is replayed, drawing nothing.
    pyro.set_rng_seed(123)
    zs = [guide_trace(guide, x).nodes["z"]["value"] for _ in range(L)]
    terms = [closed_form_terms(model, guide, x, z) for z in zs]
    kl = terms[0][0]
    log_lik = torch.stack([t[1] for t in terms])
    assert loss == pytest.approx(batch_loss(kl, log_lik).item(), rel=1e-6)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_trace_elbo_is_unbiased_for_the_meanfield_loss(float64, likelihood):
    """Mean of (Trace_ELBO - TraceMeanField_ELBO) over 10,000 draws at the same z is 0 within 4 SE."""
    model, guide, x = make(PRIORS[1], likelihood)
    calls, per_call = 100, 100
    diffs = []
    for r in range(calls):
        kwargs = dict(num_particles=per_call, vectorize_particles=True, max_plate_nesting=1)
        pyro.set_rng_seed(1000 + r)
        trace_value = Trace_ELBO(**kwargs).loss(model, guide, x)
        pyro.set_rng_seed(1000 + r)  # same seed: the same z draws for both
        mf_value = TraceMeanField_ELBO(**kwargs).loss(model, guide, x)
        diffs.append(trace_value - mf_value)
    d = torch.tensor(diffs)
    se = d.std() / calls**0.5  # each entry is already a mean of `per_call` draws
    assert d.var() > 0  # Trace_ELBO is a Monte Carlo estimate of the KL, not the KL itself
    assert abs(d.mean()) < 4 * se, f"mean {d.mean():.4g}, SE {se:.4g}"
