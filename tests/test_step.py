"""The fast training step computes what the plain Pyro step computes, and compiles once."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled

from pyro_vae import BetaScaled, VAEConfig, build
from pyro_vae.step import TrainStep, compiled_objective, make_optimizer, parameters_of
from tests.helpers import closed_form_loss, guide_trace

ROOT = Path(__file__).resolve().parents[1]

MODELS = [
    dict(prior="standard", likelihood="bernoulli"),
    dict(
        prior="gaussian",
        options={"prior": {"loc": 0.5, "scale": 1.7, "learn": True}, "likelihood": {"sigma": 0.6}},
        likelihood="gaussian",
    ),
]


def make(n=8, x_dim=6, z_dim=3, seed=0, **cfg):
    torch.manual_seed(seed)
    cfg.setdefault("likelihood", "bernoulli")
    model, guide = build(VAEConfig(x_dim=x_dim, z_dim=z_dim, hidden=(7,), **cfg))
    g = torch.Generator().manual_seed(seed + 1)
    if cfg["likelihood"] == "bernoulli":
        x = torch.bernoulli(torch.full((n, x_dim), 0.4), generator=g)
    else:
        x = torch.rand(n, x_dim, generator=g)
    return model, guide, x


def meanfield(num_particles=1):
    # As the trainer builds "meanfield".
    return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("cfg", MODELS, ids=["standard-bernoulli", "learnable-gaussian-prior-gaussian-lik"])
def test_compiled_objective_gives_the_plain_loss_and_gradients_at_the_same_z(float64, cfg):
    """Same z (same seed; the z is the one a replayed guide trace records): the compiled objective's loss and
    gradients equal TraceMeanField_ELBO's and the closed form's (eq. 43) to rel 1e-6."""
    model, guide, x = make(**cfg)
    params = parameters_of(model, guide)
    fast = compiled_objective(meanfield())
    fast.differentiable_loss(model, guide, x)  # compile

    pyro.set_rng_seed(7)
    trace = guide_trace(guide, x)
    plain = TraceMeanField_ELBO().differentiable_loss(model, poutine.replay(guide, trace=trace), x)
    closed = closed_form_loss(model, guide, x, trace)
    pyro.set_rng_seed(7)
    loss = fast.differentiable_loss(model, guide, x)

    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert loss.item() == pytest.approx(closed.item(), rel=1e-6)
    g_fast = torch.autograd.grad(loss, params)
    g_plain = torch.autograd.grad(plain, params, retain_graph=True)
    g_closed = torch.autograd.grad(closed, params)
    assert len(params) >= 8
    for a, b, c in zip(g_fast, g_plain, g_closed, strict=True):
        assert b.abs().max() > 0
        assert relative_gap(a, b) < 1e-6
        assert relative_gap(a, c) < 1e-6
    # A different z gives a different loss: the agreement above is not an accident of the data.
    pyro.set_rng_seed(8)
    assert fast.differentiable_loss(model, guide, x).item() != pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(prior="mixture"),
        dict(prior="vamp"),
        dict(prior="gaussian", options={"prior": {"learn": True}}, likelihood="gaussian-learned"),
    ],
    ids=["mixture", "vamp", "learned-sigma"],
)
def test_compiled_objective_matches_plain_for_monte_carlo_kl_priors_and_learned_likelihoods(float64, cfg):
    """Priors without a registered KL (TraceMeanField_ELBO falls back to log q - log p), the VampPrior that
    calls the guide's encoder, and a learned sigma: same seed, same loss and gradients (rel 1e-6)."""
    model, guide, x = make(**cfg)
    params = parameters_of(model, guide)
    fast = compiled_objective(meanfield())
    fast.differentiable_loss(model, guide, x)  # compile
    pyro.set_rng_seed(1)
    loss = fast.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(1)
    plain = meanfield().differentiable_loss(model, guide, x)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    g_fast = torch.autograd.grad(loss, params)
    g_plain = torch.autograd.grad(plain, params)
    for a, b in zip(g_fast, g_plain, strict=True):
        assert relative_gap(a, b) < 1e-6


BETAS = [0.0, 0.5, 1.0]  # KL warm-up: beta changes between "epochs" of three steps


def _run(fast: bool, num_particles: int, steps: int = 9, wrapper: bool = False, watch_beta: bool = False):
    """Nine steps with KL warm-up, the last batch of each "epoch" smaller, and clipping.

    beta is given to the step (``step(x, beta=b)``, the trainer's way), or with ``wrapper`` set on a
    ``BetaScaled`` pair, whose Python attribute a compiled graph sees only through ``trace_key``
    (``watch_beta``)."""
    pyro.clear_param_store()
    model, guide, x = make(n=8)
    _, _, x_small = make(n=5, seed=3)
    scaled = BetaScaled(model, guide, beta=0.0)
    params = parameters_of(model, guide)
    step = TrainStep(
        scaled.model if wrapper else model,
        scaled.guide if wrapper else guide,
        meanfield(num_particles),
        torch.optim.Adam(params, lr=0.05),
        params,
        clip_norm=5.0,
        fast=fast,
        jit=fast,
        trace_key=(lambda: scaled.beta) if watch_beta else None,
    )
    pyro.set_rng_seed(11)
    losses = []
    for i in range(steps):
        scaled.beta = BETAS[i // 3]
        batch = x_small if i % 3 == 2 else x
        losses.append(step(batch) if wrapper else step(batch, beta=BETAS[i // 3]))
    return losses, params, step


@pytest.mark.parametrize("num_particles", [1, 3])
def test_fast_step_trains_exactly_like_the_plain_step(float64, num_particles):
    """With beta an input of the step, the fast step's losses and final parameters equal the plain step's (same
    seed), so compilation leaves the random stream alone; and beta changing from step to step never re-traces:
    one graph per batch shape."""
    plain_losses, plain_params, _ = _run(False, num_particles)
    fast_losses, fast_params, step = _run(True, num_particles)
    assert step.compiled is not None and step.compiled.num_compilations == 2  # two batch shapes, three betas
    assert fast_losses == pytest.approx(plain_losses, rel=1e-6)
    for a, b in zip(fast_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # Training moved the parameters, so the equality is about steps taken.
    initial = parameters_of(*make(n=8)[:2])
    assert max((a - b).abs().max().item() for a, b in zip(plain_params, initial, strict=True)) > 0.05
    # Weighting by a BetaScaled wrapper instead is the same objective.
    wrapped_losses, _, _ = _run(False, num_particles, wrapper=True)
    assert wrapped_losses == pytest.approx(plain_losses, rel=1e-12)


def test_a_graph_freezes_a_wrappers_beta_unless_it_is_watched(float64):
    """Why beta is an input: a graph traced with a BetaScaled wrapper at beta = 0 ignores later changes of its
    Python attribute; ``trace_key`` re-traces when it changes (three betas, two shapes: 6 graphs)."""
    plain_losses, _, _ = _run(False, 1)
    frozen_losses, _, _ = _run(True, 1, wrapper=True)
    assert frozen_losses[:3] == pytest.approx(plain_losses[:3], rel=1e-6)
    assert frozen_losses[3] != pytest.approx(plain_losses[3], rel=1e-3)
    watched_losses, _, step = _run(True, 1, wrapper=True, watch_beta=True)
    assert watched_losses == pytest.approx(plain_losses, rel=1e-6)


def test_compiled_objective_is_traced_once_per_batch_shape():
    """Count executions of the model's Python code: after the first step, which compiles, steps of the same shape
    run the graph only; a new batch shape traces once more. A key that changes every step re-traces every
    step (the control, showing that the count sees re-tracing)."""
    model, guide, x = make(n=8)
    _, _, x_small = make(n=5)
    calls = [0]

    def counted_model(x):
        calls[0] += 1
        return model(x)

    params = parameters_of(model, guide)
    step = TrainStep(counted_model, guide, meanfield(), make_optimizer(params, 1e-3), params, fast=True, jit=True)
    step(x)  # runs the model uncompiled, then compiles (runs it again while tracing) and checks
    traced = calls[0]
    assert traced >= 2
    for _ in range(5):
        step(x)
    assert calls[0] == traced
    assert step.compiled.num_compilations == 1
    step(x_small)
    assert calls[0] > traced
    after_small = calls[0]
    for _ in range(3):
        step(x)
        step(x_small)
    assert calls[0] == after_small
    assert step.compiled.num_compilations == 2

    counter = itertools.count()
    calls[0] = 0
    retracing = TrainStep(
        counted_model,
        guide,
        meanfield(),
        make_optimizer(params, 1e-3),
        params,
        fast=True,
        jit=True,
        trace_key=lambda: next(counter),
    )
    retracing(x)
    per_step = []
    for _ in range(3):
        before = calls[0]
        retracing(x)
        per_step.append(calls[0] - before)
    assert min(per_step) >= 1


def test_first_fast_step_validates_later_steps_do_not_and_the_setting_is_restored():
    model, guide, x = make(n=8)
    grey = torch.full_like(x, 0.5)
    params = parameters_of(model, guide)
    assert is_validation_enabled()
    # Grey pixels are outside the Bernoulli support: the first step catches them, as the plain step does.
    step = TrainStep(model, guide, Trace_ELBO(), make_optimizer(params, 1e-3), params, fast=True)
    with pytest.raises(ValueError, match="support"):
        step(grey)
    plain = TrainStep(model, guide, Trace_ELBO(), make_optimizer(params, 1e-3), params)
    plain(x)
    with pytest.raises(ValueError, match="support"):
        plain(grey)
    # After a good first step, validation is off inside the step (no check on the grey batch) ...
    step = TrainStep(model, guide, Trace_ELBO(), make_optimizer(params, 1e-3), params, fast=True)
    step(x)
    assert math.isfinite(step(grey))
    # ... and back on outside it.
    assert is_validation_enabled()
    compiled = TrainStep(model, guide, meanfield(), make_optimizer(params, 1e-3), params, fast=True, jit=True)
    compiled(x)
    compiled(x)
    assert is_validation_enabled()


def test_fast_step_with_a_non_meanfield_elbo_matches_the_plain_step(float64):
    """Trace_ELBO has no compiled twin here: fast only switches validation off, the values are unchanged."""
    runs = []
    for fast in (False, True):
        model, guide, x = make(n=8)
        params = parameters_of(model, guide)
        step = TrainStep(model, guide, Trace_ELBO(), torch.optim.Adam(params, lr=0.05), params, fast=fast)
        pyro.set_rng_seed(5)
        runs.append([step(x) for _ in range(4)])
        assert step.compiled is None
    assert runs[1] == pytest.approx(runs[0], rel=1e-12)


def test_make_optimizer_is_adam_written_out(float64):
    """Three steps of the (fused) optimizer on fixed gradients against Adam's update (Kingma & Ba 2015,
    Algorithm 1) written out: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    theta -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(3))
    opt = make_optimizer([w, b], lr=0.01)
    assert opt.defaults["fused"] is True
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    expected = [w.detach().clone(), b.detach().clone()]
    m = [torch.zeros_like(e) for e in expected]
    v = [torch.zeros_like(e) for e in expected]
    for t in range(1, 4):
        grads = [torch.randn_like(e) for e in expected]
        w.grad, b.grad = grads[0].clone(), grads[1].clone()
        opt.step()
        for k, g in enumerate(grads):
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            expected[k] -= lr * (m[k] / (1 - b1**t)) / ((v[k] / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(w.detach(), expected[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.detach(), expected[1], rtol=1e-10, atol=1e-12)


def test_fast_step_factory_trains_the_model_it_is_given():
    """``TrainStep.fast_step`` on a fresh model whose names collide in Pyro's param store with another
    model's (two models built in one process): the loss falls and only the given model moves."""
    other_model, other_guide, x = make(n=64, x_dim=12, seed=4)
    TraceMeanField_ELBO().loss(other_model, other_guide, x)  # registers the other model's tensors first
    other_before = [p.detach().clone() for p in parameters_of(other_model, other_guide)]
    model, guide, _ = make(n=64, x_dim=12)
    params = parameters_of(model, guide)
    step = TrainStep.fast_step(model, guide, meanfield(), params, lr=0.02, jit=True)
    losses = [step(x) for _ in range(60)]
    # The loss falls from ~598 towards ~517 nats (64 * 12 * H(0.4), the entropy of such data).
    assert sum(losses[-10:]) / 10 < 0.9 * losses[0]
    for p, before in zip(parameters_of(other_model, other_guide), other_before, strict=True):
        assert torch.equal(p.detach(), before)


def test_a_fast_step_rebuilt_mid_run_continues_exactly():
    """Resuming from a checkpoint builds a new step: in float32 its steps must equal, bit for bit, those of
    the step it replaces (every fast step runs the compiled graph; validation runs on a forked generator)."""

    def run(rebuild_at):
        pyro.clear_param_store()
        model, guide, x = make(n=24, x_dim=10)
        params = parameters_of(model, guide)
        opt = make_optimizer(params, 0.01)
        step = None
        pyro.set_rng_seed(3)
        losses = []
        for i in range(12):
            if step is None or i == rebuild_at:
                step = TrainStep(model, guide, meanfield(), opt, params, fast=True, jit=True)
            losses.append(step(x[: 16 if i % 2 else 24]))
        return losses, params

    losses, params = run(None)
    resumed_losses, resumed_params = run(6)
    assert resumed_losses == losses
    for a, b in zip(resumed_params, params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_step_time_benchmark_runs_and_its_two_implementations_agree():
    """benchmarks/step_time.py exits non-zero unless the hand-written and Pyro losses agree at the same z and
    the fast step agrees with the plain one; a tiny run must pass those checks and print the ratio line."""
    out = subprocess.run(
        [sys.executable, "benchmarks/step_time.py", "--batch-sizes", "32", "128", "--steps", "2", "--repeats", "1"]
        + ["--warmup", "1", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "agreement: hand-written" in out.stdout
    assert re.fullmatch(r"ratio_bs128=\d+\.\d+ ratio_bs32=\d+\.\d+", out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_epoch_scaling_benchmark_runs():
    out = subprocess.run(
        [sys.executable, "benchmarks/epoch_scaling.py", "--sizes", "300", "600", "--epochs", "2", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 300 ") or line.startswith("| 600 ")]
    assert len(rows) == 2
    assert re.fullmatch(r"time_per_row_max_over_min=\d+\.\d+", out.stdout.strip().splitlines()[-1])


def test_compiled_graph_keeps_no_shape_bookkeeping():
    """The traced graph is simplified once (constants folded, dead code removed): none of the operations that
    read or rebuild shapes remain, while the loss and gradients stay the plain ones (tests above)."""
    model, guide, x = make(n=8)
    fast = compiled_objective(meanfield())
    fast.differentiable_loss(model, guide, x)
    (pair,) = fast._compiled._pairs.values()
    (graph,) = pair.graphs.values()
    kinds = {node.kind() for node in graph.fn.graph.nodes()}
    assert {"aten::linear", "aten::binary_cross_entropy_with_logits"} <= kinds  # the model's own operations
    assert not kinds & {"aten::size", "aten::Int", "prim::NumToTensor", "aten::arange", "aten::detach"}
    # The standard prior's loc 0 and scale 1 in the KL, the plate scale 1 and same-shape broadcasts are gone too.
    assert not kinds & {"aten::div", "aten::broadcast_tensors", "aten::expand"}


def test_compiled_objective_reads_a_replaced_param_store_entry():
    """Outside Pyro's handlers the graph's inputs are reused while the store holds the same tensors; an entry set
    anew (a new tensor under the same name) is read at the next call: the compiled loss equals the plain one
    under the same seed, before and after, and the replacement changes it."""
    pyro.clear_param_store()

    def model(x):
        w = pyro.param("w", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            pyro.sample("x", pyro.distributions.Normal(w * z, 1.0), obs=x)

    def guide(x):
        s = pyro.param("s", torch.tensor(1.0), constraint=torch.distributions.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(0.1 * x, s))

    x = torch.linspace(-2, 2, 9)
    fast, plain = compiled_objective(meanfield()), meanfield()

    def both():
        torch.manual_seed(7)
        a = fast.differentiable_loss(model, guide, x).item()
        torch.manual_seed(7)
        return a, plain.differentiable_loss(model, guide, x).item()

    fast.differentiable_loss(model, guide, x)  # compiles (tracing draws z more often than a call does)
    first = both()
    assert first == pytest.approx(both())  # the second call runs on the reused inputs
    store = pyro.get_param_store()
    store["w"], store["s"] = torch.tensor(2.0), torch.tensor(3.0)
    after = both()
    assert first[0] == pytest.approx(first[1], rel=1e-6) and after[0] == pytest.approx(after[1], rel=1e-6)
    assert abs(after[0] - first[0]) > 1.0
    pyro.clear_param_store()


def test_graph_simplification_drops_only_arithmetic_that_changes_nothing():
    """``x * 1``, ``x / 1``, ``x - 0`` and a broadcast of same-shaped tensors go; a multiplication that
    broadcasts x to a larger shape, ``x * 2`` and an in-place graph stay. The simplified function gives the eager
    function's values and gradients (float64, exactly) on inputs it was not traced with."""
    from pyro_vae.estimators._graph import simplified

    def f(x, w):
        y = (x * torch.ones((), dtype=x.dtype)) / torch.ones(3, dtype=x.dtype) - torch.zeros(3, dtype=x.dtype)
        a, b = torch.broadcast_tensors(y, w)
        wide = x * torch.ones(2, 3, dtype=x.dtype)  # broadcasts: (3,) -> (2, 3)
        return (a * b).sum() + (2 * wide).sum()

    args = (torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    traced = torch.jit.trace(f, args, check_trace=False)
    fast = simplified(traced)
    kinds = [n.kind() for n in fast.graph.nodes() if n.kind() != "prim::Constant"]
    assert "aten::div" not in kinds and "aten::sub" not in kinds and "aten::broadcast_tensors" not in kinds
    assert kinds.count("aten::mul") == 3  # a * b, the widening x * ones(2, 3), 2 * wide
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    expected = f(x, w)
    grads = torch.autograd.grad(expected, (x, w))
    got = fast(x, w)
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(got, (x, w)), grads, strict=True))

    def in_place(x):
        y = x * torch.ones((), dtype=x.dtype)
        y.add_(1.0)  # would write into x if y were replaced by x
        return y

    kept = simplified(torch.jit.trace(in_place, (torch.randn(3),), check_trace=False))
    assert "aten::mul" in [n.kind() for n in kept.graph.nodes()]
