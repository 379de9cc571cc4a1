"""The ``relaxed`` estimator on the flat one-hot ``categorical`` family (``FlatOneHotCategorical.relaxed``).

Truths: the exact discrete ELBO of a small categorical model (D = 2 variables of C = 3 classes: 9 states) summed
over its states with torch alone; torch's own ``RelaxedOneHotCategorical`` density; the Gumbel-max property (the
argmax of a Concrete draw is distributed as the categorical, Maddison et al. 2017, prop. 1). Statistical tests use
fixed seeds and state their tolerance in standard errors (SE).
"""

from __future__ import annotations

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro_vae.models.onehot import FlatOneHotCategorical, FlatRelaxedOneHotCategorical
from torch import nn

from pyro_vae.cli import main
from pyro_vae.estimators import make_elbo
from pyro_vae.estimators.relaxed import Relax
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

D, C, X_DIM = 2, 3, 5


class FlatCategoricalPair(nn.Module):
    """p(z) = FlatOneHot(a), p(x | z) = Bernoulli(sigmoid(W z + b)), q(z | x) = FlatOneHot(V x + c): z in {0, 1}^6."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.prior_logits = nn.Parameter(torch.randn(D, C))
        self.decoder = nn.Linear(D * C, X_DIM)
        self.encoder = nn.Linear(X_DIM, D * C)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("flat_decoder", self.decoder)
        prior = pyro.param("flat_prior_logits", self.prior_logits)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", FlatOneHotCategorical(prior.expand(x.shape[0], D, C)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("flat_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", FlatOneHotCategorical(self.encoder(x).reshape(-1, D, C)))

    def exact_elbo(self, x: torch.Tensor) -> float:
        """sum_n sum_z q(z | x_n) [log p(z) + log p(x_n | z) - log q(z | x_n)] over the C^D states, torch only."""
        log_prior = torch.log_softmax(self.prior_logits, -1)
        log_q = torch.log_softmax(self.encoder(x).reshape(-1, D, C), -1)
        total = torch.zeros(x.shape[0])
        for classes in itertools.product(range(C), repeat=D):
            z = torch.nn.functional.one_hot(torch.tensor(classes), C).float().reshape(-1)
            lp = sum(log_prior[d, k] for d, k in enumerate(classes))
            lq = sum(log_q[:, d, k] for d, k in enumerate(classes))
            ll = torch.distributions.Bernoulli(logits=self.decoder(z)).log_prob(x).sum(-1)
            total = total + lq.exp() * (lp + ll - lq)
        return float(total.sum())


def batch(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, X_DIM), 0.5), generator=torch.Generator().manual_seed(seed))


def test_straight_through_value_is_the_exact_discrete_elbo_of_a_categorical_model():
    """Straight-through's forward value: hard z scored by the discrete densities, an unbiased estimate of the
    discrete ELBO (9 states enumerated): the mean of 30 draws of 200 particles within 4 SE of it."""
    pyro.clear_param_store()
    pair = FlatCategoricalPair()
    x = batch()
    with torch.no_grad():
        truth = pair.exact_elbo(x)
    elbo = make_elbo("relaxed", num_particles=200, straight_through=True, temperature=0.5, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    values = torch.tensor([-elbo.loss_and_grads(pair.model, pair.guide, x) for _ in range(30)])
    se = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - truth) < 4 * se, (float(values.mean()), truth, se)
    assert pair.encoder.weight.grad.abs().sum() > 0  # the soft draw's gradient reaches the encoder
    # The relaxed (not straight-through) value is another objective: far from the discrete ELBO at temperature 1.
    relaxed = make_elbo("relaxed", num_particles=200, temperature=1.0, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    soft = torch.tensor([-relaxed.loss(pair.model, pair.guide, x) for _ in range(30)])
    assert abs(float(soft.mean()) - truth) > 10 * float(soft.std()) / math.sqrt(len(soft))


def test_the_flat_relaxed_density_is_torchs_concrete_density_summed_over_the_variables():
    torch.manual_seed(0)
    logits = torch.randn(4, D, C)
    flat = FlatOneHotCategorical(logits).relaxed(0.7, straight_through=False)
    assert isinstance(flat, FlatRelaxedOneHotCategorical) and flat.has_rsample
    assert flat.batch_shape == (4,) and flat.event_shape == (D * C,)
    torch_concrete = torch.distributions.RelaxedOneHotCategorical(torch.tensor(0.7), logits=logits)
    value = torch_concrete.rsample((5,))  # (5, 4, D, C)
    expected = torch_concrete.log_prob(value).sum(-1)
    torch.testing.assert_close(flat.log_prob(value.reshape(5, 4, D * C)), expected)
    z = flat.rsample((7,))
    assert z.shape == (7, 4, D * C) and bool(flat.support.check(z).all())
    # Straight-through: hard one-hot draws, scored by the discrete density.
    st = FlatOneHotCategorical(logits).relaxed(0.7, straight_through=True)
    hard = st.rsample((7,))
    assert bool(FlatOneHotCategorical(logits).support.check(hard).all())
    torch.testing.assert_close(st.log_prob(hard), FlatOneHotCategorical(logits).log_prob(hard))


def test_the_argmax_of_a_flat_relaxed_draw_is_distributed_as_the_categorical():
    """Gumbel-max (Maddison et al. 2017, prop. 1): P(argmax z~_d = k) = pi_dk at any temperature; 20000 draws,
    each class frequency within 4 SE of its probability."""
    torch.manual_seed(0)
    logits = torch.randn(D, C)
    z = FlatOneHotCategorical(logits).relaxed(2.0, straight_through=False).sample((20000,))
    freq = torch.nn.functional.one_hot(z.reshape(-1, D, C).argmax(-1), C).float().mean(0)
    probs = torch.softmax(logits, -1)
    se = (probs * (1 - probs) / 20000).sqrt()
    assert ((freq - probs).abs() < 4 * se).all(), (freq, probs)


def test_relax_uses_the_distributions_own_relaxation_in_model_and_guide():
    pyro.clear_param_store()
    pair = FlatCategoricalPair()
    x = batch()
    guide = poutine.trace(Relax(0.5, straight_through=False, in_guide=True)(pair.guide)).get_trace(x)
    model = poutine.trace(
        poutine.replay(Relax(0.5, straight_through=False, in_guide=False)(pair.model), trace=guide)
    ).get_trace(x)
    for trace in (guide, model):
        fn = trace.nodes["z"]["fn"]
        assert isinstance(fn, FlatRelaxedOneHotCategorical) and not fn.straight_through
    st_model = poutine.trace(Relax(0.5, straight_through=True, in_guide=False)(pair.model)).get_trace(x)
    assert isinstance(st_model.nodes["z"]["fn"], FlatOneHotCategorical)  # the model keeps its discrete density


@pytest.mark.slow
def test_relaxed_trains_a_categorical_vae_from_the_cli_and_compare_estimators_skips_disarm(tmp_path, capsys):
    """The task's command trains one epoch on digits and evaluates; compare-estimators' defaults leave out disarm
    (Bernoulli latents only) on this run, saying so in one line, instead of failing."""
    run = tmp_path / "run"
    flags = ["--prior", "categorical", "--guide", "categorical", "--prior-classes", "4", "--guide-classes", "4"]
    small = ["--z-dim", "8", "--epochs", "1", "--hidden", "16", "--no-progress"]
    assert main(["train", "--out", str(run), *flags, *small, "--elbo", "relaxed"]) == 0
    assert json.loads((run / "config.json").read_text())["elbo"] == "relaxed"
    assert main(["evaluate", str(run)]) == 0
    st = ["--elbo", "relaxed", "--elbo-straight-through", "--elbo-temperature", "0.7", "--batch-size", "256"]
    assert main(["train", "--out", str(tmp_path / "st"), *flags, *small, *st]) == 0
    assert json.loads((tmp_path / "st" / "config.json").read_text())["elbo_options"]["straight_through"] is True
    capsys.readouterr()
    assert main(["compare-estimators", str(run), "--draws", "2", "--examples", "8", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipping default estimator disarm: disarm needs Bernoulli latents" in err
    names = [r["name"] for r in json.loads((run / "estimators.json").read_text())["estimators"]]
    assert "relaxed" in names and "disarm" not in names
    # A user-named estimator that refuses the latents stays a one-line error.
    assert main(["compare-estimators", str(run), "--estimators", "disarm", "--draws", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "comparing 1 estimators ..." line
    assert err.startswith("pyro-vae: error:") and "disarm needs Bernoulli latents" in err
