"""Beta scaling must reach the latent sites of both model and guide (issue: item 6)."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import BetaScaled, LatentScale, VAEConfig, build
from pyro_vae.beta import cyclical_beta, kl_beta, warmup_beta
from tests.helpers import closed_form_terms, guide_trace

BETA = 0.25


def setup():
    torch.manual_seed(0)
    cfg = VAEConfig(x_dim=6, z_dim=3, prior="gaussian", options={"prior": {"loc": 0.3, "scale": 1.5}}, hidden=(7,))
    model, guide = build(cfg)
    x = torch.bernoulli(torch.full((5, 6), 0.4), generator=torch.Generator().manual_seed(1))
    return model, guide, x


def test_meanfield_beta_loss_is_recon_plus_beta_kl_exactly(float64):
    model, guide, x = setup()
    scaled = BetaScaled(model, guide, beta=BETA)
    trace = guide_trace(guide, x)
    kl, log_lik = closed_form_terms(model, guide, x, trace.nodes["z"]["value"])
    expected = (-log_lik + BETA * kl).sum()
    loss = TraceMeanField_ELBO().loss(scaled.model, poutine.replay(scaled.guide, trace=trace), x)
    assert loss == pytest.approx(expected.item(), rel=1e-10)
    # And beta actually matters: the unscaled loss is different by (1 - beta) * KL.
    plain = TraceMeanField_ELBO().loss(model, poutine.replay(guide, trace=trace), x)
    assert plain - loss == pytest.approx(((1 - BETA) * kl).sum().item(), rel=1e-10)


def _mean_and_se(fn, n_calls: int = 100) -> tuple[float, float]:
    values = []
    for r in range(n_calls):
        pyro.set_rng_seed(500 + r)
        values.append(fn())
    t = torch.tensor(values)
    return t.mean().item(), (t.std() / n_calls**0.5).item()


def test_trace_elbo_beta_agrees_in_expectation(float64):
    model, guide, x = setup()
    scaled = BetaScaled(model, guide, beta=BETA)
    kwargs = dict(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
    trace_elbo, mf = Trace_ELBO(**kwargs), TraceMeanField_ELBO(**kwargs)

    def paired():
        seed = torch.randint(0, 2**31 - 1, ()).item()
        pyro.set_rng_seed(seed)
        a = trace_elbo.loss(scaled.model, scaled.guide, x)
        pyro.set_rng_seed(seed)
        return a - mf.loss(scaled.model, scaled.guide, x)

    mean, se = _mean_and_se(paired)
    assert abs(mean) < 4 * se, f"mean {mean:.4g} vs SE {se:.4g}"


def test_scaling_only_the_model_is_not_beta_kl(float64):
    """Why both sites: model-only scaling is ignored by TraceMeanField_ELBO and biases Trace_ELBO."""
    model, guide, x = setup()
    model_only = lambda x: LatentScale(BETA)(model)(x)  # noqa: E731
    trace = guide_trace(guide, x)
    kl, log_lik = closed_form_terms(model, guide, x, trace.nodes["z"]["value"])
    target = (-log_lik + BETA * kl).sum().item()
    unscaled = (-log_lik + kl).sum().item()

    mf = TraceMeanField_ELBO().loss(model_only, poutine.replay(guide, trace=trace), x)
    assert mf == pytest.approx(unscaled, rel=1e-10)  # beta silently ignored
    assert abs(mf - target) > 0.1

    # Trace_ELBO with model-only scaling estimates -recon - beta E log p(z) + E log q(z), not -recon + beta KL.
    kwargs = dict(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
    both = BetaScaled(model, guide, beta=BETA)

    def paired():
        seed = torch.randint(0, 2**31 - 1, ()).item()
        pyro.set_rng_seed(seed)
        a = Trace_ELBO(**kwargs).loss(model_only, guide, x)
        pyro.set_rng_seed(seed)
        return a - Trace_ELBO(**kwargs).loss(both.model, both.guide, x)

    mean, se = _mean_and_se(paired)
    assert abs(mean) > 10 * se, f"model-only scaling should differ: mean {mean:.4g}, SE {se:.4g}"


def test_gaussian_prior_uses_its_own_mu_and_sigma_in_the_kl(float64):
    model, guide, x = setup()
    trace = guide_trace(guide, x)
    loc, scale = guide.loc_scale(x)
    from pyro_vae.closed_form import standard_normal_kl

    loss = TraceMeanField_ELBO().loss(model, poutine.replay(guide, trace=trace), x)
    kl_general, log_lik = closed_form_terms(model, guide, x, trace.nodes["z"]["value"])
    kl_standard = standard_normal_kl(loc, torch.log(scale**2))
    assert loss == pytest.approx((kl_general - log_lik).sum().item(), rel=1e-10)
    assert abs(loss - (kl_standard - log_lik).sum().item()) > 0.1


def test_warmup_is_linear_from_zero_to_beta():
    assert [warmup_beta(e, 0.8, 4) for e in range(6)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert warmup_beta(0, 0.8, 0) == 0.8


def test_negative_beta_is_rejected():
    model, guide, _ = setup()
    with pytest.raises(ValueError, match="beta must be"):
        BetaScaled(model, guide, beta=-1)


def test_cyclical_schedule_matches_the_papers_formula_by_hand():
    # Fu et al. 2019, eq. 6, per epoch: T = 10 epochs, M = 3 cycles, R = 0.5. A cycle is ceil(10 / 3) = 4 epochs;
    # tau = (e mod 4) / (10 / 3) = 0, 0.3, 0.6, 0.9 within a cycle, beta_t = beta * min(1, tau / 0.5).
    by_hand = [0.0, 0.6, 1.0, 1.0, 0.0, 0.6, 1.0, 1.0, 0.0, 0.6]
    assert [cyclical_beta(e, 2.0, 10, 3, 0.5) for e in range(10)] == pytest.approx([2.0 * b for b in by_hand])
    # T = 8, M = 2, R = 0.25: cycles of 4 epochs, tau = 0, 0.25, 0.5, 0.75 -> 0, 1, 1, 1.
    assert [cyclical_beta(e, 1.0, 8, 2, 0.25) for e in range(8)] == [0.0, 1.0, 1.0, 1.0] * 2
    # One cycle with R = 1 is the linear warm-up over the whole run.
    assert [cyclical_beta(e, 0.8, 4, 1, 1.0) for e in range(4)] == pytest.approx([0.0, 0.2, 0.4, 0.6])
    # kl_beta picks the schedule; linear is warmup_beta unchanged.
    assert kl_beta(3, 0.8, "linear", warmup_epochs=4, epochs=10) == warmup_beta(3, 0.8, 4)
    assert kl_beta(5, 2.0, "cyclical", epochs=10, cycles=3, ratio=0.5) == cyclical_beta(5, 2.0, 10, 3, 0.5)
