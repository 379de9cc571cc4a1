"""Estimators of discrete latents against the exact truth from enumeration.

Models: D independent Bernoulli latents (D = 8: 256 states; D = 4: 16), a logistic decoder and an amortised linear
guide, written here with plain Pyro. Truths: log p(x), the ELBO and the K-sample IWAE bound summed over every state
(or K-tuple of states) with torch autograd, so their gradients with respect to guide and model parameters are exact
(``pyro_vae.estimators.exact``), itself checked against a loop over states with torch distributions and no Pyro.
Statistical tests use fixed seeds and state their tolerance in standard errors (SE) of the mean over R draws.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS, make_elbo
from pyro_vae.estimators.exact import enumerate_states
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM = 6


class BernoulliPair(nn.Module):
    """p(z) = prod_d Bernoulli(sigmoid(a_d)), p(x | z) = Bernoulli(sigmoid(W z + b)), q(z | x) = Bernoulli(
    sigmoid(V x + c)), all D latents in one ``to_event(1)`` site."""

    def __init__(self, d: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.d = d
        self.prior_logits = nn.Parameter(0.5 * torch.randn(d))
        self.decoder = nn.Linear(d, X_DIM)
        self.encoder = nn.Linear(X_DIM, d)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        prior = pyro.param("prior_logits", self.prior_logits)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=prior).expand([x.shape[0], self.d]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))

    def guide_params(self) -> list[torch.Tensor]:
        return list(self.encoder.parameters())

    def model_params(self) -> list[torch.Tensor]:
        return [self.prior_logits, *self.decoder.parameters()]


def batch(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, X_DIM), 0.5), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def pair():
    pyro.clear_param_store()
    return BernoulliPair()


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def exact_gradient(objective: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """d objective / d params, flattened (the objective is maximised: this is minus the loss's gradient)."""
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, params, retain_graph=True)])


def draws(elbo, pair: BernoulliPair, x: torch.Tensor, r: int, params: list[torch.Tensor], seed: int = 0):
    """R draws of (value per batch, gradient of the *objective* = minus the loss's gradient)."""
    pyro.set_rng_seed(seed)
    values, grads = [], []
    for _ in range(r):
        for p in params:
            p.grad = None
        values.append(-elbo.loss_and_grads(pair.model, pair.guide, x))
        grads.append(-flat_grad(params))
    for p in params:
        p.grad = None
    return torch.tensor(values), torch.stack(grads)


def z_scores(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(mean - truth) / SE of the mean, element-wise, for R draws in dim 0."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return (samples.mean(0) - truth) / se


# ---------------------------------------------------------------- the truth itself


def test_enumeration_equals_a_loop_over_states_without_pyro():
    pyro.clear_param_store()
    pair = BernoulliPair(d=4)
    x = batch()
    states = enumerate_states(pair.model, pair.guide, x)
    log_px, elbo = [], []
    with torch.no_grad():
        for xi in x:
            joint, q_terms = [], []
            for bits in itertools.product((0.0, 1.0), repeat=4):
                z = torch.tensor(bits)
                log_p = torch.distributions.Bernoulli(logits=pair.prior_logits).log_prob(z).sum()
                log_p += torch.distributions.Bernoulli(logits=pair.decoder(z)).log_prob(xi).sum()
                log_q = torch.distributions.Bernoulli(logits=pair.encoder(xi)).log_prob(z).sum()
                joint.append(log_p)
                q_terms.append(log_q.exp() * (log_p - log_q))
            log_px.append(torch.logsumexp(torch.stack(joint), 0))
            elbo.append(torch.stack(q_terms).sum())
    torch.testing.assert_close(states.log_likelihood().detach(), torch.stack(log_px))
    torch.testing.assert_close(states.elbo().detach(), torch.stack(elbo))
    assert (states.log_q.exp().sum(0) - 1).abs().max() < 1e-5  # q sums to one over the 16 states
    # IWAE_1 is the ELBO and the bounds rise with K towards log p(x) (Burda et al. 2015, theorem 1).
    bounds = [states.iwae_bound(k).detach() for k in (1, 2, 3)]
    torch.testing.assert_close(bounds[0], states.elbo().detach())
    assert ((bounds[1] > bounds[0]) & (bounds[2] > bounds[1]) & (bounds[2] < states.log_likelihood())).all()


def test_enum_is_the_exact_elbo_and_gradient(pair):
    x = batch()
    params = pair.guide_params() + pair.model_params()
    states = enumerate_states(pair.model, pair.guide, x)
    truth = exact_gradient(states.elbo().sum(), params)
    value, grad = draws(make_elbo("enum", max_plate_nesting=1), pair, x, 1, params)
    assert float(value) == pytest.approx(float(states.elbo().sum().detach()), rel=1e-5)
    torch.testing.assert_close(grad[0], truth, rtol=1e-4, atol=1e-5)


def test_enum_refuses_too_many_states_in_one_line(pair):
    with pytest.raises(UserError, match="2\\^8 states, more than max_states = 100"):
        make_elbo("enum", max_states=100).loss(pair.model, pair.guide, batch())


# ---------------------------------------------------------------- unbiased gradients

# (name, options, draws R): each draw averages K particles (or antithetic pairs), so R draws give the SE.
ELBO_UNBIASED = [
    ("reinforce", {"num_particles": 200, "baseline": "none"}, 30),
    ("reinforce", {"num_particles": 200, "baseline": "average"}, 30),
    ("reinforce", {"num_particles": 200, "baseline": "learned"}, 30),
    ("disarm", {"num_particles": 100}, 30),
]


@pytest.mark.parametrize(
    ("name", "options", "r"), ELBO_UNBIASED, ids=[f"{n}-{o.get('baseline', 'pairs')}" for n, o, _ in ELBO_UNBIASED]
)
def test_mean_gradient_is_the_exact_elbo_gradient(name, options, r, pair):
    """Every element of the mean gradient (guide and model) within 4 SE of the exact ELBO gradient, and the mean
    value within 4 SE of the exact ELBO."""
    x = batch()
    params = pair.guide_params() + pair.model_params()
    states = enumerate_states(pair.model, pair.guide, x)
    truth = exact_gradient(states.elbo().sum(), params)
    values, grads = draws(make_elbo(name, max_plate_nesting=1, **options), pair, x, r, params)
    z = z_scores(grads, truth)
    assert z.abs().max() < 4, (name, z.abs().max())
    assert abs(float(z_scores(values[:, None], states.elbo().sum().detach()))) < 4
    # ... and the test can fail: the same draws are far from a slightly wrong truth (a 10% smaller gradient).
    assert z_scores(grads, 0.9 * truth).abs().max() > 4


@pytest.mark.parametrize(("d", "k"), [(8, 2), (4, 3)], ids=["D8-K2", "D4-K3"])
def test_vimco_mean_gradient_is_the_exact_iwae_bound_gradient(d, k):
    """VIMCO with K particles: the mean value is the exact K-sample bound and the mean gradient its exact gradient
    (4 SE), draws vectorised as 100 copies of each example."""
    pyro.clear_param_store()
    pair = BernoulliPair(d=d)
    x = batch()
    params = pair.guide_params() + pair.model_params()
    bound = enumerate_states(pair.model, pair.guide, x).iwae_bound(k).sum()
    truth = exact_gradient(bound, params)
    copies = 100
    repeated = x.repeat(copies, 1)
    values, grads = draws(make_elbo("vimco", num_particles=k, max_plate_nesting=1), pair, repeated, 20, params)
    z = z_scores(grads / copies, truth)
    assert z.abs().max() < 4, z.abs().max()
    assert abs(float(z_scores(values[:, None] / copies, bound.detach()))) < 4
    assert z_scores(grads / copies, 0.9 * truth).abs().max() > 4


def test_rws_model_gradient_is_the_iwae_bounds_and_guide_gradient_the_wake_phi_expectation():
    """RWS, K = 3 on 16 states: the model's mean gradient is the exact gradient of the IWAE_3 bound; the guide's is
    the exact expectation of sum_k w~_k grad log q(z_k | x) over all 16^3 triples (not the bound's gradient)."""
    pyro.clear_param_store()
    pair = BernoulliPair(d=4)
    x = batch()
    k, copies = 3, 100
    states = enumerate_states(pair.model, pair.guide, x)
    model_truth = exact_gradient(states.iwae_bound(k).sum(), pair.model_params())
    # Wake-phi's expectation: sum over triples of prod_k q(z_k) sum_k w~_k grad log q(z_k), by autograd on
    # sum_triples [prod q] (detached) * sum_k w~_k (detached) * log q(z_k).
    s = states.log_q.shape[0]
    log_q, log_w = states.log_q, states.log_w.detach()
    grids = [torch.arange(s).reshape([s if j == i else 1 for j in range(k)]) for i in range(k)]
    idx = torch.broadcast_tensors(*grids)
    lq = torch.stack([log_q[i.reshape(-1)] for i in idx])  # (K, S^K, N)
    lw = torch.stack([log_w[i.reshape(-1)] for i in idx])
    prob = lq.detach().sum(0).exp()
    w_tilde = torch.softmax(lw, 0)
    wake_phi = (prob * (w_tilde * lq).sum(0)).sum()
    guide_truth = exact_gradient(wake_phi, pair.guide_params())
    bound_guide = exact_gradient(states.iwae_bound(k).sum(), pair.guide_params())
    params = pair.guide_params() + pair.model_params()
    _, grads = draws(make_elbo("rws", num_particles=k, max_plate_nesting=1), pair, x.repeat(copies, 1), 20, params)
    grads = grads / copies
    n_guide = guide_truth.numel()
    assert z_scores(grads[:, n_guide:], model_truth).abs().max() < 4
    assert z_scores(grads[:, :n_guide], guide_truth).abs().max() < 4
    assert z_scores(grads[:, :n_guide], bound_guide).abs().max() > 4  # it is not the IWAE bound's guide gradient


# ---------------------------------------------------------------- relaxations: bias measured, not hidden


def test_straight_through_value_is_the_discrete_elbo_but_its_gradient_is_biased(pair):
    x = batch()
    params = pair.guide_params() + pair.model_params()
    states = enumerate_states(pair.model, pair.guide, x)
    truth = exact_gradient(states.elbo().sum(), params)
    elbo = make_elbo("relaxed", num_particles=200, straight_through=True, temperature=1.0, max_plate_nesting=1)
    values, grads = draws(elbo, pair, x, 30, params)
    assert abs(float(z_scores(values[:, None], states.elbo().sum().detach()))) < 4  # the value is unbiased
    assert z_scores(grads, truth).abs().max() > 10  # the gradient's bias is detected


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_relaxed_value_and_gradient_are_biased_for_the_discrete_elbo(temperature, pair):
    """The relaxed ELBO is another objective: its mean value and gradient are many SE from the discrete ELBO's, at
    temperature 1 and still at 0.1 (measured relative gradient bias |E g - g*| / |g*|: 0.23 and 0.24 here: the
    Concrete densities' ratio does not tend to the discrete one as the temperature falls)."""
    x = batch()
    params = pair.guide_params() + pair.model_params()
    states = enumerate_states(pair.model, pair.guide, x)
    truth = exact_gradient(states.elbo().sum(), params)
    elbo = make_elbo("relaxed", num_particles=200, temperature=temperature, max_plate_nesting=1)
    values, grads = draws(elbo, pair, x, 30, params)
    assert abs(float(z_scores(values[:, None], states.elbo().sum().detach()))) > 10
    assert z_scores(grads, truth).abs().max() > 10
    assert 0.1 < float((grads.mean(0) - truth).norm() / truth.norm()) < 0.5


# ---------------------------------------------------------------- what each needs, in one line


def hierarchical_guide(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", dist.Bernoulli(logits=torch.zeros(x.shape[0], 2)).to_event(1))
        pyro.sample("z2", dist.Bernoulli(logits=3.0 * z1 - 1.5).to_event(1))


def hierarchical_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", dist.Bernoulli(logits=torch.zeros(x.shape[0], 2)).to_event(1))
        z2 = pyro.sample("z2", dist.Bernoulli(logits=z1 - 0.5).to_event(1))
        pyro.sample("x", dist.Normal(z2.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)


def gaussian_guide(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))


def gaussian_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)


@pytest.mark.parametrize(
    ("name", "model", "guide", "message"),
    [
        ("disarm", gaussian_model, gaussian_guide, "disarm needs Bernoulli latents; guide site 'z' is Normal"),
        ("disarm", hierarchical_model, hierarchical_guide, "disarm needs one layer of Bernoulli latents"),
        ("relaxed", gaussian_model, gaussian_guide, "relaxed needs Bernoulli or OneHotCategorical latents"),
        ("vimco", gaussian_model, gaussian_guide, "needs num_particles >= 2"),
    ],
    ids=["disarm-gaussian", "disarm-hierarchical", "relaxed-gaussian", "vimco-one-particle"],
)
def test_an_estimator_says_what_it_needs_in_one_line(name, model, guide, message):
    x = torch.zeros(3, 1)
    with pytest.raises(UserError, match=message) as err:
        make_elbo(name, num_particles=1, max_plate_nesting=1).loss_and_grads(model, guide, x)
    assert "\n" not in str(err.value)


def test_hierarchical_guide_enumerated_and_by_vimco():
    """Two dependent Bernoulli sites: enum's value is the exact ELBO (16 states), and VIMCO's value the IWAE_2 bound."""
    x = torch.tensor([[0.5], [1.5]])
    states = enumerate_states(hierarchical_model, hierarchical_guide, x)
    assert make_elbo("enum", max_plate_nesting=1).loss(hierarchical_model, hierarchical_guide, x) == pytest.approx(
        -float(states.elbo().sum().detach()), rel=1e-5
    )
    pyro.set_rng_seed(0)
    values = torch.tensor(
        [-make_elbo("vimco", num_particles=2, max_plate_nesting=1).loss(hierarchical_model, hierarchical_guide, x)
         for _ in range(400)]
    )  # fmt: skip
    assert abs(float(z_scores(values[:, None], states.iwae_bound(2).sum().detach()))) < 4


def test_the_specs_say_which_latents_they_take():
    assert {n for n, s in ESTIMATORS.items() if s.latents == "discrete"} == {"enum", "relaxed", "disarm"}
    assert {n for n, s in ESTIMATORS.items() if s.latents == "any"} == {"reinforce", "vimco", "rws", "tvo"}
    assert ESTIMATORS["vimco"].multi_particle and ESTIMATORS["rws"].multi_particle


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("enum", {}),
        ("reinforce", {"num_particles": 3}),
        ("vimco", {"num_particles": 3}),
        ("rws", {"num_particles": 3}),
        ("relaxed", {"num_particles": 3}),
        ("relaxed", {"num_particles": 3, "straight_through": True}),
        ("disarm", {"num_particles": 3}),
    ],
    ids=["enum", "reinforce", "vimco", "rws", "relaxed", "straight-through", "disarm"],
)
def test_differentiable_loss_is_loss_and_grads_on_the_same_draws(name, options, pair):
    """``differentiable_loss`` (for a user's own optimiser loop) gives the value and gradient of ``loss_and_grads``
    on the same random draws (the learned baseline is still at its start in both)."""
    x = batch()
    params = pair.guide_params() + pair.model_params()
    opts = {**options, **({"baseline": "average"} if name == "reinforce" else {})}
    pyro.set_rng_seed(3)
    value, grads = draws(make_elbo(name, max_plate_nesting=1, **opts), pair, x, 1, params, seed=3)
    pyro.set_rng_seed(3)
    loss = make_elbo(name, max_plate_nesting=1, **opts).differentiable_loss(pair.model, pair.guide, x)
    grad = -exact_gradient(loss, params)
    assert float(loss.detach()) == pytest.approx(-float(value), rel=1e-5)
    torch.testing.assert_close(grad, grads[0], rtol=1e-4, atol=1e-6)


class CategoricalPair(nn.Module):
    """One OneHotCategorical latent of 6 categories: p(z) = Cat(softmax(a)), p(x | z) = Bernoulli(sigmoid(W z + b)),
    q(z | x) = Cat(softmax(V x + c))."""

    def __init__(self, k: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.prior_logits = nn.Parameter(torch.randn(k))
        self.decoder = nn.Linear(k, X_DIM)
        self.encoder = nn.Linear(X_DIM, k)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("cat_decoder", self.decoder)
        prior = pyro.param("cat_prior_logits", self.prior_logits)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=prior.expand(x.shape[0], -1)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("cat_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=self.encoder(x)))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("enum", {}),
        ("reinforce", {"num_particles": 200}),
        ("relaxed", {"num_particles": 200, "straight_through": True}),
    ],
    ids=["enum", "reinforce", "straight-through"],
)
def test_one_hot_categorical_latents(name, options):
    """A categorical latent: enumeration against a sum over its 6 values without Pyro; enum exact; reinforce's mean
    gradient and straight-through's mean value within 4 SE of the exact ELBO's."""
    pyro.clear_param_store()
    pair = CategoricalPair()
    x = batch()
    states = enumerate_states(pair.model, pair.guide, x)
    with torch.no_grad():
        eye = torch.eye(6)
        log_p = torch.log_softmax(pair.prior_logits, 0)[:, None] + torch.stack(
            [torch.distributions.Bernoulli(logits=pair.decoder(e)).log_prob(x).sum(-1) for e in eye]
        )
        log_q = torch.log_softmax(pair.encoder(x), -1).T
        torch.testing.assert_close(states.elbo().detach(), (log_q.exp() * (log_p - log_q)).sum(0))
    params = list(pair.encoder.parameters()) + [pair.prior_logits, *pair.decoder.parameters()]
    truth = exact_gradient(states.elbo().sum(), params)
    values, grads = draws(make_elbo(name, max_plate_nesting=1, **options), pair, x, 1 if name == "enum" else 30, params)
    if name == "enum":
        torch.testing.assert_close(grads[0], truth, rtol=1e-4, atol=1e-5)
    elif name == "reinforce":
        assert z_scores(grads, truth).abs().max() < 4
    else:
        assert abs(float(z_scores(values[:, None], states.elbo().sum().detach()))) < 4


def test_tvo_value_and_gradient_are_the_exact_tvo_bounds_as_k_grows():
    """TVO (5 partition points) with K = 1000 on 16 states: its mean value and every element of its mean gradient
    within 4 SE of the exact TVO bound sum_j d beta_j E_{pi_beta_j}[log w] and of that bound's autograd gradient
    (pi_beta = softmax(log q + beta log w) over the states; the self-normalised bias is O(1/K), measured 1.4% of the
    gradient's length at K = 1000), and ELBO < TVO < log p(x)."""
    from pyro_vae.estimators.tvo import partition

    pyro.clear_param_store()
    pair = BernoulliPair(d=4)
    x = batch()
    states = enumerate_states(pair.model, pair.guide, x)
    betas = partition(5, 0.01)
    exact = sum(
        width * (torch.softmax(states.log_q + beta * states.log_w, 0) * states.log_w).sum(0)
        for beta, width in zip(betas[:-1], betas[1:] - betas[:-1], strict=True)
    ).sum()
    assert float(states.elbo().sum().detach()) < float(exact.detach()) < float(states.log_likelihood().sum().detach())
    params = pair.guide_params() + pair.model_params()
    truth = exact_gradient(exact, params)
    values, grads = draws(make_elbo("tvo", num_particles=1000, max_plate_nesting=1), pair, x, 20, params)
    assert z_scores(grads, truth).abs().max() < 4
    assert abs(float(z_scores(values[:, None], exact.detach()))) < 4
    assert z_scores(grads, 0.9 * truth).abs().max() > 4


def test_tvo_on_continuous_latents_lies_between_the_closed_form_elbo_and_log_px(float64):
    """TVO needs no reparameterisation: on the linear-Gaussian model (closed-form ELBO and log p(x)) its value with
    K = 200 lies above the ELBO and below log p(x), each by more than 4 SE; with one partition point it is the ELBO
    (within 4 SE)."""
    from pyro_vae.linear_gaussian import LinearGaussian, exact_elbo
    from tests.test_estimators import linear_gaussian

    model, guide = linear_gaussian()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)).double()
    elbo = float(exact_elbo(model, guide, x).sum().detach())
    log_px = float(LinearGaussian.of(model).log_marginal(x).sum())
    pyro.set_rng_seed(0)

    def values(**options):
        estimator = make_elbo("tvo", num_particles=200, max_plate_nesting=1, **options)
        return torch.tensor([-estimator.loss(model, guide, x) for _ in range(20)])

    tvo = values()
    se = float(tvo.std() / math.sqrt(len(tvo)))
    assert elbo + 4 * se < float(tvo.mean()) < log_px - 4 * se, (elbo, float(tvo.mean()), log_px, se)
    one = values(partitions=1)
    assert abs(float(one.mean()) - elbo) < 4 * float(one.std() / math.sqrt(len(one)))
