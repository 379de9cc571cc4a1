"""The estimators that take any latents (reinforce, vimco, rws, tvo) on a model that mixes a discrete and a continuous
latent, against exact truths.

The model (M2-like, small enough for exact answers): y ~ Bernoulli(sigmoid(a)), z | y ~ N(m_y, I_2),
x | z ~ N(W z + b, 0.7^2 I_3); the guide q(y | x) = Bernoulli(sigmoid(v.x + c)), q(z | x, y) = N(A x + B y + e,
diag s^2). Truths, each independent of the estimators:

- log p(x) = logsumexp_y [log p(y) + log N(x; W m_y + b, W W^T + 0.7^2 I)], closed form;
- the ELBO = sum_y q(y|x) [log p(y) - log q(y|x) + E_q(z|x,y) log p(z|y) p(x|z) / q(z|x,y)], every expectation of a
  Gaussian in closed form, so its gradient by autograd is exact;
- the K-sample IWAE bound's gradient: y summed over all 2^K tuples with their probabilities and z reparameterised, an
  unbiased estimate whose own standard error enters the comparison (it shares no code with the estimators).

Statistical tests use fixed seeds and state their tolerance in standard errors (SE) of the mean over R draws.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import Tensor, nn

from pyro_vae.estimators import make_elbo
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_discrete_estimators import draws

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM, Z_DIM, SIGMA = 3, 2, 0.7
LOG_2PI = math.log(2 * math.pi)


class MixedPair(nn.Module):
    """The module doc's model and guide, as plain Pyro functions; ``gen`` and ``inf`` hold their parameters."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def p(*shape: int, scale: float = 0.5) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(*shape, generator=g))

        self.gen = nn.ParameterDict({"a": p(1), "m": p(2, Z_DIM, scale=1.0), "w": p(X_DIM, Z_DIM), "b": p(X_DIM)})
        self.inf = nn.ParameterDict({"v": p(X_DIM), "c": p(1), "A": p(Z_DIM, X_DIM), "B": p(Z_DIM), "e": p(Z_DIM),
                                     "s": p(Z_DIM, scale=0.3)})  # fmt: skip

    def q_z(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x, y)'s mean and standard deviation."""
        return x @ self.inf["A"].T + y[..., None] * self.inf["B"] + self.inf["e"], self.inf["s"].exp().expand(
            *x.shape[:-1], Z_DIM
        )

    def m_y(self, y: Tensor) -> Tensor:
        return self.gen["m"][0] + y[..., None] * (self.gen["m"][1] - self.gen["m"][0])

    def model(self, x: Tensor) -> None:
        pyro.module("gen", self.gen)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Bernoulli(logits=self.gen["a"].expand(x.shape[0])))
            z = pyro.sample("z", dist.Normal(self.m_y(y), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.gen["w"].T + self.gen["b"], SIGMA).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("inf", self.inf)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Bernoulli(logits=x @ self.inf["v"] + self.inf["c"]))
            pyro.sample("z", dist.Normal(*self.q_z(x, y)).to_event(1))

    def guide_params(self) -> list[Tensor]:
        return list(self.inf.values())

    def model_params(self) -> list[Tensor]:
        return list(self.gen.values())

    # ------------------------------------------------------------ the truths, written out with torch alone

    def log_py(self, y: Tensor) -> Tensor:
        return -nn.functional.softplus(-(2 * y - 1) * self.gen["a"])

    def log_qy(self, x: Tensor, y: Tensor) -> Tensor:
        return -nn.functional.softplus(-(2 * y - 1) * (x @ self.inf["v"] + self.inf["c"]))

    def log_px(self, x: Tensor) -> Tensor:
        """log p(x) per example: the Gaussian marginal of x given y, summed over y."""
        w = self.gen["w"]
        cov = w @ w.T + SIGMA**2 * torch.eye(X_DIM)
        terms = []
        for y in (0.0, 1.0):
            yt = torch.full((x.shape[0],), y)
            mean = self.m_y(yt) @ w.T + self.gen["b"]
            terms.append(self.log_py(yt) + torch.distributions.MultivariateNormal(mean, cov).log_prob(x))
        return torch.logsumexp(torch.stack(terms), 0)

    def elbo(self, x: Tensor) -> Tensor:
        """The ELBO per example in closed form (the module doc)."""
        w = self.gen["w"]
        total = 0.0
        for y in (0.0, 1.0):
            yt = torch.full((x.shape[0],), y)
            mu, sd = self.q_z(x, yt)
            var = sd**2
            recon_mean = x - mu @ w.T - self.gen["b"]
            e_log_px = (
                -0.5 * X_DIM * (LOG_2PI + 2 * math.log(SIGMA))
                - 0.5 * ((recon_mean**2).sum(-1) + (var @ (w**2).T).sum(-1)) / SIGMA**2
            )
            e_log_pz = -0.5 * Z_DIM * LOG_2PI - 0.5 * (((mu - self.m_y(yt)) ** 2).sum(-1) + var.sum(-1))
            entropy = 0.5 * Z_DIM * (LOG_2PI + 1) + sd.log().sum(-1)
            log_qy = self.log_qy(x, yt)
            total = total + log_qy.exp() * (self.log_py(yt) - log_qy + e_log_px + e_log_pz + entropy)
        return total

    def log_w(self, x: Tensor, y: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(log w = log p(x, y, z) - log q(y, z | x) at z = mu + sd eps, log q(y, z | x)), z reparameterised."""
        mu, sd = self.q_z(x, y)
        z = mu + sd * eps
        normal = torch.distributions.Normal
        log_p = self.log_py(y) + normal(self.m_y(y), 1.0).log_prob(z).sum(-1)
        log_p = log_p + normal(z @ self.gen["w"].T + self.gen["b"], SIGMA).log_prob(x).sum(-1)
        log_q = self.log_qy(x, y) + normal(mu, sd).log_prob(z).sum(-1)
        return log_p - log_q, log_q

    def iwae_gradient_draws(self, x: Tensor, k: int, r: int, params: list[Tensor], seed: int) -> Tensor:
        """R unbiased draws of the K-sample bound's gradient: the 2^K tuples of y weighted by prod_k q(y_k | x), one
        reparameterised z_k per particle."""
        g = torch.Generator().manual_seed(seed)
        draws = []
        for _ in range(r):
            eps = torch.randn(k, *x.shape[:-1], Z_DIM, generator=g)
            bound = 0.0
            for ys in itertools.product((0.0, 1.0), repeat=k):
                yt = [torch.full((x.shape[0],), y) for y in ys]
                log_w = torch.stack([self.log_w(x, yt[j], eps[j])[0] for j in range(k)])
                prob = sum(self.log_qy(x, y) for y in yt).exp()
                bound = bound + prob * (torch.logsumexp(log_w, 0) - math.log(k))
            draws.append(torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(bound.sum(), params)]))
        return torch.stack(draws)


def batch() -> Tensor:
    return 1.5 * torch.randn(3, X_DIM, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def pair() -> MixedPair:
    pyro.clear_param_store()
    return MixedPair()


def z_scores(samples: Tensor, truth: Tensor | float, truth_samples: Tensor | None = None) -> Tensor:
    """(mean - truth) / SE element-wise; with ``truth_samples`` the truth is their mean and the SE of the difference
    of the two independent means."""
    var = samples.var(0) / samples.shape[0]
    if truth_samples is not None:
        truth = truth_samples.mean(0)
        var = var + truth_samples.var(0) / truth_samples.shape[0]
    return (samples.mean(0) - truth) / var.sqrt()


# ---------------------------------------------------------------- the truths themselves


def test_closed_forms_equal_brute_force_monte_carlo_and_quadrature():
    """The closed-form ELBO against 200,000 plain Monte Carlo draws of log w (4 SE), and log p(x) against a
    2-D quadrature of p(x, y, z) on a grid (1e-3); and ELBO < log p(x)."""
    pyro.clear_param_store()
    pair = MixedPair()
    x = batch()
    with torch.no_grad():
        n = 200_000
        g = torch.Generator().manual_seed(3)
        xs = x.expand(n, *x.shape)
        y = torch.bernoulli(torch.sigmoid(xs @ pair.inf["v"] + pair.inf["c"]), generator=g)
        log_w, _ = pair.log_w(xs, y, torch.randn(n, *x.shape[:-1], Z_DIM, generator=g))
        se = log_w.std(0) / math.sqrt(n)
        assert ((log_w.mean(0) - pair.elbo(x)).abs() < 4 * se).all()
        grid = torch.linspace(-9, 9, 601)
        zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, Z_DIM)
        cell = float(grid[1] - grid[0]) ** 2
        joint = []
        for yv in (0.0, 1.0):
            yt = torch.full((x.shape[0],), yv)
            lp = pair.log_py(yt) + torch.distributions.Normal(pair.m_y(yt), 1.0).log_prob(zz).sum(-1)
            lp = lp + torch.distributions.Normal(zz @ pair.gen["w"].T + pair.gen["b"], SIGMA).log_prob(x).sum(-1)
            joint.append(torch.logsumexp(lp, 0) + math.log(cell))
        quadrature = torch.logsumexp(torch.stack(joint), 0)
        assert torch.allclose(quadrature, pair.log_px(x), atol=1e-3), (quadrature, pair.log_px(x))
        assert (pair.elbo(x) < pair.log_px(x)).all()


# ---------------------------------------------------------------- the estimators


@pytest.mark.parametrize("baseline", ["none", "average", "learned"])
def test_reinforce_mean_value_and_gradient_are_the_exact_elbos(baseline, pair):
    """REINFORCE (score function for y and z): the mean value within 4 SE of the closed-form ELBO and every element
    of the mean gradient (guide and model) within 4 SE of its autograd gradient; a 10% smaller gradient is rejected
    by the same draws."""
    x = batch()
    params = pair.guide_params() + pair.model_params()
    truth_value = pair.elbo(x).sum()
    truth = torch.cat([g.reshape(-1) for g in torch.autograd.grad(truth_value, params)])
    elbo = make_elbo("reinforce", num_particles=200, baseline=baseline, max_plate_nesting=1)
    values, grads = draws(elbo, pair, x, 30, params)
    assert z_scores(grads, truth).abs().max() < 4
    assert abs(float(z_scores(values, float(truth_value.detach())))) < 4
    assert z_scores(grads, 0.9 * truth).abs().max() > 4


def test_vimco_mean_gradient_is_the_iwae_bounds(pair):
    """VIMCO, K = 2, 100 copies of each example: every element of the mean gradient within 4 SE (both estimates'
    errors) of the y-enumerated, z-reparameterised gradient of the IWAE_2 bound, and the mean value above the exact
    ELBO and below log p(x)."""
    x = batch()
    params = pair.guide_params() + pair.model_params()
    copies = 100
    elbo = make_elbo("vimco", num_particles=2, max_plate_nesting=1)
    values, grads = draws(elbo, pair, x.repeat(copies, 1), 30, params)
    truth = pair.iwae_gradient_draws(x, 2, 400, params, seed=5)
    z = z_scores(grads / copies, None, truth)
    assert z.abs().max() < 4, z.abs().max()
    se = float(values.std() / copies / math.sqrt(len(values)))
    mean = float(values.mean() / copies)
    assert float(pair.elbo(x).sum().detach()) + 4 * se < mean < float(pair.log_px(x).sum().detach()) - 4 * se
    assert z_scores(grads / copies, None, 0.8 * truth).abs().max() > 4


def test_rws_model_gradient_is_the_iwae_bounds(pair):
    """RWS, K = 3: the model's mean gradient within 4 SE of the y-enumerated IWAE_3 gradient; its guide gradient
    (wake-phi) is not the bound's (more than 4 SE off in some element)."""
    x = batch()
    params = pair.guide_params() + pair.model_params()
    n_guide = sum(p.numel() for p in pair.guide_params())
    copies = 100
    elbo = make_elbo("rws", num_particles=3, max_plate_nesting=1)
    _, grads = draws(elbo, pair, x.repeat(copies, 1), 30, params)
    truth = pair.iwae_gradient_draws(x, 3, 300, params, seed=6)
    z = z_scores(grads[:, n_guide:] / copies, None, truth[:, n_guide:])
    assert z.abs().max() < 4, z.abs().max()
    assert z_scores(grads[:, :n_guide] / copies, None, truth[:, :n_guide]).abs().max() > 4


def test_tvo_lies_between_the_exact_elbo_and_log_px_and_is_the_elbo_with_one_partition(pair):
    """TVO with K = 200: its mean value above the closed-form ELBO and below the closed-form log p(x), each by more
    than 4 SE; with one partition point it is the ELBO (within 4 SE)."""
    x = batch()
    elbo, log_px = float(pair.elbo(x).sum().detach()), float(pair.log_px(x).sum().detach())
    pyro.set_rng_seed(0)

    def values(**options) -> Tensor:
        estimator = make_elbo("tvo", num_particles=200, max_plate_nesting=1, **options)
        return torch.tensor([-estimator.loss(pair.model, pair.guide, x) for _ in range(20)])

    tvo = values()
    se = float(tvo.std() / math.sqrt(len(tvo)))
    assert elbo + 4 * se < float(tvo.mean()) < log_px - 4 * se, (elbo, float(tvo.mean()), log_px, se)
    one = values(partitions=1)
    assert abs(float(one.mean()) - elbo) < 4 * float(one.std() / math.sqrt(len(one)))
