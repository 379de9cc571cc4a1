"""Discrete latent families: the bernoulli and categorical priors and guides (z in {0,1}^J; D one-hot variables of C
classes as one flat vector of J = D*C values).

Truths: the KL of two factorised Bernoullis and of two categoricals written out from the definition; the ELBO and
log p(x) by enumeration of all 2^J (or C^D) codes; probabilities over the enumerated support summing to one. The
statistical checks state their tolerance in standard errors with fixed seeds.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO
from pyro_vae.models.onehot import FlatOneHotCategorical

from pyro_vae import register_estimator
from pyro_vae.ais import ais
from pyro_vae.cli import main
from pyro_vae.config import VAEConfig
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.evaluation import active_units, kl_per_dimension
from pyro_vae.gaps import GapOptions, local_optimisation_gaps
from pyro_vae.importance import log_likelihood
from pyro_vae.kl_check import kl_kinds
from pyro_vae.registry import build
from pyro_vae.training import TrainConfig, train
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = Path(__file__).parent / "plugins" / "tracegraph_estimator.py"


@pytest.fixture
def tracegraph():
    """Pyro's TraceGraph_ELBO as the estimator "tracegraph" for the test, removed afterwards."""
    register_estimator("tracegraph", TraceGraph_ELBO)
    yield "tracegraph"
    del ESTIMATORS["tracegraph"]


def pair(prior: str, guide: str, z_dim: int, classes: int | None = None, x_dim: int = 6, seed: int = 0):
    options = {"prior": {"classes": classes}, "guide": {"classes": classes}} if classes else {}
    torch.manual_seed(seed)
    pyro.clear_param_store()
    return build(VAEConfig(x_dim=x_dim, z_dim=z_dim, prior=prior, guide=guide, hidden=(8,), options=options))


def binary_codes(j: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=j)))


def bernoulli_kl_by_hand(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum_j sum_{z_j in {0,1}} q(z_j) log q(z_j)/p(z_j), from probabilities."""
    return (q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()).sum(-1)


def exact_elbo_and_log_px(model, guide, x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ELBO_i, log p(x_i)) by summing over every code: E_q[log p(x,z) - log q(z|x)] and log sum_z p(z) p(x|z)."""
    with torch.no_grad():
        q = guide.posterior(x)  # batch (N,)
        z = codes.unsqueeze(1).expand(codes.shape[0], x.shape[0], codes.shape[1])  # (M, N, J)
        log_q = q.log_prob(z)
        log_joint = model.prior().log_prob(z) + model.likelihood_dist(z).log_prob(x)
        elbo = (log_q.exp() * (log_joint - log_q)).sum(0)
        return elbo, log_joint.logsumexp(0)


# ---------------------------------------------------------------- the distributions


def test_the_flat_one_hot_categorical_is_a_normalised_density_on_its_enumerated_support():
    torch.manual_seed(0)
    d = FlatOneHotCategorical(torch.randn(5, 3, 4))  # 5 examples, D = 3 variables, C = 4 classes
    assert d.batch_shape == (5,) and d.event_shape == (12,)
    support = d.enumerate_support()
    assert support.shape == (64, 5, 12)
    assert torch.allclose(d.log_prob(support).logsumexp(0), torch.zeros(5), atol=1e-6)
    # the entropy from the enumeration, against torch's sum of categorical entropies
    p = d.log_prob(support).exp()
    assert torch.allclose(-(p * d.log_prob(support)).sum(0), d.entropy(), atol=1e-5)
    z = d.sample((3,))
    assert z.shape == (3, 5, 12) and bool(d.support.check(z).all())
    assert not bool(d.support.check(torch.ones(12)))


def test_the_registered_kls_are_the_sums_of_the_per_variable_kls_written_out():
    torch.manual_seed(1)
    q_logits, p_logits = torch.randn(4, 5), torch.randn(5)
    q, p = dist.Bernoulli(logits=q_logits).to_event(1), dist.Bernoulli(logits=p_logits).to_event(1)
    # different batch shapes, (4,) against (): torch's own Bernoulli KL fails there
    kl = torch.distributions.kl_divergence(q, p)
    assert torch.allclose(kl, bernoulli_kl_by_hand(q_logits.sigmoid(), p_logits.sigmoid()), atol=1e-6)
    qc, pc = torch.randn(4, 2, 3).softmax(-1), torch.randn(2, 3).softmax(-1)
    kl = torch.distributions.kl_divergence(FlatOneHotCategorical(qc.log()), FlatOneHotCategorical(pc.log()))
    assert torch.allclose(kl, (qc * (qc / pc).log()).sum((-1, -2)), atol=1e-6)


# ---------------------------------------------------------------- meanfield: Pyro uses the registered KL


@pytest.mark.parametrize(("prior", "z_dim", "classes"), [("bernoulli", 3, None), ("categorical", 4, 2)])
def test_meanfield_uses_the_analytic_kl_and_its_mean_is_the_elbo_by_enumeration(prior, z_dim, classes):
    """With validation off, TraceMeanField_ELBO's value is KL(q||p) in closed form minus log p(x|z) at one z ~ q:
    with a decoder that ignores z it is exactly -ELBO every draw (a Monte Carlo KL would vary); with a trained-like
    random decoder its mean over draws is -ELBO by enumeration, within 4 standard errors."""
    model, guide = pair(prior, prior, z_dim, classes)
    x = torch.bernoulli(torch.full((5, 6), 0.5), generator=torch.Generator().manual_seed(2))
    codes = binary_codes(z_dim) if prior == "bernoulli" else guide.posterior(x).enumerate_support(expand=False)
    codes = codes.reshape(codes.shape[0], -1)
    elbo = TraceMeanField_ELBO()
    with pyro.validation_enabled(False):
        with torch.no_grad():
            saved = [p.clone() for p in model.decoder.parameters()]
            for p in model.decoder.parameters():
                if p.dim() == 2 and p.shape[1] == z_dim:
                    p.zero_()  # the first layer: x no longer depends on z
        exact, _ = exact_elbo_and_log_px(model, guide, x, codes)
        values = torch.tensor([elbo.loss(model, guide, x) for _ in range(5)])
        assert torch.allclose(values, -exact.sum().expand(5).to(values), rtol=1e-5)
        with torch.no_grad():
            for p, s in zip(model.decoder.parameters(), saved, strict=True):
                p.copy_(s)
        exact, _ = exact_elbo_and_log_px(model, guide, x, codes)
        pyro.set_rng_seed(3)
        draws = torch.tensor([elbo.loss(model, guide, x) for _ in range(400)])
    se = float(draws.std()) / math.sqrt(draws.numel())
    assert abs(float(draws.mean()) + float(exact.sum())) < 4 * se
    assert se > 0


def test_with_validation_on_pyros_meanfield_refuses_the_discrete_guide_and_so_does_the_config():
    model, guide = pair("bernoulli", "bernoulli", 3)
    with pytest.raises(NotImplementedError):  # Pyro's check_fully_reparametrized
        TraceMeanField_ELBO().loss(model, guide, torch.zeros(2, 6))
    for name in ("trace", "meanfield", "iwae", "renyi", "stl", "dreg", "jit-trace"):
        model_config = VAEConfig(z_dim=4, prior="categorical", guide="categorical")
        with pytest.raises(UserError, match=f"estimator '{name}' needs a reparameterised guide") as err:
            TrainConfig(model=model_config, elbo=name)
        assert "\n" not in str(err.value)
        assert "use --elbo enum, reinforce, vimco, rws, relaxed, disarm" in str(err.value)


def test_what_pyro_does_with_a_bernoulli_guide_meanfield_biased_trace_unbiased_by_enumeration():
    """Why meanfield is refused rather than allowed: against the exact gradient of -ELBO wrt the guide's logits (the
    4 codes enumerated), Pyro's TraceMeanField_ELBO (validation off) returns a gradient with no noise and the wrong
    value, because the reconstruction's score-function term is dropped; Trace_ELBO's plain score function is
    unbiased (within 4 standard errors), only noisy."""
    torch.manual_seed(0)
    w, x = torch.randn(2, 3), torch.tensor([[1.0, 0.0, 1.0]])
    logit = torch.tensor([0.3, -0.5], requires_grad=True)
    prior = dist.Bernoulli(torch.full((2,), 0.5)).to_event(1)

    def model(x):
        with pyro.plate("data", 1):
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Bernoulli(logits=z @ w).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 1):
            pyro.sample("z", dist.Bernoulli(logits=logit.expand(1, 2)).to_event(1))

    codes = binary_codes(2)
    log_q = dist.Bernoulli(logits=logit).to_event(1).log_prob(codes)
    log_joint = prior.log_prob(codes) + dist.Bernoulli(logits=codes @ w).to_event(1).log_prob(x)
    exact = torch.autograd.grad(-(log_q.exp() * (log_joint - log_q)).sum(), logit)[0]
    draws = {}
    for name, elbo in (("trace", pyro.infer.Trace_ELBO()), ("meanfield", TraceMeanField_ELBO())):
        pyro.set_rng_seed(1)
        with pyro.validation_enabled(False):
            grads = [torch.autograd.grad(elbo.differentiable_loss(model, guide, x), logit)[0] for _ in range(400)]
        draws[name] = torch.stack(grads)
    trace = draws["trace"]
    assert torch.all((trace.mean(0) - exact).abs() < 4 * trace.std(0) / math.sqrt(400))
    meanfield = draws["meanfield"]
    assert torch.all(meanfield.std(0) < 1e-6)  # the same value every draw: no score-function term
    assert (meanfield[0] - exact).abs().max() > 0.1  # and off by far more than noise (0.29 measured)


def test_the_refusal_names_the_registered_estimators_that_can_train_it(tracegraph):
    with pytest.raises(UserError, match=r"use --elbo enum, .* or tracegraph$"):
        TrainConfig(model=VAEConfig(z_dim=4, prior="bernoulli", guide="bernoulli"), elbo="meanfield")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(prior="standard", guide="bernoulli"), "use --prior vamp or bernoulli with it"),
        (
            dict(prior="bernoulli", guide="normal"),
            r"puts z on R\^J but the bernoulli prior is a density on the binary vectors",
        ),
        (dict(prior="categorical", guide="bernoulli"), "binary vectors"),
        (dict(prior="categorical", guide="categorical", z_dim=5), "z_dim = 5 is not a multiple of 2 classes"),
        (
            dict(prior="categorical", guide="categorical", z_dim=6, options={"prior": {"classes": 3}}),
            "prior has 3 classes but the categorical guide 2",
        ),
        (
            dict(prior="bernoulli", guide="bernoulli", options={"prior": {"probs": 1.0}}),
            r"probs must be a finite number in \(0, 1\)",
        ),
    ],
)
def test_mismatched_families_are_refused_in_one_line(options, message):
    with pytest.raises(UserError, match=message) as err:
        VAEConfig(**{"z_dim": 4, **options})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("prior", "guide"),
    [("bernoulli", "bernoulli"), ("vamp", "bernoulli"), ("categorical", "categorical"), ("vamp", "categorical")],
)
def test_the_discrete_pairs_keep_the_posterior_contract_and_take_score_function_steps(prior, guide):
    options = {"prior": {"components": 3}} if prior == "vamp" else {}
    model, q = build(VAEConfig(x_dim=6, z_dim=4, hidden=(8,), prior=prior, guide=guide, options=options))
    x = torch.bernoulli(torch.full((12, 6), 0.4), generator=torch.Generator().manual_seed(9))
    assert kl_kinds(model, q, x) == {"z": "monte-carlo" if prior == "vamp" else "analytic"}
    posterior = q.posterior(x)
    assert (posterior.batch_shape, posterior.event_shape, posterior.mean.shape) == ((12,), (4,), (12, 4))
    assert not posterior.has_rsample and bool(posterior.support.check(posterior.sample()).all())
    pyro.clear_param_store()
    svi = pyro.infer.SVI(model, q, pyro.optim.Adam({"lr": 0.05}), TraceGraph_ELBO())
    before = [p.detach().clone() for p in q.head.parameters()]
    assert all(math.isfinite(svi.step(x)) for _ in range(3))
    assert any(not torch.equal(a, b) for a, b in zip(before, q.head.parameters(), strict=True))  # the encoder learns


# ---------------------------------------------------------------- evaluation


def test_importance_sampled_log_likelihood_matches_the_enumeration_of_256_codes():
    model, guide = pair("bernoulli", "bernoulli", 8, x_dim=10, seed=4)
    x = torch.bernoulli(torch.full((6, 10), 0.4), generator=torch.Generator().manual_seed(5))
    _, exact = exact_elbo_and_log_px(model, guide, x, binary_codes(8))
    pyro.set_rng_seed(6)
    estimate, stderr = log_likelihood(model, guide, x, num_samples=2000, return_stderr=True)
    assert torch.all((estimate - exact).abs() < 4 * stderr), (estimate - exact) / stderr
    assert torch.all(stderr > 0)


def test_kl_per_dimension_and_active_units_of_a_bernoulli_guide_are_the_closed_forms():
    model, guide = pair("bernoulli", "bernoulli", 3, seed=7)
    x = torch.bernoulli(torch.full((20, 6), 0.5), generator=torch.Generator().manual_seed(8))
    per_dim, total = kl_per_dimension(model, guide, x)
    probs = guide.posterior(x).mean.detach()
    by_hand = (probs * (probs / 0.5).log() + (1 - probs) * ((1 - probs) / 0.5).log()).mean(0)
    assert torch.allclose(per_dim, by_hand, atol=1e-6) and total == pytest.approx(float(by_hand.sum()), abs=1e-5)
    _, variances = active_units(model, guide, x)
    assert torch.allclose(variances, probs.var(0, unbiased=False), atol=1e-7)


def test_ais_and_the_gaps_refuse_discrete_latents_in_one_line():
    model, guide = pair("categorical", "categorical", 4, classes=2)
    x = torch.zeros(3, 6)
    with pytest.raises(UserError, match=r"AIS \(and BDMC\) needs continuous latents.*site 'z' \(FlatOneHot"):
        ais(model, guide, x)
    with pytest.raises(UserError, match="inference gaps.*'z' \\(FlatOneHotCategorical\\) is discrete: drop --gaps"):
        local_optimisation_gaps(model, guide, x, GapOptions(num_steps=1))


# ---------------------------------------------------------------- training, the CLI, figures, resume


@pytest.mark.parametrize(("guide", "z_dim", "classes", "count"), [("bernoulli", 3, None, 8), ("categorical", 6, 3, 9)])
def test_codes_png_decodes_each_code_of_the_latent_space_once(guide, z_dim, classes, count):
    from pyro_vae.figures import _all_codes

    model, q = pair(guide, guide, z_dim, classes)
    codes = _all_codes(q, torch.zeros(1, 6))
    assert codes.shape == (count, z_dim) and len({tuple(c.tolist()) for c in codes}) == count
    assert bool(q.posterior(torch.zeros(count, 6)).support.check(codes).all())  # every one a valid z
    big, q_big = pair("bernoulli", "bernoulli", 9)
    assert _all_codes(q_big, torch.zeros(1, 6)) is None  # 512 > MAX_CODES: none drawn


def test_a_binary_latent_space_too_large_to_draw_says_so_in_one_line(tmp_path):
    from pyro_vae.figures import write_figures

    data = load_data("digits")
    model, q = build(VAEConfig(x_shape=data.x_shape, z_dim=9, prior="bernoulli", guide="bernoulli", hidden=(8,)))
    with pytest.warns(UserWarning, match="codes.png not drawn: the discrete latent space has more than 256 codes"):
        written = write_figures(model, q, data, [], tmp_path)
    assert {p.name for p in written} == {"reconstructions.png", "samples.png", "latent.png"}


def test_a_bernoulli_vae_trains_with_a_score_function_estimator_and_resumes_exactly(tmp_path, tracegraph):
    def config(epochs: int) -> TrainConfig:
        model = dict(z_dim=4, prior="bernoulli", guide="bernoulli", hidden=(16,), options={"prior": {"learn": True}})
        cfg = dict(elbo=tracegraph, batch_size=256, threads=1, checkpoint_seconds=0)
        return TrainConfig.for_data(load_data("digits"), epochs=epochs, **model, **cfg)

    full = train(config(3), tmp_path / "full", progress=False, figures=False)
    train(config(2), tmp_path / "cut", progress=False, figures=False)
    resumed = train(config(3), tmp_path / "cut", resume=True, progress=False, figures=False)
    assert resumed.metrics == full.metrics
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert "prior.logits" in dict(full.model.named_parameters())
    assert full.metrics[-1]["test_elbo"] > full.metrics[0]["test_elbo"]  # it learns


def test_the_cli_trains_evaluates_and_draws_a_categorical_vae_and_refuses_trace(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--prior", "categorical", "--guide", "categorical", "--prior-classes", "4", "--guide-classes", "4"]
    common += ["--z-dim", "8", "--hidden", "16", "--batch-size", "512", "--threads", "1", "--no-progress"]
    assert main(["train", *common, "--elbo", "trace", "--epochs", "1", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "estimator 'trace' needs a reparameterised guide" in err
    assert not out.exists()
    args = ["train", "--plugin", str(PLUGIN), *common, "--elbo", "tracegraph", "--epochs", "1", "--out", str(out)]
    try:
        assert main(args) == 0
        assert (out / "codes.png").exists() and not (out / "manifold.png").exists()  # 4^2 = 16 codes decoded
        assert main(["evaluate", str(out), "--num-samples", "20", "--examples", "30"]) == 0
        assert main(["evaluate", str(out), "--num-samples", "20", "--examples", "30", "--ais"]) != 0
        assert "needs continuous latents" in capsys.readouterr().err
        compare = ["compare-estimators", str(out), "--draws", "2", "--examples", "8", "--no-progress"]
        assert main(compare) == 0  # the defaults: the estimators that take these latents (disarm skipped, said)
        assert "skipping default estimator disarm" in capsys.readouterr().err
        assert main([*compare, "--estimators", "trace,vimco"]) != 0  # a named one that cannot: one line
        err = capsys.readouterr().err.strip()
        assert "need a reparameterised guide, but guide site 'z' (FlatOneHotCategorical)" in err and "\n" not in err
    finally:
        if "tracegraph" in ESTIMATORS:
            del ESTIMATORS["tracegraph"]
