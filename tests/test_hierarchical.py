"""The hierarchical VAE (docs/models.md) against the exact truth of a linear-Gaussian chain z2 -> z1 -> x.

The chain p(z2) = N(0, I), p(z1|z2) = N(W2 z2 + b2, t^2 I), p(x|z1) = N(W1 z1 + b1, sigma^2 I) is jointly Gaussian,
so log p(x) and p(z1, z2 | x) are closed forms (``LinearGaussianChain``), checked here against Bayes' rule with
scipy's densities. W1 has orthogonal columns of equal norm and W2 orthogonal columns, so the exact posterior in
top-down form q(z2|x) q(z1|z2,x) has diagonal covariances and the affine ladder guide holds it exactly.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from scipy.stats import norm

from pyro_vae import VAEConfig, ais_log_likelihood, build, inference_gaps
from pyro_vae.ais import AISOptions
from pyro_vae.estimators import make_elbo, per_example_log_weights
from pyro_vae.evaluation import kl_per_dimension, log_likelihood
from pyro_vae.gaps import GapOptions
from pyro_vae.kl_check import kl_kinds
from pyro_vae.linear_gaussian import LinearGaussianChain, orthogonal_weight, set_ladder_guide_to_posterior
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM, SIZES, SIGMA, T = 6, (3, 2), 0.5, 0.6


def chain(order: str = "ladder", seed: int = 0):
    """A two-layer linear-Gaussian hierarchical VAE and its (affine) guide, with random guide weights."""
    torch.manual_seed(seed)
    model, guide = build(
        VAEConfig(
            x_dim=X_DIM,
            z_dim=SIZES[0],
            model="hierarchical",
            decoder="linear",
            likelihood="gaussian",
            options={
                "encoder": {"hidden": ()},
                "likelihood": {"sigma": SIGMA},
                "model": {"sizes": SIZES, "hidden": (), "order": order},
            },
        )
    )
    with torch.no_grad():
        model.decoder.linear.weight.copy_(orthogonal_weight(X_DIM, SIZES[0], torch.full((SIZES[0],), 1.5)))
        model.decoder.linear.bias.copy_(torch.randn(X_DIM))
        w2 = orthogonal_weight(SIZES[0], SIZES[1], torch.tensor([0.8, 1.7]))
        model.conditionals[0].set_affine(w2, torch.randn(SIZES[0]), torch.full((SIZES[0],), T))
    return model, guide


@pytest.fixture
def exact_pair(float64):
    model, guide = chain()
    set_ladder_guide_to_posterior(guide, model)
    truth = LinearGaussianChain.of(model)
    pyro.set_rng_seed(3)
    return model, guide, truth, truth.marginal().sample((5,))


def _factors(truth: LinearGaussianChain, x, z1, z2) -> np.ndarray:
    """log p(x|z1) + log p(z1|z2) + log p(z2), from scipy, per row."""
    w1, b1, w2, b2 = (t.numpy() for t in (truth.weight1, truth.bias1, truth.weight2, truth.bias2))
    x, z1, z2 = x.numpy(), z1.numpy(), z2.numpy()
    return (
        norm.logpdf(x, z1 @ w1.T + b1, SIGMA).sum(-1)
        + norm.logpdf(z1, z2 @ w2.T + b2, T).sum(-1)
        + norm.logpdf(z2, 0.0, 1.0).sum(-1)
    )


def test_the_chain_closed_forms_satisfy_bayes_rule_and_the_model_is_the_chain(float64):
    """log p(x) = log p(x, z) - log p(z|x) at arbitrary z, and p(z1, z2|x) = p(z2|x) p(z1|z2, x); the Pyro model's
    log joint is scipy's, so the chain read off the model is the model."""
    model, _ = chain()
    truth = LinearGaussianChain.of(model)
    x, z1, z2 = torch.randn(4, X_DIM), torch.randn(4, SIZES[0]), torch.randn(4, SIZES[1])
    joint = _factors(truth, x, z1, z2)
    posterior = truth.posterior(x).log_prob(torch.cat([z1, z2], -1)).numpy()
    np.testing.assert_allclose(truth.log_marginal(x).numpy(), joint - posterior, rtol=1e-10)
    top, bottom = truth.top_down(x, z2)
    np.testing.assert_allclose((top.log_prob(z2) + bottom.log_prob(z1)).numpy(), posterior, rtol=1e-10)
    conditioned = poutine.condition(model, data={"z1": z1, "z2": z2})
    trace = poutine.trace(conditioned).get_trace(x)
    trace.compute_log_prob()
    log_joint = sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")
    np.testing.assert_allclose(log_joint.detach().numpy(), joint, rtol=1e-10)


def test_the_ladder_guide_set_to_the_posterior_is_the_top_down_posterior(exact_pair):
    model, guide, truth, x = exact_pair
    trace = poutine.trace(guide).get_trace(x)
    z2 = trace.nodes["z2"]["value"]
    top, bottom = truth.top_down(x, z2)
    for name, exact in (("z2", top), ("z1", bottom)):
        q, cov = trace.nodes[name]["fn"].base_dist, exact.covariance_matrix
        variances = torch.diagonal(cov, dim1=-2, dim2=-1)
        torch.testing.assert_close(q.loc, exact.loc, atol=1e-10, rtol=0)
        torch.testing.assert_close(q.scale**2, variances, atol=1e-10, rtol=0)
        assert (cov - torch.diag_embed(variances)).abs().max() < 1e-12  # so a diagonal q can be exact


def _gaussian_kl(mq, sq, mp, sp):
    """KL(N(mq, sq^2) || N(mp, sp^2)) per dimension, written out."""
    return np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


@pytest.mark.parametrize("exact", [False, True])
def test_the_meanfield_loss_per_layer_is_the_closed_form_at_the_same_z(float64, exact):
    """TraceMeanField_ELBO on the ladder pair, at the z of one guide trace: its KL of each layer is analytic
    (``kl_kinds``) and equals KL(q(z_l|...) || p(z_l|z_l+1)) between diagonal Gaussians at that z, written out
    with the chain's own W2, b2, t; the reconstruction is scipy's log N(x; W1 z1 + b1, sigma^2)."""
    model, guide = chain(seed=1)
    if exact:
        set_ladder_guide_to_posterior(guide, model)
    truth = LinearGaussianChain.of(model)
    x = truth.marginal().sample((4,))
    trace = poutine.trace(guide).get_trace(x)
    fixed = poutine.replay(guide, trace=trace)
    assert kl_kinds(model, fixed, x) == {"z2": "analytic", "z1": "analytic"}
    z1, z2 = trace.nodes["z1"]["value"].detach(), trace.nodes["z2"]["value"].detach()
    q1, q2 = (trace.nodes[n]["fn"].base_dist for n in ("z1", "z2"))
    w2, b2 = truth.weight2.numpy(), truth.bias2.numpy()
    kl2 = _gaussian_kl(q2.loc.detach().numpy(), q2.scale.detach().numpy(), 0.0, 1.0)
    kl1 = _gaussian_kl(q1.loc.detach().numpy(), q1.scale.detach().numpy(), z2.numpy() @ w2.T + b2, T)
    recon = norm.logpdf(x.numpy(), z1.numpy() @ truth.weight1.numpy().T + truth.bias1.numpy(), SIGMA).sum(-1)
    loss = TraceMeanField_ELBO().loss(model, fixed, x)
    np.testing.assert_allclose(loss, -(recon - kl1.sum(-1) - kl2.sum(-1)).sum(), rtol=1e-6)
    per_dim, _ = kl_per_dimension(model, fixed, x)  # guide order: z2's dimensions, then z1's
    np.testing.assert_allclose(per_dim[: SIZES[1]].numpy(), kl2.mean(0), rtol=1e-6)
    np.testing.assert_allclose(per_dim[SIZES[1] :].numpy(), kl1.mean(0), rtol=1e-6)


def test_at_the_exact_posterior_every_importance_weight_and_bound_is_log_px(exact_pair):
    """q = p(z|x): log w = log p(x) for every draw, so IS, IWAE, DReG and the Monte Carlo ELBO all equal log p(x)
    exactly, and the path-derivative (STL, DReG) gradients of the guide vanish at every draw (Roeder et al. 2017).
    (The meanfield estimate, log p(x|z1) - KL terms, is log p(x) only on average: not in this list.)"""
    model, guide, truth, x = exact_pair
    exact = truth.log_marginal(x)
    log_w = per_example_log_weights(model, guide, x, num_particles=7)
    torch.testing.assert_close(log_w, exact.expand_as(log_w), atol=1e-9, rtol=0)
    torch.testing.assert_close(log_likelihood(model, guide, x, num_samples=50), exact, atol=1e-9, rtol=0)
    for name, particles in (("iwae", 5), ("dreg", 5), ("stl", 1), ("trace", 1)):
        pyro.clear_param_store()
        elbo = make_elbo(name, num_particles=particles) if particles > 1 else make_elbo(name)
        loss = elbo.differentiable_loss(model, guide, x)
        assert abs(float(loss) + float(exact.sum())) < 1e-8, name
        if name in ("stl", "dreg"):
            guide.zero_grad()
            loss.backward()
            grads = [p.grad for p in guide.parameters() if p.grad is not None]
            assert grads and max(float(g.abs().max()) for g in grads) < 1e-8, name


def _widen(guide) -> None:
    with torch.no_grad():
        guide.top.head.bias[SIZES[1] :] += 0.5  # q(z2|x) wider than the posterior


def test_ais_matches_the_exact_log_px(exact_pair):
    """From the exact posterior every AIS weight is p(x) (HMC over both layers leaves it so); from a wider guide,
    100 steps are within 3 standard errors (over the chains) plus 0.05 nats of the exact value."""
    model, guide, truth, x = exact_pair
    exact = truth.log_marginal(x)
    options = AISOptions(num_steps=5, num_chains=3, start="guide")
    torch.testing.assert_close(ais_log_likelihood(model, guide, x, **options.to_dict()), exact, atol=1e-9, rtol=0)
    _widen(guide)
    pyro.set_rng_seed(5)
    estimate, stderr = ais_log_likelihood(
        model, guide, x[:3], num_steps=100, num_chains=8, start="guide", return_stderr=True
    )
    assert ((estimate - exact[:3]).abs() < 3 * stderr + 0.05).all(), (estimate - exact[:3], stderr)


def test_importance_sampling_with_a_wider_guide_matches_the_exact_log_px(exact_pair):
    model, guide, truth, x = exact_pair
    _widen(guide)
    pyro.set_rng_seed(6)
    estimate, stderr = log_likelihood(model, guide, x, num_samples=2000, return_stderr=True)
    assert ((estimate - truth.log_marginal(x)).abs() < 4 * stderr + 1e-3).all()


def test_both_inference_gaps_are_zero_at_the_exact_posterior(exact_pair):
    """Zero within 4 of their standard errors (the ELBOs are Monte Carlo averages) plus 1e-6; a per-example
    optimisation that moved q* off the posterior, or a gap of one layer left out, would be off by far more."""
    model, guide, _, x = exact_pair
    options = GapOptions(num_steps=50, elbo_samples=500, log_likelihood_samples=200)
    gaps = inference_gaps(model, guide, x[:3], options)
    for name in ("approximation_gap", "amortization_gap"):
        assert abs(gaps[name]) < 4 * gaps[f"{name}_stderr"] + 1e-6 and gaps[f"{name}_stderr"] < 1e-3, gaps


def test_the_bottom_up_guide_refuses_the_meanfield_elbo_and_the_vamp_prior_in_one_line():
    from pyro_vae import TrainConfig
    from pyro_vae.errors import UserError

    bottomup = {"model": {"order": "bottomup"}}
    with pytest.raises(UserError, match="biased; use --elbo trace"):
        TrainConfig(model=VAEConfig(x_dim=4, model="hierarchical", options=bottomup), elbo="meanfield")
    TrainConfig(model=VAEConfig(x_dim=4, model="hierarchical", options=bottomup), elbo="iwae", particles=2)
    with pytest.raises(UserError, match="--model-order ladder"):
        build(VAEConfig(x_dim=4, model="hierarchical", prior="vamp", options=bottomup))
    with pytest.raises(UserError, match="sizes needs one dimension per layer"):
        VAEConfig(x_dim=4, model="hierarchical", options={"model": {"layers": 3, "sizes": [2, 2]}})


def test_posterior_means_per_layer_are_the_exact_posterior_means(exact_pair):
    """E_q[z2|x] is q(z2|x)'s mean, exactly; E_q[z1|x] averages MEAN_DRAWS conditional means over draws of z2, within
    4 standard errors of the exact m1(x) (SE^2 = the variance of the conditional mean over z2, / MEAN_DRAWS)."""
    from pyro_vae.evaluation import MEAN_DRAWS, active_units_per_site, posterior_means_by_site

    model, guide, truth, x = exact_pair
    pyro.set_rng_seed(8)
    means = posterior_means_by_site(model, guide, x)
    exact, cov = truth.posterior_moments(x)
    j1 = SIZES[0]
    assert list(means) == ["z2", "z1"]
    torch.testing.assert_close(means["z2"], exact[:, j1:], atol=1e-10, rtol=0)
    gain = cov[:j1, j1:] @ torch.linalg.inv(cov[j1:, j1:])
    se = torch.sqrt(torch.diagonal(gain @ cov[j1:, j1:] @ gain.T) / MEAN_DRAWS)
    assert ((means["z1"] - exact[:, :j1]).abs() < 4 * se).all()
    counts = active_units_per_site(model, guide, x, threshold=0.0)
    assert counts == {
        "z2": {"active": SIZES[1], "dimensions": SIZES[1]},
        "z1": {"active": SIZES[0], "dimensions": SIZES[0]},
    }


def test_the_test_elbo_of_a_bottom_up_guide_is_unbiased(float64):
    """The bottom-up guide draws z2 ~ q(z2|z1) after z1, so the closed-form KL(q(z1|x) || p(z1|z2)) at that z2 is
    biased (``closed_form_kl_sites``); ``trace_terms`` (the trainer's test ELBO for such pairs) estimates the z1 term
    by Monte Carlo instead. Against the mean of the importance log weights (the ELBO by a second estimator), within
    4 standard errors; the all-closed-form estimate, with q(z2|z1) tight around the z1 draw and a tight p(z1|z2),
    is more than 10 standard errors off, so this test can fail."""
    from torch.distributions import kl_divergence

    from pyro_vae.elbo_terms import trace_terms

    model, guide = chain(order="bottomup", seed=2)
    truth = LinearGaussianChain.of(model)
    with torch.no_grad():
        w2, b2 = truth.weight2, truth.bias2
        model.conditionals[0].set_affine(w2, b2, torch.full((SIZES[0],), 0.3))
        back = torch.linalg.pinv(w2)
        guide.ups[0].set_affine(back, -back @ b2, torch.full((SIZES[1],), 0.05))
    pyro.set_rng_seed(4)
    x = LinearGaussianChain.of(model).marginal().sample((4,))
    with torch.no_grad():
        log_w = per_example_log_weights(model, guide, x, num_particles=4000).sum(-1)
        ours, closed = [], []
        for _ in range(400):
            sums = trace_terms(model, guide, x, 1)
            ours.append(-sums.recon - sums.kl)
            g = poutine.trace(guide).get_trace(x)
            m = poutine.trace(poutine.replay(model, trace=g)).get_trace(x)
            kls = sum(float(kl_divergence(g.nodes[n]["fn"], m.nodes[n]["fn"]).sum()) for n in ("z1", "z2"))
            closed.append(float(m.nodes["x"]["fn"].log_prob(x).sum()) - kls)
    reference, reference_se = float(log_w.mean()), float(log_w.std() / log_w.numel() ** 0.5)
    for values, near in ((torch.tensor(ours), True), (torch.tensor(closed), False)):
        se = (float(values.std() / values.numel() ** 0.5) ** 2 + reference_se**2) ** 0.5
        off = abs(float(values.mean()) - reference) / se
        assert (off < 4) if near else (off > 10), (float(values.mean()), reference, se)


def test_samples_and_reconstructions_use_the_bottom_layer(exact_pair):
    """The figures decode ``model.sample_code(n)``, z1 drawn through the layers: its mean and covariance are the
    chain's p(z1) = N(W2 mu2 + b2, W2 S2 W2^T + t^2 I) (within 5 SE elementwise, 20000 draws); reconstructions decode
    ``latent_means`` = the ladder guide's top-down pass at the means, which for the exact (affine) guide is the exact
    E[z1 | x]."""
    from pyro_vae.elbo_terms import latent_means

    model, guide, truth, x = exact_pair
    pyro.set_rng_seed(9)
    z1 = model.sample_code(20000)
    mean, cov = truth.latent_moments()
    j1 = SIZES[0]
    se_mean = torch.sqrt(torch.diagonal(cov[:j1, :j1]) / z1.shape[0])
    assert ((z1.mean(0) - mean[:j1]).abs() < 5 * se_mean).all()
    centred = z1 - mean[:j1]
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(0) / z1.shape[0] ** 0.5
    assert ((products.mean(0) - cov[:j1, :j1]).abs() < 5 * se_cov).all()
    exact, _ = truth.posterior_moments(x)
    torch.testing.assert_close(latent_means(guide, x), exact[:, :j1], atol=1e-10, rtol=0)
