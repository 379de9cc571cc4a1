"""Semi-supervised M2 (--model m2): its TraceEnum objective against Kingma et al.'s J^alpha in closed form, the
exact sum over y in log p(x), the balanced recorded labels, resume, the CLI."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO
from pyro_vae.guides.normal_guide import MIN_SCALE
from pyro_vae.models.labelled import UNLABELLED, pack
from scipy.stats import multivariate_normal
from torch.distributions.transforms import SoftplusTransform

from pyro_vae import TrainConfig, VAEConfig, build, train
from pyro_vae.cli import main
from pyro_vae.elbo_terms import elbo_terms, trace_terms
from pyro_vae.guards import TrainingInterrupted
from pyro_vae.labelled_batches import labelled_plan, m2_batches
from pyro_vae.labelled_data import choose_labelled
from pyro_vae.run_dir import load_checkpoint
from pyro_vae.semi_supervised import m2_log_likelihood
from pyro_vae.step import TrainStep
from tests.helpers import one_thread, power_cut_at_step  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

D, J, K, SIGMA = 4, 2, 3, 0.8


def linear_m2(alpha: float = 0.0, encoder_hidden: tuple[int, ...] = ()):
    """A tiny M2 with p(x|y,z) = N(W z + V e_y + b, SIGMA^2 I): then x | y ~ N(V e_y + b, W W^T + SIGMA^2 I)."""
    torch.manual_seed(0)
    cfg = VAEConfig(
        x_dim=D,
        z_dim=J,
        likelihood="gaussian",
        decoder="linear",
        model="m2",
        options={
            "likelihood": {"sigma": SIGMA},
            "model": {"classes": K, "alpha": alpha, "labelled": K},
            "encoder": {"hidden": list(encoder_hidden)},
        },
    )
    model, guide = build(cfg)
    with torch.no_grad():
        w = torch.linalg.qr(torch.randn(D, J))[0] * torch.tensor([1.5, 0.7])  # orthogonal columns
        model.decoder.linear.weight.copy_(torch.cat([w, torch.randn(D, K) * 2], 1))
        model.decoder.linear.bias.normal_()
    return model, guide


def exact_posterior(model, guide) -> None:
    """Set q(z|x,y) to the exact posterior of the linear model: N(S W^T (x - V e_y - b) / s^2, S), S = (I + W^T W /
    s^2)^-1, diagonal because W's columns are orthogonal; affine in (x, e_y), which the identity encoder's head is."""
    weight, bias = model.decoder.linear.weight, model.decoder.linear.bias
    w, v = weight[:, :J], weight[:, J:]
    cov = torch.diag(1 / (1 + (w**2).sum(0) / SIGMA**2))
    head = guide.q_z.head
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:J, :D] = cov @ w.T / SIGMA**2
        head.weight[:J, D:] = -cov @ w.T @ v / SIGMA**2
        head.bias[:J] = -cov @ w.T @ bias / SIGMA**2
        head.bias[J:] = SoftplusTransform().inv(cov.diagonal().sqrt() - MIN_SCALE)


def test_log_likelihood_sums_y_exactly(float64):
    """With the exact q(z|x,y) every importance weight is p(x|y), so m2_log_likelihood must equal the direct sum
    log sum_y p(y) N(x; V e_y + b, W W^T + s^2 I) (scipy) to rounding; with a wrong class prior it would not."""
    model, guide = linear_m2()
    exact_posterior(model, guide)
    x = torch.randn(7, D) * 2
    weight, bias = model.decoder.linear.weight.detach(), model.decoder.linear.bias.detach()
    cov = (weight[:, :J] @ weight[:, :J].T + SIGMA**2 * torch.eye(D)).numpy()
    per_class = [
        multivariate_normal(mean=(weight[:, J + k] + bias).numpy(), cov=cov).logpdf(x.numpy()) for k in range(K)
    ]
    truth = np.logaddexp.reduce(np.stack(per_class) + math.log(1 / K), axis=0)
    got = m2_log_likelihood(model, guide, x, num_samples=5)
    np.testing.assert_allclose(got.numpy(), truth, rtol=0, atol=1e-9)


def closed_form_objective(model, guide, x, y, alpha):
    """Kingma et al. 2014 eq. 9 for the linear-Gaussian M2, every expectation over z in closed form:
    L(x,y) = -E_q[log N(x; W z + c_y, s^2 I)] - log p(y) + KL(q(z|x,y) || N(0, I)), with
    E_q ||x - W z - c||^2 = ||x - W mu - c||^2 + sum_j sigma_j^2 ||W_j||^2; U(x) = sum_y q(y|x) L(x,y) - H(q(y|x));
    J = sum_labelled [L(x,y) - alpha log q(y|x)] + sum_unlabelled U(x)."""
    weight, bias = model.decoder.linear.weight, model.decoder.linear.bias
    w = weight[:, :J]

    def minus_l(xb, yb):
        q = guide.q_z(xb, yb)
        mu, sd = q.base_dist.loc, q.base_dist.scale
        c = weight[:, J:][:, yb].T + bias
        sq = ((xb - mu @ w.T - c) ** 2).sum(-1) + (sd**2 * (w**2).sum(0)).sum(-1)
        e_log_lik = -0.5 * D * math.log(2 * math.pi) - D * math.log(SIGMA) - sq / (2 * SIGMA**2)
        kl = 0.5 * (mu**2 + sd**2 - 1 - torch.log(sd**2)).sum(-1)
        return e_log_lik + math.log(1 / K) - kl

    known = y >= 0
    xl, yl, xu = x[known], y[known], x[~known]
    log_q_l = F.log_softmax(guide.classifier(xl), -1).gather(1, yl[:, None]).squeeze(1)
    loss = -(minus_l(xl, yl) + alpha * log_q_l).sum()
    q_y = F.softmax(guide.classifier(xu), -1)
    terms = torch.stack([minus_l(xu, torch.full((xu.shape[0],), k)) for k in range(K)], -1)
    entropy = -(q_y * q_y.log()).sum(-1)
    return loss - ((q_y * terms).sum(-1) + entropy).sum()


def test_enumerated_objective_equals_kingma_eq9(float64):
    """TraceEnum_ELBO (y of the unlabelled rows summed exactly, z sampled) on a mixed batch is unbiased for the closed
    form: the mean of 10 runs of 400 particles each agrees within 4 standard errors of that mean, and equals the
    closed form of the wrong objective (alpha dropped) nowhere near that close."""
    model, guide = linear_m2(alpha=2.0, encoder_hidden=(5,))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, D, generator=g) * 2
    y = torch.tensor([0, UNLABELLED, 2, UNLABELLED, UNLABELLED, 1])
    packed = pack(x, y)
    elbo = TraceEnum_ELBO(num_particles=400, vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(0)
    runs = torch.tensor([elbo.loss(model, guide, packed) for _ in range(10)])
    mean, se = float(runs.mean()), float(runs.std() / math.sqrt(len(runs)))
    with torch.no_grad():
        truth = float(closed_form_objective(model, guide, x, y, 2.0))
        wrong = float(closed_form_objective(model, guide, x, y, 0.0))
    assert abs(mean - truth) < 4 * se + 1e-9
    assert abs(mean - wrong) > 20 * se


def test_labelled_examples_are_balanced_fixed_and_recorded(tmp_path):
    y = torch.tensor([k % 10 for k in range(300)])
    chosen = choose_labelled(y, 23, 10)
    counts = np.bincount(y[chosen].numpy(), minlength=10)
    assert counts.tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert torch.equal(chosen, choose_labelled(y, 23, 10))  # a fixed seed
    assert len(set(chosen.tolist())) == 23

    cfg = TrainConfig(
        model=VAEConfig(z_dim=2, hidden=(16,), model="m2", options={"model": {"labelled": 30}}),
        dataset="digits",
        epochs=2,
    )
    straight = train(cfg, tmp_path / "a", progress=False, figures=False)
    train(TrainConfig.from_dict({**cfg.to_dict(), "epochs": 1}), tmp_path / "b", progress=False, figures=False)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert torch.equal(state["labelled"], choose_labelled(straight.data.train_y, 30, 10))
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False, figures=False)
    assert resumed.metrics == straight.metrics


def test_cli_train_m2_and_evaluate_prints_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--model", "m2", "--labelled", "50", "--model-alpha", "10", "--epochs", "1"]
    assert main([*args, "--z-dim", "2", "--model-labelled-batch", "20"]) == 0
    recorded = json.loads((out / "config.json").read_text())["model"]["options"]["model"]
    assert recorded == {"labelled": 50, "alpha": 10.0, "labelled_batch": 20}
    assert (out / "class_samples.png").exists()
    assert main(["evaluate", str(out), "--num-samples", "10", "--num-examples", "40"]) == 0
    printed = capsys.readouterr().out
    assert "classifier q(y|x) test accuracy" in printed and "y summed exactly" in printed
    record = json.loads((out / "evaluation.json").read_text())
    assert 0 <= record["accuracy"] <= 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--labelled", "5"], "labelled must be an integer >= 10"),
        (["--labelled", "100", "--elbo", "iwae"], "its own estimator"),
        (["--jit"], "drop --elbo, --elbo-*, --free-bits and --jit"),
        (["--model-labelled-batch", "0"], "labelled_batch must be an integer >= 1"),
    ],
)
def test_bad_m2_options_are_one_line_errors(tmp_path, capsys, extra, message):
    code = main(["train", "--out", str(tmp_path / "r"), "--model", "m2", "--epochs", "1", *extra])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "".join(err)


def test_test_elbo_sums_y_exactly_and_is_unbiased_for_kingma_eq6_and_eq7(float64):
    """The test ELBO of M2 (``elbo_terms``: y summed with q(y|x), z sampled) on a mixed batch: the mean of 20
    seeds' estimates equals -(sum_L L(x,y) + sum_U U(x)) / N in closed form within 4 standard errors, and its
    standard error is well below (measured: half) that of the estimator which samples y (``trace_terms``)."""
    model, guide = linear_m2(encoder_hidden=(5,))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, D, generator=g) * 2
    y = torch.tensor([0, UNLABELLED, 2, UNLABELLED, UNLABELLED, 1])
    packed = pack(x, y)
    runs = torch.tensor([elbo_terms(model, guide, packed, num_samples=50, seed=s).elbo for s in range(20)])
    mean, se = float(runs.mean()), float(runs.std() / math.sqrt(len(runs)))
    with torch.no_grad():
        truth = -float(closed_form_objective(model, guide, x, y, 0.0)) / x.shape[0]
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = torch.tensor([trace_terms(model, guide, packed, 50).terms().elbo for _ in range(20)])
    assert 0 < se < 0.75 * float(sampled.std() / math.sqrt(len(sampled)))
    assert abs(mean - truth) < 4 * se


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_labelled_scale_scales_model_and_guide_sites_alike():
    """Scaling the labelled plate by s multiplies a labelled batch's loss by s exactly (same draws): the KL of z_l
    (model and guide sites) is scaled, not only log p; unlabelled rows are not scaled."""
    model, guide = linear_m2(alpha=2.0, encoder_hidden=(5,))
    x = torch.randn(5, D)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)  # on labelled rows only, it warns that it enumerates nothing
    labelled, unlabelled = pack(x, torch.tensor([0, 1, 2, 0, 1])), pack(x, torch.full((5,), UNLABELLED))
    torch.manual_seed(1)
    base, base_u = elbo.loss(model, guide, labelled), elbo.loss(model, guide, unlabelled)
    model.labelled_scale = guide.labelled_scale = 0.25
    torch.manual_seed(1)
    assert elbo.loss(model, guide, labelled) == pytest.approx(0.25 * base, rel=1e-6)
    assert elbo.loss(model, guide, unlabelled) == pytest.approx(base_u, rel=1e-6)
    guide.labelled_scale = 1.0  # the guide's z_l unscaled: not s times the loss
    torch.manual_seed(1)
    assert elbo.loss(model, guide, labelled) != pytest.approx(0.25 * base, rel=1e-3)


def test_every_step_has_labelled_rows_and_an_epoch_weighs_each_labelled_example_once():
    """m2_batches: T = ceil(|U| / B) steps, each with its B unlabelled rows (every unlabelled row once an epoch) and
    b_l labelled rows; each labelled example comes T b_l / |L| times, so with s = |L| / (T b_l) its weight over
    the epoch is 1, as in J^alpha."""
    n_u, n_l, batch, per_step = 23, 4, 5, 6
    x = torch.arange(n_u + n_l, dtype=torch.float).unsqueeze(1)
    known = torch.zeros(n_u + n_l, dtype=torch.bool)
    known[torch.tensor([2, 9, 15, 26])] = True
    torch.manual_seed(0)
    batches, steps = m2_batches(x, known, batch, per_step)
    batches = list(batches)
    assert steps == len(batches) == 5
    steps_, b_l, scale = labelled_plan(n_u, n_l, batch, per_step)
    assert (steps_, b_l) == (5, 4)  # b_l = min(labelled_batch, |L|)
    rows = torch.cat(batches).squeeze(1).long()
    assert sorted(rows[~known[rows]].tolist()) == [i for i in range(n_u + n_l) if not known[i]]
    assert all(int(known[b.squeeze(1).long()].sum()) == b_l for b in batches)
    counts = torch.bincount(rows[known[rows]], minlength=n_u + n_l)[known]
    assert counts.tolist() == [5, 5, 5, 5] and scale * 5 == pytest.approx(1.0)
    torch.manual_seed(0)
    resumed, _ = m2_batches(x, known, batch, per_step, start=3)
    assert all(torch.equal(a, b) for a, b in zip(batches[3:], resumed, strict=True))
    everything = torch.ones(7, dtype=torch.bool)  # no unlabelled rows: T = ceil(|L| / b_l), each example once
    only_labelled, steps = m2_batches(x[:7], everything, batch, 3)
    assert steps == 3 and labelled_plan(0, 7, batch, 3) == (3, 3, pytest.approx(7 / 9))
    assert sorted(torch.cat(list(only_labelled)).squeeze(1).long().tolist()[:7]) == list(range(7))


def m2_config(epochs: int) -> TrainConfig:
    model = VAEConfig(z_dim=2, hidden=(16,), model="m2", options={"model": {"labelled": 30, "labelled_batch": 20}})
    return TrainConfig(model=model, dataset="digits", epochs=epochs, threads=1, checkpoint_seconds=0)


def test_m2_crash_and_sigint_mid_epoch_then_resume_equal_the_uninterrupted_run(tmp_path, monkeypatch):
    """12 steps an epoch (1,470 unlabelled rows, B = 128): a crash at step 15 (epoch 2; the epoch-1 checkpoint
    is kept) and a SIGINT at step 20 (a mid-epoch checkpoint) both resume to the uninterrupted run's metrics."""
    full = train(m2_config(3), tmp_path / "full", progress=False, figures=False)
    with power_cut_at_step(monkeypatch, 15):
        train(m2_config(3), tmp_path / "cut", progress=False, figures=False)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    real_call, calls = TrainStep.__call__, {"n": 0}

    def interrupt(self, x, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th step of the resumed run: step 17 overall, in epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real_call(self, x, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", interrupt)
    with pytest.raises(TrainingInterrupted):
        train(m2_config(3), tmp_path / "cut", resume=True, progress=False, figures=False)
    monkeypatch.setattr(TrainStep, "__call__", real_call)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["partial"]["step"] == 5
    resumed = train(m2_config(3), tmp_path / "cut", resume=True, progress=False, figures=False)
    assert resumed.metrics == full.metrics
