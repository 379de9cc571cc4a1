"""The inverse autoregressive flow guide.

Truths: the change of variables with the Jacobian taken by autograd (not the flow's own log-determinant), the
inverse of the flow recovering its input, Trace_ELBO (with no registered KL meanfield must be the same estimator),
a 10^5-sample average for the estimated mean, and a hand-built mixture for the VampPrior made of flow posteriors.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro_vae.guides import IAFGuide, MLPEncoder
from pyro_vae.guides.iaf import FlowPosterior

from pyro_vae import VAEConfig, build
from pyro_vae.errors import UserError
from pyro_vae.kl_check import kl_kinds


def make_guide(stable: bool = True, z_dim: int = 3, steps: int = 2) -> IAFGuide:
    torch.manual_seed(0)
    guide = IAFGuide(MLPEncoder((5,), (7,)), z_dim, steps=steps, hidden=(16, 16), stable=stable)
    with torch.no_grad():  # larger weights than at initialisation, so the flow is far from the identity
        for p in guide.flows.parameters():
            p.mul_(3.0)
    return guide


def push_forward(q: FlowPosterior, z0: torch.Tensor) -> torch.Tensor:
    for step in q.transforms:
        z0 = step(z0)
    return z0


@pytest.mark.parametrize("stable", [True, False], ids=["stable", "affine"])
def test_log_density_is_base_density_minus_the_autograd_log_determinant(stable, float64):
    guide = make_guide(stable)
    x = torch.rand(4, 5)
    q = guide.posterior(x)
    z0 = q.base_dist.sample()
    z = push_forward(q, z0)
    # Per example, the Jacobian of the whole flow by autograd, with the context of that example held fixed.
    expected = []
    for i in range(4):
        fresh = guide.posterior(x[i : i + 1])

        def flow(u: torch.Tensor, fresh: FlowPosterior = fresh) -> torch.Tensor:
            return push_forward(fresh, u[None])[0]

        jacobian = torch.autograd.functional.jacobian(flow, z0[i])
        log_det = torch.linalg.slogdet(jacobian)[1]
        expected.append(q.base_dist.log_prob(z0)[i] - log_det)
    expected = torch.stack(expected)
    torch.testing.assert_close(q.log_prob(z), expected, rtol=0, atol=1e-6)  # the cached forward pass
    torch.testing.assert_close(guide.posterior(x).log_prob(z), expected, rtol=0, atol=1e-6)  # inverted afresh


@pytest.mark.parametrize("stable", [True, False], ids=["stable", "affine"])
def test_the_flow_is_invertible_on_its_samples(stable, float64):
    guide = make_guide(stable, z_dim=4, steps=3)
    x = torch.rand(6, 5)
    q = guide.posterior(x)
    z0 = q.base_dist.sample((2,))
    z = push_forward(q, z0)
    back = z.clone()
    for step in reversed(guide.posterior(x).transforms):  # fresh steps: nothing cached, the inverse is computed
        back = step.inv(back)
    torch.testing.assert_close(back, z0, rtol=0, atol=1e-6)
    assert (z - z0).abs().max() > 0.1  # the flow does move its input


def test_no_kl_is_registered_so_meanfield_equals_trace_on_the_same_z():
    model, guide = build(VAEConfig(x_dim=12, z_dim=3, hidden=(16,), guide="iaf"))
    x = torch.bernoulli(torch.rand(9, 12))
    assert kl_kinds(model, guide, x) == {"z": "monte-carlo"}
    for seed in range(3):
        pyro.set_rng_seed(seed)
        meanfield = TraceMeanField_ELBO().loss(model, guide, x)
        pyro.set_rng_seed(seed)
        trace = Trace_ELBO().loss(model, guide, x)
        assert meanfield == pytest.approx(trace, rel=1e-6)


def test_the_estimated_mean_agrees_with_a_large_sample_average_within_4_se(float64):
    guide = make_guide(False)
    q = guide.posterior(torch.rand(3, 5))
    estimate = q.mean
    torch.manual_seed(1)
    z = q.sample((10**5,))
    sd = z.std(0)
    # The estimate is the mean of 64 antithetic pairs: its variance is at most Var(z) / 64.
    se = sd * math.sqrt(1 / 64 + 1 / 10**5)
    assert ((estimate - z.mean(0)).abs() < 4 * se).all()
    assert torch.equal(estimate, q.mean)  # the same number at every call (a fixed seed) ...
    before = torch.get_rng_state()
    _ = q.mean
    assert torch.equal(torch.get_rng_state(), before)  # ... drawn off the caller's random stream


@pytest.mark.parametrize("stable", [True, False], ids=["stable", "affine"])
def test_the_estimated_mean_is_exact_when_the_flow_is_affine(stable, float64):
    """With the first layer of every step's network zeroed, each step is z -> s z + t with constants s, t (its
    biases): the flow is affine, E_q[z] = f(mu) exactly, and the antithetic pairs (mu +- sigma eps) average to it
    to rounding; the mean of independent draws would miss by about sigma / sqrt(128)."""
    guide = make_guide(stable)
    with torch.no_grad():
        for flow in guide.flows:
            flow.nn.layers[0].weight.zero_()
    q = guide.posterior(torch.rand(4, 5))
    exact = push_forward(q, q.base_dist.base_dist.loc)
    torch.testing.assert_close(q.mean, exact, atol=1e-10, rtol=0)
    assert float((q.sample((10,)).std(0) / 128**0.5).min()) > 1e-3  # what an error of one draw's mean would be


def test_the_vamp_prior_is_a_mixture_of_flow_posteriors(float64):
    model, guide = build(
        VAEConfig(x_dim=5, z_dim=3, hidden=(6,), prior="vamp", options={"prior": {"components": 4}}, guide="iaf")
    )
    z = torch.randn(7, 3)
    u = model.prior.pseudo_inputs
    per_component = torch.stack([guide.posterior(u[k : k + 1]).log_prob(z) for k in range(4)], -1)  # (7, K)
    by_hand = torch.logsumexp(per_component, -1) - math.log(4)
    torch.testing.assert_close(model.prior().log_prob(z), by_hand, rtol=0, atol=1e-10)


def test_steps_and_widths_are_options():
    model, guide = build(
        VAEConfig(x_dim=5, z_dim=3, guide="iaf", options={"guide": {"steps": 3, "hidden": [8], "stable": False}})
    )
    assert len(guide.flows) == 3 and not guide.posterior(torch.rand(2, 5)).transforms[0].stable
    with pytest.raises(UserError, match=r"guide 'iaf': steps must be an integer >= 1, got 0"):
        VAEConfig(x_dim=5, z_dim=3, guide="iaf", options={"guide": {"steps": 0}})
    with pytest.raises(UserError, match=r"the iaf guide needs z_dim >= 2, got 1; use --z-dim 2 or more"):
        VAEConfig(x_dim=5, z_dim=1, guide="iaf")


def test_a_point_whose_inverse_leaves_the_float_range_has_density_zero_not_an_error():
    """Another example's code can be so far from where q puts its mass that the stable step's inverse, a division
    by sigmoid(.), overflows (measured: 38 of the 10^6 pairs the collapse diagnostics score on MNIST). Pyro's
    TransformedDistribution.log_prob then fails validation on inf / nan; the flow posterior gives -inf there and
    Pyro's value everywhere else."""
    guide = make_guide(stable=True)  # float32, as trained: 12% of these points overflow, 88% do not
    x = torch.rand(4, 5)
    z = 5.0 * torch.randn(200, 1, 3, generator=torch.Generator().manual_seed(1))
    with pyro.validation_enabled(True):
        log_q = guide.posterior(x).log_prob(z)  # (200, 4): every point under every example's q
    with pyro.validation_enabled(False):
        pyro_value = torch.distributions.TransformedDistribution.log_prob(guide.posterior(x), z.expand(200, 4, 3))
    overflowed = ~torch.isfinite(pyro_value)
    assert overflowed.any() and not overflowed.all()  # the case is exercised, and not everywhere
    assert not torch.isnan(log_q).any()
    assert (log_q[overflowed] == -math.inf).all()
    torch.testing.assert_close(log_q[~overflowed], pyro_value[~overflowed], rtol=0, atol=0)
