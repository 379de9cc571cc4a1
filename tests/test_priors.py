"""Swappable priors: densities against scipy, the Monte Carlo KL fallback made visible,
and learnable prior parameters that get gradients and move under SVI."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro_vae.models.priors import MixturePrior, VampPrior
from scipy import special, stats

from pyro_vae import VAEConfig, build
from pyro_vae.closed_form import gaussian_kl
from pyro_vae.kl_check import ANALYTIC, MONTE_CARLO, kl_kinds
from pyro_vae.step import TrainStep
from tests.helpers import closed_form_loss, guide_trace


def make(x_dim=6, z_dim=3, n=5, **cfg):
    torch.manual_seed(0)
    model, guide = build(VAEConfig(x_dim=x_dim, z_dim=z_dim, hidden=(7,), **cfg))
    x = torch.bernoulli(torch.full((n, x_dim), 0.4), generator=torch.Generator().manual_seed(1))
    return model, guide, x


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def mixture_logpdf(z: np.ndarray, logits: np.ndarray, locs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """log sum_k w_k prod_j N(z_j; locs_kj, scales_kj), by hand with scipy: z (N, J), locs/scales (K, J)."""
    log_w = logits - special.logsumexp(logits)
    per_component = stats.norm(locs[None], scales[None]).logpdf(z[:, None, :]).sum(-1)  # (N, K)
    return special.logsumexp(per_component + log_w[None], axis=1)


# --- densities -----------------------------------------------------------------------------------


def test_mixture_log_prob_is_logsumexp_of_weighted_components(float64):
    torch.manual_seed(3)
    prior = MixturePrior(z_dim=2, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        prior.raw_scales.normal_()
    p = prior()
    assert p.event_shape == (2,) and p.batch_shape == ()
    z = torch.randn(50, 2) * 3
    expected = mixture_logpdf(np64(z), np64(prior.logits), np64(prior.locs), np64(prior.scales))
    np.testing.assert_allclose(np64(p.log_prob(z)), expected, rtol=1e-12)
    np.testing.assert_allclose(np64(prior.weights), special.softmax(np64(prior.logits)), rtol=1e-12)


@pytest.mark.parametrize("learn_weights", [False, True])
def test_vamp_log_prob_is_mean_of_guide_posteriors_at_pseudo_inputs(float64, learn_weights):
    model, guide, _ = make(
        prior="vamp",
        options={"prior": {"components": 5, "learn_weights": learn_weights}},
    )
    prior = model.prior
    if learn_weights:
        with torch.no_grad():
            prior.logits.copy_(torch.randn(5))
    z = torch.randn(20, 3) * 2

    def hand() -> np.ndarray:
        # q(z | u_k) = N(mu(u_k), sigma(u_k)^2) from the guide itself; uniform 1/K unless weights are learned.
        post = guide.posterior(prior.pseudo_inputs).base_dist
        logits = np64(prior.logits) if learn_weights else np.zeros(5)
        return mixture_logpdf(np64(z), logits, np64(post.loc), np64(post.scale))

    np.testing.assert_allclose(np64(prior().log_prob(z)), hand(), rtol=1e-12)
    if not learn_weights:
        np.testing.assert_allclose(np64(prior.weights), np.full(5, 0.2), rtol=1e-12)
        assert not any("logits" in n for n, _ in model.named_parameters())  # a buffer, not learned
    # The prior is tied to the guide: change the encoder and the prior follows.
    before = np64(prior().log_prob(z))
    with torch.no_grad():
        guide.head.bias.add_(0.3)
    after = np64(prior().log_prob(z))
    assert np.abs(after - before).max() > 1e-2
    np.testing.assert_allclose(after, hand(), rtol=1e-12)


# --- analytic or Monte Carlo ----------------------------------------------------------------------

FALLBACK_PRIORS = [
    dict(prior="mixture", options={"prior": {"components": 3}}),
    dict(prior="vamp", options={"prior": {"components": 4}}),
    dict(
        prior="vamp",
        options={"prior": {"components": 4, "learn_weights": True}},
    ),
]


@pytest.mark.parametrize("prior_kw", FALLBACK_PRIORS, ids=["mixture", "vamp", "vamp-learned-weights"])
def test_meanfield_falls_back_to_the_trace_elbo_on_the_same_z_and_says_so(float64, prior_kw):
    model, guide, x = make(**prior_kw)
    if prior_kw["options"]["prior"].get("learn_weights") or prior_kw["prior"] == "mixture":
        with torch.no_grad():
            model.prior.logits.normal_()
    trace = guide_trace(guide, x)
    replayed = poutine.replay(guide, trace=trace)
    meanfield = TraceMeanField_ELBO().loss(model, replayed, x)
    trace_elbo = Trace_ELBO().loss(model, replayed, x)
    assert meanfield == pytest.approx(trace_elbo, rel=1e-12)

    # Both equal the one-sample estimate -[log p(x|z) + log p(z) - log q(z|x)], written out with scipy.
    z = np64(trace.nodes["z"]["value"])
    loc, scale = (np64(t) for t in guide.loc_scale(x))
    logits = np64(torch.sigmoid(model.decoder(trace.nodes["z"]["value"])))
    log_lik = stats.bernoulli(logits).logpmf(np64(x)).sum(-1)
    log_q = stats.norm(loc, scale).logpdf(z).sum(-1)
    dist_p = model.prior()
    if isinstance(model.prior, VampPrior):
        post = guide.posterior(model.prior.pseudo_inputs).base_dist
        locs, scales = np64(post.loc), np64(post.scale)
    else:
        locs, scales = np64(model.prior.locs), np64(model.prior.scales)
    log_p = mixture_logpdf(z, np64(dist_p.mixture_distribution.logits), locs, scales)
    assert meanfield == pytest.approx(-(log_lik + log_p - log_q).sum(), rel=1e-10)

    assert kl_kinds(model, guide, x) == {"z": MONTE_CARLO}


def test_analytic_prior_does_not_equal_the_one_sample_estimate(float64):
    """The contrast that makes the previous test meaningful: with an analytic KL the two ELBOs differ at one z."""
    model, guide, x = make(
        prior="gaussian",
        options={"prior": {"loc": 0.4, "scale": 1.6}},
    )
    replayed = poutine.replay(guide, trace=guide_trace(guide, x))
    gap = TraceMeanField_ELBO().loss(model, replayed, x) - Trace_ELBO().loss(model, replayed, x)
    assert abs(gap) > 1e-2
    assert kl_kinds(model, guide, x) == {"z": ANALYTIC}


# --- learnable prior parameters -------------------------------------------------------------------

LEARNABLE = [
    (
        dict(
            prior="gaussian",
            options={"prior": {"loc": 0.5, "scale": 1.7, "learn": True}},
        ),
        {"loc", "raw_scale"},
    ),
    (dict(prior="mixture", options={"prior": {"components": 3}}), {"logits", "locs", "raw_scales"}),
    (dict(prior="vamp", options={"prior": {"components": 3}}), {"pseudo_inputs"}),
    (
        dict(
            prior="vamp",
            options={"prior": {"components": 3, "learn_weights": True}},
        ),
        {"pseudo_inputs", "logits"},
    ),
]


@pytest.mark.parametrize("prior_kw,names", LEARNABLE, ids=["gaussian", "mixture", "vamp", "vamp-weights"])
@pytest.mark.parametrize("elbo_cls", [Trace_ELBO, TraceMeanField_ELBO], ids=["trace", "meanfield"])
def test_learnable_prior_parameters_get_gradients_and_move_under_svi(prior_kw, names, elbo_cls):
    model, guide, x = make(**prior_kw)
    params = dict(model.prior.named_parameters())
    assert set(params) == names
    if "logits" in params:  # uniform initial weights give a zero logits gradient only by symmetry; break it
        with torch.no_grad():
            params["logits"].normal_()
    loss = elbo_cls().differentiable_loss(model, guide, x)
    grads = torch.autograd.grad(loss, list(params.values()))
    for name, g in zip(params, grads, strict=True):
        assert g.abs().max() > 0, f"no gradient reaches prior.{name}"

    before = {n: p.detach().clone() for n, p in params.items()}
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo_cls())
    for _ in range(3):
        svi.step(x)
    for name, p in params.items():
        # Adam's first steps move every coordinate by about lr; demand at least a third of that.
        assert (p.detach() - before[name]).abs().max() > 0.003, f"prior.{name} did not move"


def test_learnable_gaussian_prior_converges_to_the_optimum_of_the_analytic_kl(float64):
    """With the guide fixed, sum_i KL(q_i || N(mu_p, sigma_p^2)) is minimised at mu_p = mean_i mu_i and
    sigma_p^2 = mean_i (sigma_i^2 + (mu_i - mu_p)^2); training only the prior under TraceMeanField_ELBO
    must land there (the KL gradient is exact, so up to optimiser tolerance), and the loss there still equals
    the closed form at the learned mu_p, sigma_p."""
    model, guide, x = make(prior="gaussian", options={"prior": {"loc": 0.5, "scale": 1.7, "learn": True}}, n=40)
    loc, scale = (t.detach() for t in guide.loc_scale(x))
    mu_opt = loc.mean(0)
    sigma_opt = (scale**2 + (loc - mu_opt) ** 2).mean(0).sqrt()
    opt = torch.optim.Adam(model.prior.parameters(), lr=0.1)
    step = TrainStep(model, guide, TraceMeanField_ELBO(), opt, model.prior.parameters())
    for _ in range(200):
        step(x)
    torch.testing.assert_close(model.prior.loc.detach(), mu_opt, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.prior.scale.detach(), sigma_opt, atol=1e-4, rtol=0)
    trace = guide_trace(guide, x)
    loss = TraceMeanField_ELBO().loss(model, poutine.replay(guide, trace=trace), x)
    assert loss == pytest.approx(closed_form_loss(model, guide, x, trace).item(), rel=1e-6)


def test_one_component_mixture_gets_the_analytic_gradient_in_expectation_through_the_monte_carlo_kl(float64):
    """K = 1 is a Gaussian prior whose KL is Monte Carlo. The Trace_ELBO gradient with respect to its mean and
    scale parameters must be unbiased for the gradient of the closed-form KL (the likelihood does not depend on
    them): mean over 40 x 100 draws within 4 standard errors, per coordinate."""
    model, guide, x = make(prior="mixture", options={"prior": {"components": 1}}, n=8)
    prior = model.prior
    with torch.no_grad():
        prior.locs.copy_(torch.tensor([[0.5, -0.3, 1.0]]))
        prior.raw_scales.copy_(torch.tensor([[0.2, 1.0, -0.4]]))
    params = [prior.locs, prior.raw_scales]
    loc, scale = (t.detach() for t in guide.loc_scale(x))
    exact_kl = gaussian_kl(loc, scale, prior.locs[0], prior.scales[0]).sum()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_kl, params)])

    elbo = Trace_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
    draws = []
    for r in range(40):
        pyro.set_rng_seed(100 + r)
        grads = torch.autograd.grad(elbo.differentiable_loss(model, guide, x), params)
        draws.append(torch.cat([g.flatten() for g in grads]))
    d = torch.stack(draws)
    mean, se = d.mean(0), d.std(0) / len(draws) ** 0.5
    assert (se > 0).all()
    assert ((mean - exact).abs() < 4 * se).all(), f"mean {mean}, exact {exact}, SE {se}"
    assert (exact.abs() > 10 * se).any()  # the test can tell a wrong gradient from the right one


# --- the VampPrior shares the guide's encoder without owning it -------------------------------------


def test_vamp_encoder_belongs_to_the_guide_only_and_is_updated_once_per_step():
    model, guide, x = make(prior="vamp", options={"prior": {"components": 3}})
    encoder_ids = {id(p) for p in guide.parameters()}
    assert not encoder_ids & {id(p) for p in model.parameters()}
    guide_storage = {p.data_ptr() for p in guide.parameters()}
    assert not guide_storage & {t.data_ptr() for t in model.state_dict().values()}  # no copy of the guide's weights

    # Gradients of log p(z) reach the encoder through the prior (the model alone, z fixed).
    z = torch.randn(4, 3)
    g = torch.autograd.grad(model.prior().log_prob(z).sum(), guide.encoder.net[0].weight)[0]
    assert g.abs().max() > 0

    # The usual single optimiser over model + guide parameters moves each encoder weight by exactly lr * grad.
    w = guide.encoder.net[0].weight
    w0 = w.detach().clone()
    opt = torch.optim.SGD([*model.parameters(), *guide.parameters()], lr=0.1)
    pyro.set_rng_seed(7)
    Trace_ELBO().differentiable_loss(model, guide, x).backward()
    grad = w.grad.clone()
    opt.step()
    torch.testing.assert_close(w0 - w.detach(), 0.1 * grad)

    pyro.clear_param_store()
    Trace_ELBO().loss(model, guide, x)
    names = list(pyro.get_param_store().keys())
    assert "model$$$prior.pseudo_inputs" in names
    assert [n for n in names if "encoder" in n] and all(n.startswith("guide$$$") for n in names if "encoder" in n)


def test_vamp_pseudo_inputs_can_start_from_training_data():
    model, guide, _ = make(prior="vamp", options={"prior": {"components": 4}}, x_dim=6)
    data = torch.arange(60.0).reshape(10, 6) / 60
    model.prior.init_from_data(data, generator=torch.Generator().manual_seed(0))
    rows = {tuple(r.tolist()) for r in data}
    chosen = [tuple(r.tolist()) for r in model.prior.pseudo_inputs.detach()]
    assert len(set(chosen)) == 4 and set(chosen) <= rows
    with pytest.raises(ValueError, match=r"pseudo-inputs have \(6,\)"):
        model.prior.init_from_data(torch.rand(10, 5))
    with pytest.raises(ValueError, match="at least 4 data rows"):
        model.prior.init_from_data(torch.rand(3, 6))
    with pytest.raises(ValueError, match=r"pseudo_inputs must have shape .* = \(4, 6\), got \(4, 5\)"):
        VampPrior(guide.posterior, 6, 4, pseudo_inputs=torch.rand(4, 5))


# --- sampling and configuration -------------------------------------------------------------------


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_model_samples_from_the_new_priors(prior):
    model, _, _ = make(prior=prior, options={"prior": {"components": 3}})
    tr = poutine.trace(model).get_trace(None, num_samples=7)
    assert tr.nodes["z"]["value"].shape == (7, 3)
    assert tr.nodes["x"]["value"].shape == (7, 6)
    assert tr.nodes["z"]["fn"].event_shape == (3,)


def test_config_fields_round_trip_and_bad_component_counts_are_rejected():
    cfg = VAEConfig(
        x_dim=4,
        prior="vamp",
        options={"prior": {"components": 7, "learn_weights": True}},
    )
    assert VAEConfig.from_json(cfg.to_json()) == cfg
    model, _ = build(cfg)
    assert model.prior.num_components == 7 and model.prior.pseudo_inputs.shape == (7, 4)
    assert build(VAEConfig(x_dim=4, prior="mixture", options={"prior": {"components": 5}}))[0].prior.locs.shape == (
        5,
        2,
    )
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"prior 'mixture': components must be an integer >= 1"):
            VAEConfig(x_dim=4, prior="mixture", options={"prior": {"components": bad}})


def test_training_starts_the_vamp_pseudo_inputs_at_training_images_when_asked(tmp_path):
    from pyro_vae.data import load_data
    from pyro_vae.training import TrainConfig, train

    data = load_data("digits")
    x = data.train_x.clone()

    def nearest_row_distance(run_dir, **options) -> torch.Tensor:
        # lr 1e-12: Adam moves each value by at most 1e-12 per step, so the pseudo-inputs stay where they began.
        config = TrainConfig.for_data(
            data,
            prior="vamp",
            options={"prior": {"components": 5, **options}},
            hidden=(16,),
            epochs=1,
            batch_size=500,
            lr=1e-12,
        )
        result = train(config, tmp_path / run_dir, progress=False, figures=False, data=data)
        return torch.cdist(result.model.prior.pseudo_inputs.detach(), x).min(dim=1).values

    from_data = nearest_row_distance("data", init_from_data=True)
    assert from_data.max() < 1e-9  # each pseudo-input is a training image
    assert nearest_row_distance("uniform").min() > 1.0  # uniform noise is far from every digit


def test_prior_init_from_data_is_refused_by_a_prior_without_init_from_data(tmp_path, capsys):
    from pyro_vae.cli import main

    args = ["train", "--out", str(tmp_path / "run"), "--prior", "standard", "--prior-init-from-data", "--epochs", "1"]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    # init_from_data is an option of the vamp prior only: the standard prior's options refuse it before training.
    assert err == "pyro-vae: error: prior 'standard' has no option(s) init_from_data; it takes no options\n"
    assert not (tmp_path / "run" / "config.json").exists()
