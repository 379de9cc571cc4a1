"""Free bits (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow"): the
``FreeBitsELBO`` loss against one written out at a fixed z, lambda = 0 against Pyro's TraceMeanField_ELBO, the
refusals, and a run whose reported test ELBO stays the true ELBO."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_vae.beta import beta_input
from pyro_vae.closed_form import bernoulli_log_likelihood
from pyro_vae.config import TrainConfig, VAEConfig
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.estimators import FreeBitsELBO, make_training_elbo
from pyro_vae.registry import build
from pyro_vae.training import train


def _pair_and_batch():
    pyro.set_rng_seed(3)
    model, guide = build(VAEConfig(x_dim=6, z_dim=4, hidden=(5,)))
    x = torch.bernoulli(torch.full((7, 6), 0.4))
    return model, guide, x


def _loss_at(elbo, model, guide, x, z, *args):
    """``elbo``'s loss with the guide's draw replaced by ``z`` (the model and guide given ``x, *args``)."""
    guide_trace = poutine.trace(guide).get_trace(x, *args)
    guide_trace.nodes["z"]["value"] = z
    return elbo.loss(model, poutine.replay(guide, trace=guide_trace), x, *args)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_free_bits_loss_equals_the_papers_objective_written_out(float64, beta):
    model, guide, x = _pair_and_batch()
    n = x.shape[0]
    with torch.no_grad():
        z = torch.randn(n, 4)
        loc, scale = guide.loc_scale(x)
        # KL(N(mu, s^2) || N(0, 1)) per example and dimension, then averaged over the minibatch.
        kl_j = (0.5 * (loc**2 + scale**2 - 1.0) - torch.log(scale)).mean(0)
        lam = kl_j.sort().values[1:3].mean().item()  # two dimensions below the floor, two above
        assert (kl_j < lam).sum() == 2
        recon = bernoulli_log_likelihood(x, model.decoder(z)).sum()
        by_hand = -recon + beta * n * torch.clamp(kl_j, min=lam).sum()
        elbo = FreeBitsELBO(lam, max_plate_nesting=1)
        loss = _loss_at(elbo, beta_input(model), beta_input(guide), x, z, torch.tensor(beta))
    assert loss == pytest.approx(by_hand.item(), rel=1e-12)


def test_lambda_zero_is_pyros_meanfield_elbo(float64):
    model, guide, x = _pair_and_batch()
    z = torch.randn(x.shape[0], 4)
    with torch.no_grad():
        plain = _loss_at(TraceMeanField_ELBO(max_plate_nesting=1), model, guide, x, z)
        free = _loss_at(FreeBitsELBO(0.0, max_plate_nesting=1), model, guide, x, z)
    assert free == pytest.approx(plain, rel=1e-12)
    # And a run with free_bits = 0 trains with the plain estimator itself, not a re-derivation of it.
    assert type(make_training_elbo("meanfield", free_bits=0.0)) is TraceMeanField_ELBO
    assert type(make_training_elbo("meanfield", free_bits=0.5)) is FreeBitsELBO


def test_free_bits_floor_moves_the_gradient_only_below_the_floor(float64):
    # Above the floor the KL's gradient is the ELBO's; a dimension below it gets none from the KL term.
    model, guide, x = _pair_and_batch()
    z = torch.randn(x.shape[0], 4)
    params = list(guide.parameters())
    grads = {}
    for lam in (0.0, 1e6):  # 1e6: every dimension below the floor, the KL term is a constant
        loss = FreeBitsELBO(lam, max_plate_nesting=1).differentiable_loss(
            model, poutine.replay(guide, trace=_fixed(guide, x, z)), x
        )
        grads[lam] = torch.autograd.grad(loss, params, allow_unused=True)
    loc, scale = guide.loc_scale(x)
    kl = (0.5 * (loc**2 + scale**2 - 1.0) - torch.log(scale)).sum()  # the KL written out, summed over the batch
    kl_grads = torch.autograd.grad(kl, params, allow_unused=True)
    checked = 0
    for g0, g_floor, g_kl in zip(grads[0.0], grads[1e6], kl_grads, strict=True):
        if g_kl is None:
            continue
        # z is fixed (replayed), so the guide's gradient at lambda = 0 is the KL's alone; under the floor it is 0.
        assert torch.allclose(g0, g_kl, rtol=1e-10, atol=1e-12)
        assert g_floor is None or torch.count_nonzero(g_floor) == 0
        checked += 1
    assert checked >= 2


def _fixed(guide, x, z):
    trace = poutine.trace(guide).get_trace(x)
    trace.nodes["z"]["value"] = z
    return trace


BAD = [
    ({"free_bits": -0.1}, "free_bits must be a finite number >= 0"),
    ({"free_bits": float("nan")}, "free_bits must be a finite number >= 0"),
    ({"free_bits": 0.5, "elbo": "trace"}, "free_bits needs --elbo meanfield"),
    ({"free_bits": 0.5, "elbo": "iwae", "particles": 2}, "free_bits needs --elbo meanfield"),
    ({"free_bits": 0.5, "jit": True}, "free_bits needs --elbo meanfield (its analytic KL per latent dimension) with"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_free_bits_are_one_line_errors(change, message):
    with pytest.raises(UserError) as err:
        TrainConfig(model=VAEConfig(x_dim=64), **change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_pair_without_analytic_kl_is_refused_in_one_line(tmp_path):
    cfg = TrainConfig.for_data(
        load_data("digits"), z_dim=2, hidden=(8,), prior="mixture", epochs=1, batch_size=512, threads=1, free_bits=0.5
    )
    with pytest.raises(UserError) as err:
        train(cfg, tmp_path / "run", progress=False, figures=False)
    assert "free bits need the analytic KL" in str(err.value) and "--elbo meanfield" in str(err.value)
    assert "\n" not in str(err.value) and "site(s) z" in str(err.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before the first step


def test_particles_average_into_the_minibatch_mean(float64):
    # Two vectorised particles: the KL is analytic (the same for both), so the loss's KL term is unchanged.
    model, guide, x = _pair_and_batch()
    with torch.no_grad():
        loc, scale = guide.loc_scale(x)
        kl_j = (0.5 * (loc**2 + scale**2 - 1.0) - torch.log(scale)).mean(0)
        lam = kl_j.max().item() + 1.0  # every dimension under the floor: the KL term is N * J * lambda
        one, two = (FreeBitsELBO(lam, num_particles=k, vectorize_particles=True, max_plate_nesting=1) for k in (1, 2))
        pyro.set_rng_seed(0)
        recon_free = one.loss(model, guide, x) - x.shape[0] * 4 * lam
        pyro.set_rng_seed(0)
        plain = TraceMeanField_ELBO(max_plate_nesting=1).loss(model, guide, x) - x.shape[0] * kl_j.sum().item()
        pyro.set_rng_seed(0)
        recon_two = two.loss(model, guide, x) - x.shape[0] * 4 * lam
        pyro.set_rng_seed(0)
        plain_two = TraceMeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1).loss(
            model, guide, x
        )
    assert recon_two == pytest.approx(plain_two - x.shape[0] * kl_j.sum().item(), rel=1e-10)
    assert recon_free == pytest.approx(plain, rel=1e-10)


def test_a_free_bits_run_reports_the_true_test_elbo(tmp_path):
    base = dict(z_dim=3, hidden=(16,), epochs=2, batch_size=256, threads=1)
    data = load_data("digits")
    result = train(TrainConfig.for_data(data, **base, free_bits=2.0), tmp_path / "fb", progress=False, figures=False)
    last = result.metrics[-1]
    # The test ELBO is the beta = 1 ELBO with the analytic KL, not the floored training objective.
    assert last["test_elbo"] == pytest.approx(-(last["test_recon"] + last["test_kl"]), rel=1e-12)
    # With a 2-nat floor on each of 3 dimensions the training loss is at least recon + 6 nats per example.
    assert all(r["train_loss"] > 6.0 for r in result.metrics)
    saved = TrainConfig.from_json((tmp_path / "fb" / "config.json").read_text())
    assert saved.free_bits == 2.0


def test_lambda_zero_with_a_mask_and_a_hand_made_pair(float64):
    # A pair written here (no project code): masked-out examples give no KL, as in Pyro's TraceMeanField_ELBO.
    loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.5
    mask = torch.tensor([True, True, False, True, True])

    def model():
        with pyro.plate("data", 5), poutine.mask(mask=mask):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    def guide():
        with pyro.plate("data", 5), poutine.mask(mask=mask):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    plain = TraceMeanField_ELBO(max_plate_nesting=1).loss(model, guide)
    assert FreeBitsELBO(0.0, max_plate_nesting=1).loss(model, guide) == pytest.approx(plain, rel=1e-12)
    kl = (0.5 * (loc**2 + scale**2 - 1.0) - torch.log(scale)) * mask[:, None]
    assert plain == pytest.approx(kl.sum().item(), rel=1e-12)
    lam = 0.7  # N * sum_j max(lambda, mean over the 5 examples, the masked one counting 0)
    by_hand = 5 * torch.clamp(kl.mean(0), min=lam).sum().item()
    assert FreeBitsELBO(lam, max_plate_nesting=1).loss(model, guide) == pytest.approx(by_hand, rel=1e-12)
