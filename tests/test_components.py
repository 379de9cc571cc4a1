"""Components from user code: a network, a guide family and a prior registered without editing the package,
then built, trained and reloaded through the Python API and the command line.

Truths: the untrained model's test ELBO (learning must beat it by a margin), the registered classes themselves
(the built model holds them, with the options given), a hand-computed mixture density for the VampPrior under a
non-Normal guide family, and reloading a run (the same test ELBO from the checkpoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro_vae.guides import NormalGuide
from torch import nn

from pyro_vae import (
    DECODERS,
    ENCODERS,
    GUIDES,
    PRIORS,
    Component,
    TrainConfig,
    VAEConfig,
    build,
    load_run,
    register_decoder,
    register_encoder,
    register_guide,
    register_prior,
    train,
)
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.elbo_terms import elbo_terms
from pyro_vae.errors import UserError


@dataclass
class ToyOptions:
    """Fields:
    width: hidden units of the toy decoder.
    """

    width: int = 8


class ToyDecoder(nn.Module):
    """z -> tanh(A z) -> B: a network the package does not have."""

    def __init__(self, z_dim: int, x_shape: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.width = width
        self.net = nn.Sequential(nn.Linear(z_dim, width), nn.Tanh(), nn.Linear(width, math.prod(x_shape)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ToyEncoder(nn.Module):
    def __init__(self, x_dim: int) -> None:
        super().__init__()
        self.out_features = 12
        self.net = nn.Sequential(nn.Linear(x_dim, 12), nn.ELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LaplaceGuide(NormalGuide):
    """A guide family other than the Normal: q(z|x) = prod_j Laplace(mu_j(x), b_j(x))."""

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Laplace(loc, scale).to_event(1)


@pytest.fixture
def user_components():
    """Register the toy components for one test, and take them out again."""
    register_decoder("toy", lambda c, options: ToyDecoder(c.z_dim, c.x_shape, options.width), options=ToyOptions)
    register_encoder("toy", lambda c: ToyEncoder(c.x_dim))
    register_guide("laplace", lambda c, encoder: LaplaceGuide(encoder, c.z_dim))
    yield
    for registry, name in ((DECODERS, "toy"), (ENCODERS, "toy"), (GUIDES, "laplace")):
        del registry[name]


SMALL = dict(z_dim=4, hidden=(32,), epochs=3, batch_size=128, lr=0.01, threads=1)


def test_a_users_decoder_and_encoder_train_from_the_python_api(user_components, tmp_path):
    data = load_data("digits")
    untrained = train(
        TrainConfig.for_data(data, **{**SMALL, "epochs": 1, "lr": 1e-12}), tmp_path / "u", progress=False, figures=False
    ).metrics[-1]["test_elbo"]
    config = TrainConfig.for_data(data, **SMALL, encoder="toy", decoder="toy", options={"decoder": {"width": 16}})
    result = train(config, tmp_path / "run", progress=False, figures=False, data=data)
    assert isinstance(result.model.decoder, ToyDecoder) and result.model.decoder.width == 16
    assert isinstance(result.guide.encoder, ToyEncoder)
    # Learning happened with the user's networks (measured: about -30 against -45 nats at initialisation).
    assert result.metrics[-1]["test_elbo"] > untrained + 5.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (saved["encoder"], saved["decoder"], saved["options"]) == ("toy", "toy", {"decoder": {"width": 16}})
    run = load_run(tmp_path / "run")  # rebuilt from the stored names and options, weights from the checkpoint
    assert run.model.decoder.width == 16
    terms = elbo_terms(run.model, run.guide, run.data.test_x_eval)
    assert terms.elbo == pytest.approx(result.metrics[-1]["test_elbo"], rel=1e-12)


def test_a_users_component_options_are_command_line_flags(user_components, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--decoder", "toy", "--decoder-width", "5", "--epochs", "1", "--no-progress"]
    assert main([*args, "--z-dim", "2", "--threads", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["options"] == {"decoder": {"width": 5}}
    assert load_run(out, with_data=False).model.decoder.width == 5
    capsys.readouterr()
    bad = ["train", "--out", str(tmp_path / "bad"), "--decoder", "mlp", "--decoder-width", "5", "--no-progress"]
    assert main(bad) == 2
    assert capsys.readouterr().err == (
        "pyro-vae: error: decoder 'mlp' has no option(s) width; its options are hidden, activation\n"
    )
    assert not (tmp_path / "bad").exists()


def test_option_names_are_checked_against_the_components_own_fields(user_components):
    with pytest.raises(UserError, match=r"decoder 'toy' has no option\(s\) depth; its options are width"):
        VAEConfig(x_dim=4, decoder="toy", options={"decoder": {"depth": 3}})
    with pytest.raises(UserError, match="options for unknown kind 'decodr'"):
        VAEConfig(x_dim=4, options={"decodr": {"width": 3}})
    model, _ = build(VAEConfig(x_dim=4, decoder="toy"))
    assert model.decoder.width == 8  # the options dataclass's default


def test_the_vamp_prior_uses_whatever_guide_family_is_in_use(user_components, float64):
    """With a Laplace guide the VampPrior is a mixture of Laplace posteriors at its pseudo-inputs, by hand."""
    model, guide = build(
        VAEConfig(x_dim=5, z_dim=2, hidden=(6,), prior="vamp", options={"prior": {"components": 3}}, guide="laplace")
    )
    prior = model.prior()
    z = torch.randn(7, 2, dtype=torch.float64)
    loc, scale = guide.loc_scale(model.prior.pseudo_inputs)
    per_component = (-torch.log(2 * scale) - (z[:, None, :] - loc).abs() / scale).sum(-1)  # (7, K)
    by_hand = torch.logsumexp(per_component, -1) - math.log(3)
    torch.testing.assert_close(prior.log_prob(z), by_hand, rtol=1e-12, atol=1e-12)
    assert isinstance(prior.component_distribution.base_dist, dist.Laplace)


def test_a_users_prior_can_declare_that_it_needs_the_posterior(tmp_path):
    """A factory declaring ``needs_posterior`` receives the guide's q(z|x) (the bound method of the very guide
    built), through the registry and through ``build(prior=...)``; others receive nothing."""
    seen = []

    class AggregatePrior(nn.Module):
        """p(z) = q(z | x0) at one fixed input x0: a (poor) prior that needs the posterior."""

        def __init__(self, posterior, x_dim):
            super().__init__()
            self.posterior = posterior
            self.register_buffer("x0", torch.full((1, x_dim), 0.5))

        def forward(self):
            q = self.posterior(self.x0)
            return dist.Normal(q.base_dist.loc[0], q.base_dist.scale[0]).to_event(1)

    def factory(config, posterior):
        seen.append(posterior)
        return AggregatePrior(posterior, config.x_dim)

    register_prior("aggregate", factory, needs_posterior=True)
    try:
        model, guide = build(VAEConfig(x_dim=6, prior="aggregate"))
        assert seen[-1].__self__ is guide and seen[-1].__func__ is type(guide).posterior
        model2, guide2 = build(VAEConfig(x_dim=6), prior=Component(factory, needs_posterior=True))
        assert seen[-1].__self__ is guide2
        pyro.clear_param_store()
        config = TrainConfig.for_data(load_data("digits"), prior="aggregate", **{**SMALL, "epochs": 1})
        result = train(config, tmp_path / "run", progress=False, figures=False)
        assert math.isfinite(result.metrics[-1]["test_elbo"]) and seen[-1].__self__ is result.guide
        with pytest.raises(TypeError):
            build(VAEConfig(x_dim=6), prior=factory)  # not declared: called with the config alone
    finally:
        del PRIORS["aggregate"]


def test_registry_errors_are_one_line_with_a_suggestion():
    with pytest.raises(
        UserError, match=r"unknown decoder 'mpl'; choose one of: conv, linear, mlp; did you mean 'mlp'\?"
    ):
        VAEConfig(x_dim=4, decoder="mpl")
    assert VAEConfig(x_dim=4, prior="Standard", decoder="MLP").prior == "standard"  # names ignore case
