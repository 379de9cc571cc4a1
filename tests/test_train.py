"""Training: the loop, the test-ELBO evaluation against independent computations, config validation,
warm-up, failure modes, and the `pyro-vae train` command line."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Literal

import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_vae.cli import main
from pyro_vae.closed_form import bernoulli_log_likelihood, standard_normal_kl
from pyro_vae.commands.options import add_dataclass_options, field_docs
from pyro_vae.config import VAEConfig
from pyro_vae.data import load_data
from pyro_vae.elbo_terms import elbo_terms
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.registry import COMPONENTS
from pyro_vae.run_dir import CHECKPOINT, load_checkpoint
from pyro_vae.step import TrainStep
from pyro_vae.training import NonFiniteLossError, TrainConfig, train


def small(**options) -> TrainConfig:
    base = dict(z_dim=2, hidden=(16,), epochs=3, batch_size=256, lr=5e-3, threads=1)
    return TrainConfig.for_data(load_data("digits"), **{**base, **options})


TRAIN_SKIP = {"model", "plugins", "elbo_options"}


def test_loss_decreases_and_test_elbo_rises_on_digits(tmp_path):
    result = train(small(epochs=4), tmp_path / "run", progress=False, figures=False)
    m = result.metrics
    assert [r["epoch"] for r in m] == [1, 2, 3, 4]
    assert m[-1]["train_loss"] < m[0]["train_loss"] - 1.0
    assert m[-1]["test_elbo"] > m[0]["test_elbo"] + 0.5
    # The metrics file holds exactly these records.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == m
    for r in m:
        assert r["test_elbo"] == pytest.approx(-(r["test_recon"] + r["test_kl"]), rel=1e-12)
        assert r["kl"] == {"z": "analytic"}


def test_test_elbo_equals_closed_form_and_pyro_at_the_same_draws(tmp_path):
    result = train(small(epochs=2), tmp_path / "run", progress=False, figures=False)
    model, guide, x = result.model, result.guide, result.data.test_x_eval
    terms = elbo_terms(model, guide, x, num_samples=1, seed=7)
    # elbo_terms documents its draws: z = q(z|x).sample((S,)) after torch.manual_seed(seed).
    with torch.no_grad():
        torch.manual_seed(7)
        z = guide.posterior(x).sample((1,))[0]
        loc, scale = guide.loc_scale(x)
        kl = standard_normal_kl(loc, torch.log(scale**2))  # eq. 40, written out
        log_lik = bernoulli_log_likelihood(x, model.decoder(z))
    n = x.shape[0]
    assert terms.kl == pytest.approx(kl.double().sum().item() / n, rel=1e-5)
    assert terms.recon == pytest.approx(-log_lik.double().sum().item() / n, rel=1e-5)
    assert terms.kl_kind == "analytic"
    # Pyro's TraceMeanField_ELBO at the same z (the guide replayed with it) gives the same ELBO.
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x)
        guide_trace.nodes["z"]["value"] = z
        pyro_loss = TraceMeanField_ELBO().loss(model, poutine.replay(guide, trace=guide_trace), x)
    assert -pyro_loss / n == pytest.approx(terms.elbo, rel=1e-5)
    # And the metrics record is this evaluation at the default seed, after the last epoch.
    assert result.metrics[-1]["test_elbo"] == elbo_terms(model, guide, x).elbo


def test_beta_zero_trains_without_kl_but_reports_the_true_elbo(tmp_path):
    result = train(small(beta=0.0, epochs=2), tmp_path / "run", progress=False, figures=False)
    last = result.metrics[-1]
    assert last["beta"] == 0.0
    # The reported test ELBO includes the (large, untrained) KL term: it is the beta = 1 ELBO.
    assert last["test_kl"] > 1.0
    assert last["test_elbo"] == pytest.approx(-(last["test_recon"] + last["test_kl"]), rel=1e-12)


def test_kl_warmup_is_linear_from_zero_to_beta(tmp_path):
    result = train(small(beta=0.5, kl_warmup=2, epochs=4), tmp_path / "run", progress=False, figures=False)
    assert [r["beta"] for r in result.metrics] == [0.0, 0.25, 0.5, 0.5]


def test_cyclical_kl_schedule_gives_each_epochs_beta(tmp_path):
    # T = 6, M = 2, R = 0.5: cycles of 3 epochs, tau = 0, 1/3, 2/3 -> beta * (0, 2/3, 1) (Fu et al. 2019, eq. 6).
    cfg = small(beta=0.5, kl_schedule="cyclical", kl_cycles=2, kl_ratio=0.5, epochs=6)
    result = train(cfg, tmp_path / "run", progress=False, figures=False)
    assert [r["beta"] for r in result.metrics] == pytest.approx([0.0, 1 / 3, 0.5] * 2, rel=1e-15)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["kl_schedule"], saved["kl_cycles"], saved["kl_ratio"]) == ("cyclical", 2, 0.5)


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_call = TrainStep.__call__

    def flaky(self, x, **kwargs):
        calls["n"] += 1
        loss = real_call(self, x, **kwargs)
        return math.nan if calls["n"] == 6 + 3 else loss  # 6 steps per epoch: epoch 2, step 3

    monkeypatch.setattr(TrainStep, "__call__", flaky)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        train(small(epochs=3, checkpoint_seconds=0), out, progress=False, figures=False)
    message = str(err.value)
    assert "epoch 2, step 3" in message and "\n" not in message and "checkpoint of epoch 1" in message
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_require_analytic_kl(tmp_path, capsys):
    # A mixture prior has no registered KL with the Normal guide: refuse before training.
    with pytest.raises(UserError, match="site.s. z"):
        train(small(prior="mixture", require_analytic_kl=True), tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / CHECKPOINT).exists()
    with pytest.raises(UserError, match="meanfield-type"):
        train(small(elbo="trace", require_analytic_kl=True), tmp_path / "b", progress=False)
    result = train(small(epochs=1, require_analytic_kl=True), tmp_path / "c", figures=False)
    assert result.metrics[0]["kl"] == {"z": "analytic"}
    assert "KL per latent site: z=analytic" in capsys.readouterr().err
    # Without the flag the mixture prior trains, and the records say its KL is Monte Carlo.
    result = train(small(epochs=1, prior="mixture"), tmp_path / "d", progress=False, figures=False)
    assert result.metrics[0]["kl"] == {"z": "monte-carlo"}


BAD_CONFIGS = [
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"epochs": 2.5}, "epochs must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"lr": math.inf}, "lr must be a finite number > 0"),
    ({"beta": -1.0}, "beta must be a finite number >= 0"),
    ({"beta": math.nan}, "beta must be a finite number >= 0"),
    ({"particles": 0}, "particles must be an integer >= 1"),
    ({"kl_warmup": -1}, "kl_warmup must be an integer"),
    ({"kl_schedule": "cosine"}, "kl_schedule must be one of linear, cyclical"),
    ({"kl_cycles": 0}, "kl_cycles must be an integer >= 1"),
    ({"kl_ratio": 0.0}, "kl_ratio must be a finite number in"),
    ({"kl_ratio": 1.5}, "kl_ratio must be a finite number in"),
    ({"kl_schedule": "cyclical", "kl_warmup": 2}, "kl_warmup is the linear schedule's"),
    ({"kl_schedule": "cyclical", "kl_cycles": 5, "epochs": 4}, "kl_cycles (5) must be at most epochs (4)"),
    ({"clip_norm": 0.0}, "clip_norm must be a finite number > 0"),
    ({"seed": -1}, "seed must be an integer in"),
    ({"seed": True}, "seed must be an integer in"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
    ({"elbo": "nope"}, "unknown elbo 'nope'"),
    ({"eval_samples": 0}, "eval_samples must be an integer >= 1"),
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"require_analytic_kl": "yes"}, "require_analytic_kl must be true or false"),
    ({"dataset": ""}, "dataset must be a name"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS)
def test_config_validation_messages(change, message):
    with pytest.raises(ValueError) as err:
        TrainConfig(model=VAEConfig(x_dim=64), **change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_json_round_trip_and_unknown_fields():
    config = TrainConfig(
        model=VAEConfig(x_dim=64, hidden=(32, 16), prior="gaussian", options={"prior": {"loc": [0.5, -1.0]}}),
        beta=0.3,
        kl_warmup=4,
        clip_norm=5.0,
        elbo="trace",
        particles=3,
        threads=1,
    )
    again = TrainConfig.from_json(config.to_json())
    assert again == config and again.model.hidden == (32, 16)
    with pytest.raises(ValueError, match="unknown TrainConfig field.s.: bogus"):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_existing_run_needs_resume_or_overwrite_and_resume_checks_config(tmp_path):
    out = tmp_path / "run"
    train(small(epochs=1), out, progress=False, figures=False)
    with pytest.raises(UserError, match="already holds a run"):
        train(small(epochs=1), out, progress=False, figures=False)
    with pytest.raises(UserError, match="lr differ"):
        train(small(epochs=2, lr=1e-2), out, resume=True, progress=False, figures=False)
    with pytest.raises(UserError, match="model.hidden differ"):
        train(small(epochs=2, hidden=(8,)), out, resume=True, progress=False, figures=False)
    assert len(train(small(epochs=1), out, overwrite=True, progress=False, figures=False).metrics) == 1


def test_cuda_requested_without_cuda_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available here; use --device cpu"):
        train(small(device="cuda"), tmp_path / "run", progress=False)


# --- the command line ---------------------------------------------------------------------------------


def test_every_config_field_is_a_cli_option():
    import argparse

    from pyro_vae.cli import make_parser

    parser = make_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    options = {s for a in train_parser._actions for s in a.option_strings}
    # plugins is a record train() writes (where the run's own components come from), not a setting; options and
    # elbo_options hold the components' and the estimator's options, each of which is a --KIND-OPTION flag.
    for cls, skip in (
        (VAEConfig, {"x_dim", "x_shape", "options"}),
        (TrainConfig, {"model", "plugins", "elbo_options"}),
    ):
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                assert "--" + f.name.replace("_", "-") in options, f.name
    for kind, registry in {**COMPONENTS, "elbo": ESTIMATORS}.items():
        for name, entry in registry.items():
            for f in dataclasses.fields(entry.options) if entry.options is not None else ():
                assert f"--{kind}-{f.name}".replace("_", "-") in options, (kind, name, f.name)
    assert "--x-dim" not in options and "--x-shape" not in options  # the data give the shape
    assert isinstance(parser, argparse.ArgumentParser)


def test_dataclass_options_follow_field_types():
    import argparse

    @dataclasses.dataclass
    class Example:
        """Fields:
        widths: layer widths.
        loc: a number or one per dimension.
        flag: switch it on.
        maybe: an optional float.
        mode: a choice.
        extra: anything else.
        """

        widths: tuple[int, ...] = (4,)
        loc: float | list[float] = 0.0
        flag: bool = False
        maybe: float | None = None
        mode: Literal["a", "b"] = "a"
        extra: dict | None = None

    parser = argparse.ArgumentParser()
    conv = add_dataclass_options(parser, Example)
    ns = parser.parse_args(
        ["--widths", "3", "2", "--loc", "0.5", "--flag", "--maybe", "none", "--mode", "b", "--extra", '{"k": 1}']
    )
    values = {k: conv[k](v) for k, v in vars(ns).items()}
    assert values == {"widths": (3, 2), "loc": 0.5, "flag": True, "maybe": None, "mode": "b", "extra": {"k": 1}}
    assert conv["loc"](parser.parse_args(["--loc", "1", "2"]).loc) == [1.0, 2.0]
    assert vars(parser.parse_args([])) == {}  # unspecified options stay out of the namespace
    assert field_docs(Example)["widths"] == "layer widths."


def test_cli_train_writes_a_run_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--hidden", "16", "--epochs", "2", "--batch-size", "512", "--no-progress"]
    assert main(args) == 0
    config = TrainConfig.from_json((out / "config.json").read_text())
    assert config.model.hidden == (16,) and config.model.x_dim == 64 and config.epochs == 2
    assert {"checkpoint.pt", "metrics.jsonl", "manifold.png", "curves.png"} <= {p.name for p in out.iterdir()}
    assert "test ELBO" in capsys.readouterr().out
    # --resume takes the stored config; only the options given change.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert TrainConfig.from_json(load_checkpoint(out / CHECKPOINT)["config"]).epochs == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--prior", "nope"], "unknown prior 'nope'"),
        (["--elbo", "nope"], "unknown elbo 'nope'"),
        (["--lr", "-1"], "lr must be a finite number > 0"),
        (["--dataset", "missing.npy"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err


@pytest.mark.parametrize(("elbo", "particles", "noted"), [("iwae", 1, True), ("iwae", 2, False), ("trace", 1, False)])
def test_a_multi_particle_bound_at_one_particle_is_pointed_out(tmp_path, capsys, elbo, particles, noted):
    train(small(epochs=1, elbo=elbo, particles=particles), tmp_path / "run", figures=False)
    note = f"note: --elbo {elbo} with --particles 1 is the standard ELBO; its bound tightens with K > 1"
    assert (note in capsys.readouterr().err) == noted


class _Crash(Exception):
    """Stands for a hard crash (SIGKILL, power cut): nothing of the trainer runs after it."""


def test_checkpoints_by_the_clock_keep_metrics_with_them_and_resume_exactly(tmp_path, monkeypatch):
    """checkpoint_seconds = 10 with epochs that take 5.5 s of a fake clock: checkpoints after epochs 2 and 4 only.
    A crash in epoch 5 leaves the checkpoint of epoch 4 and exactly its four metrics lines; the resume then
    ends with the metrics and weights of an uninterrupted run (the independent truth)."""
    import pyro_vae.training as training

    full = train(small(epochs=6), tmp_path / "full", progress=False, figures=False)
    clock = {"now": 0.0}
    monkeypatch.setattr(training.time, "monotonic", lambda: clock["now"])
    saves: list[int] = []
    real_save, real_evaluate = training.Trainer.save_checkpoint, training.Trainer.evaluate

    def save(self, epoch, partial=None):
        saves.append(epoch)
        real_save(self, epoch, partial)

    def evaluate(self):
        clock["now"] += 5.5  # this epoch's length on the fake clock
        if len(self.history) == 4:
            raise _Crash
        return real_evaluate(self)

    monkeypatch.setattr(training.Trainer, "save_checkpoint", save)
    monkeypatch.setattr(training.Trainer, "evaluate", evaluate)
    out = tmp_path / "crashed"
    with pytest.raises(_Crash):
        train(small(epochs=6, checkpoint_seconds=10.0), out, progress=False, figures=False)
    assert saves == [2, 4]
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 4
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == full.metrics[:4]

    monkeypatch.setattr(training.Trainer, "evaluate", real_evaluate)
    resumed = train(small(epochs=6, checkpoint_seconds=10.0), out, resume=True, progress=False, figures=False)
    assert resumed.metrics == full.metrics
    assert (out / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The last epoch is always saved, whatever the clock says (epoch 6 came 11 s after epoch 4, so also due).
    assert saves[-1] == 6 and load_checkpoint(out / CHECKPOINT)["epoch"] == 6


def test_a_short_run_writes_one_checkpoint_at_its_end(tmp_path, monkeypatch):
    """Under the default checkpoint_seconds, a run shorter than it saves once, after its last epoch."""
    import pyro_vae.training as training

    saves: list[int] = []
    real_save = training.Trainer.save_checkpoint
    monkeypatch.setattr(training.time, "monotonic", lambda: 0.0)
    monkeypatch.setattr(
        training.Trainer, "save_checkpoint", lambda self, e, p=None: (saves.append(e), real_save(self, e, p))
    )
    result = train(small(epochs=4), tmp_path / "run", progress=False, figures=False)
    assert TrainConfig().checkpoint_seconds > 0 and saves == [4]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"] == 4
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3, 4]


def test_eval_every_skips_test_elbos_and_changes_nothing_else(tmp_path):
    """eval_every = 2 over 5 epochs: test values after epochs 2, 4 and the last, 5, and those equal an every-epoch
    run's exactly (the evaluation draws its own seeded z, off the training stream); the train losses and weights
    are the same; the learning-curve figure is drawn from the epochs evaluated."""
    every = train(small(epochs=5), tmp_path / "every", progress=False, figures=False)
    some = train(small(epochs=5, eval_every=2), tmp_path / "some", progress=False, figures=True)
    assert [m["epoch"] for m in some.metrics if "test_elbo" in m] == [2, 4, 5]
    for a, b in zip(some.metrics, every.metrics, strict=True):
        assert a == (b if "test_elbo" in a else {k: v for k, v in b.items() if not k.startswith("test_")})
    for a, b in zip(some.model.state_dict().values(), every.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "some" / "curves.png").is_file()


def test_the_first_evaluation_validates_the_later_ones_do_not_and_the_setting_is_restored(tmp_path, monkeypatch):
    """As for the steps: Pyro's validation as the caller set it on the first test-ELBO evaluation of a run, off on
    the later ones, and the caller's setting back afterwards; the metrics are those of validated evaluations."""
    import pyro
    from pyro.infer.util import is_validation_enabled

    import pyro_vae.strategy as strategy

    seen = []

    def recording(*args, **kwargs):
        seen.append(is_validation_enabled())
        return elbo_terms(*args, **kwargs)

    monkeypatch.setattr(strategy, "elbo_terms", recording)
    with pyro.validation_enabled(True):
        result = train(small(epochs=3), tmp_path / "run", progress=False, figures=False)
        assert is_validation_enabled()
    assert seen == [True, False, False]
    # The last record (unvalidated) is what a validated evaluation of the final weights gives.
    final = elbo_terms(result.model, result.guide, result.data.test_x_eval)
    assert result.metrics[-1]["test_elbo"] == pytest.approx(final.elbo, rel=1e-12)
