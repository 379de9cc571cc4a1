"""The flow prior: N(0, I) pushed through learnable autoregressive transforms.

Truths: the change of variables with the Jacobian taken by autograd, quadrature over R^2 (the density integrates to
one, and the mean of its samples, drawn through the inverse transforms, is the density's mean within 4 SE), and
learning on the digits (the prior's parameters move and the test ELBO rises).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from pyro_vae.models.priors import FlowPrior

from pyro_vae import VAEConfig, build, load_run
from pyro_vae.cli import main
from pyro_vae.errors import UserError
from pyro_vae.kl_check import kl_kinds

KINDS = ["affine", "spline"]


def make_prior(transform: str, z_dim: int = 2, gain: float = 1.0) -> FlowPrior:
    torch.manual_seed(3)
    prior = FlowPrior(z_dim, steps=2, hidden=(16,), transform=transform, bins=6, bound=4.0)
    with torch.no_grad():  # gain > 1: larger weights than at initialisation, further from N(0, I)
        for p in prior.parameters():
            p.mul_(gain)
    return prior


@pytest.mark.parametrize("transform", KINDS)
def test_log_density_is_the_change_of_variables_with_the_autograd_jacobian(transform, float64):
    prior = make_prior(transform, z_dim=3, gain=2.0)
    z = 1.5 * torch.randn(5, 3)

    def forward(u: torch.Tensor) -> torch.Tensor:
        for t in prior.transforms:  # the scoring direction, u_k = T_k(u_{k-1})
            u = t(u)
        return u

    base = torch.distributions.Normal(torch.zeros(3), 1.0)
    expected = torch.stack(
        [
            base.log_prob(forward(z[i])).sum()
            + torch.linalg.slogdet(torch.autograd.functional.jacobian(forward, z[i]))[1]
            for i in range(5)
        ]
    )
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=0, atol=1e-6)


def grid(half_width: float = 10.0, n: int = 601) -> tuple[torch.Tensor, float]:
    t = torch.linspace(-half_width, half_width, n)
    z1, z2 = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], -1), float(t[1] - t[0]) ** 2


@pytest.mark.parametrize("transform", KINDS)
def test_the_density_integrates_to_one_and_its_samples_have_its_mean(transform, float64):
    prior = make_prior(transform)
    z, cell = grid()
    with torch.no_grad():
        density = prior().log_prob(z).exp()
        mass = float(density.sum()) * cell
        mean = (density[:, None] * z).sum(0) * cell
        # The linear rational spline's density jumps at its knots, so the Riemann sum converges only as O(h):
        # measured 1 - 1e-6 (affine) and 1 - 1e-4 (spline) at h = 0.033.
        assert mass == pytest.approx(1.0, abs=1e-3)
        torch.manual_seed(0)
        samples = prior().sample((20_000,))  # through the inverse transforms
    se = samples.std(0) / math.sqrt(20_000)
    assert ((samples.mean(0) - mean).abs() < 4 * se).all()
    assert (mean.abs() > 8 * se).any()  # the prior is not centred: the comparison has something to find


def test_the_kl_is_monte_carlo_and_z_dim_one_is_refused():
    model, guide = build(VAEConfig(x_dim=6, z_dim=2, hidden=(8,), prior="flow"))
    assert kl_kinds(model, guide, torch.bernoulli(torch.rand(4, 6))) == {"z": "monte-carlo"}
    with pytest.raises(UserError, match=r"the flow prior needs z_dim >= 2, got 1; use --z-dim 2 or more"):
        VAEConfig(x_dim=6, z_dim=1, prior="flow")
    with pytest.raises(UserError, match=r"prior 'flow': transform must be one of affine, spline, got 'radial'"):
        VAEConfig(x_dim=6, z_dim=2, prior="flow", options={"prior": {"transform": "radial"}})


@pytest.mark.slow
def test_a_spline_flow_prior_trains_from_the_command_line(tmp_path, capsys):
    common = ["--z-dim", "2", "--hidden", "64", "--threads", "1", "--no-progress", "--batch-size", "64"]
    assert main(["train", "--out", str(tmp_path / "u"), *common, "--epochs", "1", "--lr", "1e-12"]) == 0
    flags = ["--prior", "flow", "--prior-transform", "spline", "--prior-steps", "3", "--prior-bins", "4"]
    assert main(["train", "--out", str(tmp_path / "run"), *common, *flags, "--epochs", "15"]) == 0
    capsys.readouterr()
    untrained = json.loads((tmp_path / "u" / "metrics.jsonl").read_text().splitlines()[-1])["test_elbo"]
    run = load_run(tmp_path / "run", with_data=False)
    assert run.config.model.options == {"prior": {"transform": "spline", "steps": 3, "bins": 4}}
    assert len(run.model.prior.transforms) == 3
    assert run.metrics[-1]["kl"] == {"z": "monte-carlo"}
    assert run.metrics[-1]["test_elbo"] > untrained + 10.0
    # The learned prior is not the initial one: its density moved.
    fresh, _ = build(run.config.model)
    z = torch.randn(100, 2)
    with torch.no_grad():
        assert float((fresh.prior().log_prob(z) - run.model.prior().log_prob(z)).abs().mean()) > 0.05
