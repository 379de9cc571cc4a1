"""A user's own Pyro model and guide through train(), evaluate, elbo_terms, load_run and the figures.

Two styles: plain functions with ``pyro.param`` (the linear-Gaussian model, probabilistic PCA), and Pyro's
``examples/vae/vae.py`` style, an ``nn.Module`` whose bound methods ``model`` and ``guide`` register their networks
with ``pyro.module``. Truths: probabilistic PCA's maximum-likelihood solution in closed form (Tipping & Bishop 1999:
the eigenvalues of the sample covariance), the exact marginal log p(x) and the closed-form ELBO of the learned
linear-Gaussian parameters, an uninterrupted run (exact resume), Pyro's own ``TraceMeanField_ELBO`` (a second
estimator of the same ELBO), and the untrained model's ELBO (learning must beat it).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import constraints

from pyro_vae import TrainConfig, load_data, load_run, train
from pyro_vae.cli import main
from pyro_vae.elbo_terms import elbo_terms, reconstruction_error
from pyro_vae.errors import UserError
from pyro_vae.evaluation import evaluate
from pyro_vae.linear_gaussian import LinearGaussian
from pyro_vae.pairs import MissingMethod

D, J = 5, 2


def lg_model(x):
    """x = W z + b + sigma eps, z ~ N(0, I): probabilistic PCA as a plain Pyro function."""
    w = pyro.param("w", lambda: 0.1 * torch.randn(D, J))
    b = pyro.param("b", lambda: torch.zeros(D))
    sigma = pyro.param("sigma", lambda: torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(J), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T + b, sigma).to_event(1), obs=x)


def lg_guide(x):
    """q(z|x) = N(A x + c, diag s^2): affine, so it can be the exact posterior."""
    a = pyro.param("a", lambda: torch.zeros(J, D))
    c = pyro.param("c", lambda: torch.zeros(J))
    s = pyro.param("s", lambda: torch.ones(J), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ a.T + c, s).to_event(1))


@pytest.fixture(scope="module")
def lg_data(tmp_path_factory):
    """1,800 points of a 5-D probabilistic PCA with 2 latent dimensions, as a .npy data set of one's own."""
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.5], [0.5, -1.0], [0.0, 0.3]])
    x = torch.randn(1800, J, generator=g) @ w.T + torch.tensor([1.0, -1, 0, 2, 0.5]) + 0.5 * torch.randn(1800, D)
    path = tmp_path_factory.mktemp("lg") / "lg.npy"
    np.save(path, x.numpy())
    return str(path), load_data(str(path))


def lg_config(path, epochs=60):
    return TrainConfig(dataset=path, epochs=epochs, batch_size=100, lr=0.03, threads=1)


def learned_linear_gaussian() -> LinearGaussian:
    """The linear-Gaussian model of the parameters now in Pyro's parameter store."""
    p = pyro.param
    return LinearGaussian(p("w").detach(), p("b").detach(), p("sigma").detach(), torch.zeros(J), torch.ones(J))


def ppca_max_log_likelihood(x: torch.Tensor) -> float:
    """max over W, b, sigma of (1/N) sum_i log p(x_i) (Tipping & Bishop 1999, eq. 4 at the solution of eq. 7-8)."""
    centred = x - x.mean(0)
    eig = torch.linalg.eigvalsh(centred.T @ centred / x.shape[0]).flip(0).double()
    sigma2 = eig[J:].mean()
    return float(-0.5 * (D * math.log(2 * math.pi) + torch.log(eig[:J]).sum() + (D - J) * torch.log(sigma2) + D))


@pytest.fixture(scope="module")
def lg_run(lg_data, tmp_path_factory):
    """A 60-epoch run of the plain functions (the parameter store is cleared between tests: load_run gets them)."""
    path, data = lg_data
    out = tmp_path_factory.mktemp("lg_run") / "run"
    result = train(lg_config(path), out, data=data, model=lg_model, guide=lg_guide, progress=False)
    return result, out


def test_plain_functions_train_to_the_maximum_likelihood_of_probabilistic_pca(lg_data, lg_run):
    _, data = lg_data
    result, out = lg_run
    load_run(out, model=lg_model, guide=lg_guide)
    lg = learned_linear_gaussian()
    reached = float(lg.log_marginal(data.train_x).mean())
    # Measured: -6.644 against the optimum -6.638 after 60 epochs (from -9.4 at the start).
    assert reached == pytest.approx(ppca_max_log_likelihood(data.train_x), abs=0.02)
    assert result.metrics[-1]["kl"] == {"z": "analytic"}  # Normal guide and prior: eq. 40, found from the traces
    assert [p.name for p in result.figures] == ["curves.png", "latent.png"]  # no decode_mean: no decoded images


def test_elbo_terms_and_evaluate_of_plain_functions_match_the_closed_forms(lg_data, lg_run, float64):
    _, data = lg_data
    run = load_run(lg_run[1], model=lg_model, guide=lg_guide)
    lg = learned_linear_gaussian()
    x = data.test_x.double()
    a, c, s = (pyro.param(n).detach() for n in ("a", "c", "s"))
    loc = x @ a.T + c
    kl = 0.5 * (loc**2 + s**2 - 1 - torch.log(s**2)).sum(-1)  # eq. 40
    residual = ((x - loc @ lg.weight.T - lg.bias) ** 2).sum(-1) + (s**2 * (lg.weight**2).sum(0)).sum()
    recon = 0.5 * D * torch.log(2 * math.pi * lg.sigma**2) + residual / (2 * lg.sigma**2)
    exact_elbo = float((-recon - kl).mean())
    draws = [elbo_terms(run.model, run.guide, x, seed=seed) for seed in range(30)]
    values = np.array([t.elbo for t in draws])
    assert draws[0].kl == pytest.approx(float(kl.mean()), rel=1e-5)  # analytic, from the trace path
    assert abs(values.mean() - exact_elbo) < 4 * values.std(ddof=1) / math.sqrt(len(values)) + 1e-6
    pyro.set_rng_seed(1)
    ev = evaluate(run.model, run.guide, x, num_samples=1000)
    exact_log_px = float(lg.log_marginal(x).mean())
    # The trained guide is close to the exact posterior: IS with K = 1000 is within 0.005 nats (measured 1e-4).
    assert ev.log_likelihood == pytest.approx(exact_log_px, abs=0.005)
    assert ev.elbo <= ev.log_likelihood and ev.active_units == 2
    assert sum(ev.kl_per_dimension) == pytest.approx(float(kl.mean()), rel=1e-5)


def test_a_run_of_plain_functions_resumes_exactly_and_reloads(lg_data, tmp_path):
    path, data = lg_data
    whole = train(lg_config(path, 3), tmp_path / "whole", data=data, model=lg_model, guide=lg_guide, progress=False)
    train(lg_config(path, 2), tmp_path / "part", data=data, model=lg_model, guide=lg_guide, progress=False)
    resumed = train(
        lg_config(path, 3), tmp_path / "part", data=data, model=lg_model, guide=lg_guide, progress=False, resume=True
    )
    assert resumed.metrics == whole.metrics
    saved = json.loads((tmp_path / "part" / "config.json").read_text())["plugins"]
    assert saved == {"pair:model": f"{__name__}.lg_model", "pair:guide": f"{__name__}.lg_guide"}
    run = load_run(tmp_path / "part", model=lg_model, guide=lg_guide)
    again = elbo_terms(run.model, run.guide, run.data.test_x_eval)
    assert again.elbo == pytest.approx(whole.metrics[-1]["test_elbo"], rel=1e-6)
    with pytest.raises(UserError, match=r"own model and guide .*lg_model.*load_run\(DIR, model=\.\.\., guide=\.\.\.\)"):
        load_run(tmp_path / "part")
    with pytest.raises(UserError, match="give both your model and your guide"):
        train(lg_config(path, 1), tmp_path / "one", data=data, model=lg_model, progress=False)


def test_the_command_line_says_how_to_load_a_run_of_your_own_pair(lg_run, capsys):
    assert main(["evaluate", str(lg_run[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "load_run(DIR, model=..., guide=...)" in err


class Encoder(nn.Module):
    def __init__(self, x_dim: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(x_dim, hidden)
        self.loc = nn.Linear(hidden, z_dim)
        self.scale = nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = nn.functional.softplus(self.fc(x))
        return self.loc(h), torch.exp(self.scale(h))


class Decoder(nn.Module):
    def __init__(self, z_dim: int, x_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class BareVAE(nn.Module):
    """Pyro's examples/vae/vae.py, shortened: model and guide are methods, the networks go in with pyro.module."""

    binary_data = True  # grey digits are binarised each epoch, as for the built-in Bernoulli likelihood

    def __init__(self, x_dim: int = 64, z_dim: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.encoder, self.decoder, self.z_dim = Encoder(x_dim, z_dim, hidden), Decoder(z_dim, x_dim, hidden), z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class VAE(BareVAE):
    """The same with the two methods the decoded-image figures need."""

    def decode_mean(self, z):
        return self.decoder(z)

    def prior(self):
        return dist.Normal(torch.zeros(self.z_dim), 1.0).to_event(1)


SMALL = dict(dataset="digits", epochs=8, batch_size=100, lr=0.01, threads=1)


def test_bound_methods_of_a_module_train_with_every_figure_they_can_make(tmp_path):
    torch.manual_seed(0)
    vae = VAE()
    data = load_data("digits")
    untrained = elbo_terms(vae.model, vae.guide, data.test_x.bernoulli(generator=torch.Generator().manual_seed(0)))
    result = train(TrainConfig(**SMALL), tmp_path / "vae", model=vae.model, guide=vae.guide, progress=False)
    assert result.data.binarize  # binary_data = True: grey pixels binarised as for the built-in Bernoulli
    names = [p.name for p in result.figures]
    assert names == ["reconstructions.png", "samples.png", "curves.png", "latent.png", "manifold.png"]
    assert result.metrics[-1]["test_elbo"] > untrained.elbo + 5  # measured: about -31 against -45
    # A second estimator of the same ELBO: Pyro's TraceMeanField_ELBO, averaged over 200 draws.
    x = result.data.test_x_eval
    losses = np.array([pyro.infer.TraceMeanField_ELBO().loss(vae.model, vae.guide, x) / x.shape[0] for _ in range(200)])
    ours = np.array([elbo_terms(result.model, result.guide, x, seed=s).elbo for s in range(50)])
    se = math.hypot(losses.std(ddof=1) / math.sqrt(200), ours.std(ddof=1) / math.sqrt(50))
    assert abs(ours.mean() + losses.mean()) < 4 * se
    assert reconstruction_error(result.model, result.guide, x) > 0


def test_a_missing_method_skips_its_figures_and_is_one_line_where_asked_for(tmp_path):
    vae = BareVAE()
    result = train(TrainConfig(**{**SMALL, "epochs": 1}), tmp_path / "v", model=vae.model, guide=vae.guide)
    assert [p.name for p in result.figures] == ["curves.png", "latent.png"]
    with pytest.raises(MissingMethod, match=r"your model .*BareVAE.model has no decode_mean\(z\)") as err:
        reconstruction_error(result.model, result.guide, result.data.test_x_eval)
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)
