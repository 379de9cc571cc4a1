"""The Normal guide's log-variance bounds (Tomczak & Welling's Hardtanh(-6, 2)) and the divergence guard under a KL
warm-up: what ``--preset tomczak2018`` needs to train through the warm-up's first epoch (beta = 0)."""

from __future__ import annotations

import math

import pytest
import torch
from pyro_vae.guides import MLPEncoder, NormalGuide

from pyro_vae.config import VAEConfig
from pyro_vae.errors import UserError
from pyro_vae.guards import DivergenceGuard, NonFiniteLossError
from pyro_vae.presets import get_preset
from pyro_vae.registry import build as build_pair


def affine_guide(bias: float, bounds=(None, None)) -> NormalGuide:
    """q(z|x) with an identity encoder, zero weights and pre-softplus scale ``bias`` for each of 3 dimensions."""
    guide = NormalGuide(MLPEncoder(4, hidden=()), 3, bounds)
    with torch.no_grad():
        guide.head.weight.zero_()
        guide.head.bias.fill_(bias)
    return guide


@pytest.mark.parametrize("bias", [-40.0, 0.3, 40.0], ids=["collapsing", "inside", "exploding"])
def test_sigma_is_clamped_to_the_log_variance_bounds_and_untouched_inside(bias):
    """log sigma^2 in [-6, 2]: sigma = e^-3 for a collapsing scale, e^1 for an exploding one (the Hardtanh's values),
    and softplus(s) + 1e-5 exactly inside, where the gradient is the unclamped one; zero where clamped."""
    x = torch.randn(5, 4)
    bounded, free = affine_guide(bias, (-6.0, 2.0)), affine_guide(bias)
    (_, s_bounded), (_, s_free) = bounded.loc_scale(x), free.loc_scale(x)
    expected = min(max(math.log1p(math.exp(bias)) + 1e-5, math.exp(-3.0)), math.exp(1.0))
    assert torch.allclose(s_bounded, torch.full_like(s_bounded, expected), rtol=1e-6)
    s_bounded.sum().backward()
    s_free.sum().backward()
    grad_bounded, grad_free = bounded.head.bias.grad[3:], free.head.bias.grad[3:]
    if bias == 0.3:
        assert torch.equal(grad_bounded, grad_free) and (grad_free > 0).all()
    else:
        assert (grad_bounded == 0).all()


def test_the_option_reaches_the_guide_from_the_config_and_bad_bounds_are_one_line():
    model = VAEConfig(z_dim=2, x_shape=(4,), options={"guide": {"log_var_min": -6.0, "log_var_max": 2.0}})
    _, guide = build_pair(model)
    assert guide.scale_bounds == pytest.approx((math.exp(-3.0), math.exp(1.0)))
    for options, message in [
        ({"log_var_min": 2.0, "log_var_max": -6.0}, "log_var_min (2.0) must be below log_var_max (-6.0)"),
        ({"log_var_min": float("nan")}, "log_var_min must be a finite number"),
        ({"log_var_max": True}, "log_var_max must be a finite number"),
    ]:
        with pytest.raises((UserError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
            build_pair(VAEConfig(z_dim=2, x_shape=(4,), options={"guide": options}))


def test_tomczak2018_sets_the_authors_bounds():
    assert get_preset("tomczak2018").model["options"]["guide"] == {"log_var_min": -6.0, "log_var_max": 2.0}


def test_a_low_test_elbo_stops_training_only_at_beta_one():
    """At beta < 1 the run trains another objective, and a VampPrior's ELBO may be -1e13 while training is healthy
    (what stopped --preset tomczak2018 in its first epoch before the bounds): only a non-finite ELBO stops it then."""
    guard = DivergenceGuard(lambda: "kept", factor=1e6)
    guard.check_loss(550.0 * 100, 100, 1, 1)  # the first step: 550 nats per example
    guard.check_test_elbo(-1.34e13, 1, 500, beta=0.0)
    guard.check_test_elbo(-1.34e13, 1, 500, beta=0.5)
    with pytest.raises(NonFiniteLossError, match="test ELBO -1.34e\\+13"):
        guard.check_test_elbo(-1.34e13, 1, 500, beta=1.0)
    with pytest.raises(NonFiniteLossError, match="test ELBO nan"):
        guard.check_test_elbo(float("nan"), 1, 500, beta=0.0)
    guard.check_test_elbo(-5e8, 1, 500, beta=1.0)  # below 1e6 x 550: not diverged
