"""One configuration system: each component's settings in its own options dataclass, on the command line as
``--KIND-OPTION`` read with the chosen component's type; estimator options reach training; old configs migrate;
reading a config imports no code; and a new component is one file plus one registration line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pyro_vae.models.priors import GaussianPrior

from pyro_vae import TrainConfig, VAEConfig, build
from pyro_vae.cli import main, make_parser
from pyro_vae.commands.options import OPTION_KINDS, ComponentOption
from pyro_vae.config import FLAT_FIELDS, migrate_config
from pyro_vae.errors import UserError
from pyro_vae.registry import PRIORS, register_prior

REPO = Path(__file__).resolve().parents[1]

#: A config.json as releases with flat component fields wrote it: every old flat field, none at its default.
OLD_MODEL = {
    "x_dim": 64,
    "z_dim": 3,
    "hidden": [8],
    "encoder_hidden": [6],
    "decoder_hidden": [5, 4],
    "prior_loc": [0.1, 0.2, 0.3],
    "prior_scale": 2.5,
    "learn_prior": True,
    "mixture_components": 4,
    "vamp_learn_weights": True,
    "prior_init_from_data": True,
    "sigma": 0.7,
    "sigma_per_pixel": True,
    "min_sigma": 0.01,
}


def old_config(**model) -> dict:
    return {"model": {**OLD_MODEL, **model}, "elbo": "iwae", "num_particles": 3, "epochs": 2, "dataset": "digits"}


@pytest.mark.parametrize(
    ("components", "expected"),
    [
        (
            {"prior": "gaussian", "likelihood": "gaussian"},
            {
                "prior": {"loc": (0.1, 0.2, 0.3), "scale": 2.5, "learn": True},
                "likelihood": {"sigma": 0.7},
                "encoder": {"hidden": (6,)},
                "decoder": {"hidden": (5, 4)},
            },
        ),
        (
            {"prior": "mixture", "likelihood": "gaussian-learned"},
            {
                "prior": {"components": 4},
                "likelihood": {"sigma": 0.7, "per_pixel": True, "min_sigma": 0.01},
                "encoder": {"hidden": (6,)},
                "decoder": {"hidden": (5, 4)},
            },
        ),
        (
            {"prior": "vamp", "likelihood": "bernoulli"},
            {
                "prior": {"components": 4, "learn_weights": True, "init_from_data": True},
                "encoder": {"hidden": (6,)},
                "decoder": {"hidden": (5, 4)},
            },
        ),
        (
            {"prior": "standard", "encoder": "conv", "decoder": "conv", "x_dim": None, "x_shape": [1, 8, 8]},
            {"encoder": {"hidden": (6,)}, "decoder": {"hidden": (5, 4)}},
        ),
    ],
    ids=["gaussian", "mixture-learned-sigma", "vamp", "conv"],
)
def test_an_old_config_json_puts_every_flat_field_into_its_components_options(tmp_path, components, expected):
    (tmp_path / "config.json").write_text(json.dumps(old_config(**components)))
    config = TrainConfig.from_json((tmp_path / "config.json").read_text())
    assert config.particles == 3
    assert config.model.options == expected  # what the chosen components do not take had no effect, and is gone
    # Each value is the one the component is built with.
    resolved = config.model.resolved_options()
    for kind, given in expected.items():
        assert {k: resolved[kind][k] for k in given} == given
    # and a config written now reads back equal
    assert TrainConfig.from_json(config.to_json()) == config


def test_the_migration_covers_every_flat_field_and_options_already_given_win():
    assert set(OLD_MODEL) - {"x_dim", "z_dim", "hidden"} == set(FLAT_FIELDS)
    d = migrate_config({"model": {"prior": "gaussian", "prior_scale": 2.0, "options": {"prior": {"scale": 3.0}}}})
    assert d["model"]["options"] == {"prior": {"scale": 3.0}}
    new = {"model": {"prior": "gaussian", "options": {"prior": {"scale": 3.0}}}, "particles": 2}
    assert migrate_config(new) == new  # a config of today's form is left as it is


def test_a_checkpoint_of_format_2_with_flat_fields_migrates():
    text = torch.load(REPO / "tests" / "data" / "format2_vamp_run" / "checkpoint.pt", weights_only=True)["config"]
    assert "mixture_components" in json.loads(text)["model"]
    config = TrainConfig.from_json(text)
    assert config.model.options["prior"] == {"components": 3, "learn_weights": False, "init_from_data": False}
    assert build(config.model)[0].prior.num_components == 3


@pytest.mark.parametrize("old", sorted(FLAT_FIELDS))
def test_an_old_keyword_is_one_line_naming_the_new_spelling(old):
    kind, where = FLAT_FIELDS[old]
    with pytest.raises(UserError) as err:
        VAEConfig(x_dim=4, **{old: 1})
    message = str(err.value)
    assert "\n" not in message and f"no field {old}" in message
    assert f"options={{'{kind}': {{'{sorted(where.values())[0]}': ...}}}}" in message
    with pytest.raises(UserError, match="TrainConfig has no field num_particles any more; use particles"):
        TrainConfig(num_particles=2)


# --- the command line -------------------------------------------------------------------------------------------


def flags_of(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Command -> its --flags."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
    return found


def test_each_kinds_namespace_holds_only_that_kinds_options():
    """No flag other than a component's (or estimator's) option begins with a kind: so no component's option can
    clash with a built-in flag, whatever its name."""
    parser = make_parser()
    for command, flags in flags_of(parser).items():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        component_flags = set()
        for action in sub._actions:
            if isinstance(sub._defaults.get("_converters", {}).get(action.dest), ComponentOption):
                component_flags |= set(action.option_strings)
        # --model-module (a Pyro model file of your own) predates the model structures' --model-OPTION namespace:
        # the one flag a model structure's option may not be named after (no option is called "module").
        for flag in flags - component_flags - {"--model-module"}:
            bare = flag.removeprefix("--no-").removeprefix("--")
            assert not any(bare.startswith(f"{kind}-") for kind in OPTION_KINDS), (command, flag)


@pytest.fixture
def scale_prior():
    """A user's prior whose option is named ``scale``, as the gaussian prior's is, with another type."""
    from dataclasses import dataclass

    @dataclass
    class MineOptions:
        """Fields:
        scale: how many times wider than N(0, I).
        """

        scale: int = 1

    register_prior("mine", lambda c, options: GaussianPrior(c.z_dim, 0.0, float(options.scale)), options=MineOptions)
    yield
    del PRIORS["mine"]


def test_a_plugin_option_named_like_a_built_in_one_reaches_its_component(scale_prior, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        make_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--prior-scale" in help_text and "mine: how many times wider" in help_text
    args = ["train", "--epochs", "1", "--z-dim", "2", "--hidden", "8", "--no-progress", "--batch-size", "512"]
    assert main([*args, "--out", str(tmp_path / "mine"), "--prior", "mine", "--prior-scale", "2"]) == 0
    saved = json.loads((tmp_path / "mine" / "config.json").read_text())
    assert saved["model"]["options"] == {"prior": {"scale": 2}}  # an int, the type "mine" declares
    # The gaussian prior's scale is still a float, one or one per dimension.
    assert main([*args, "--out", str(tmp_path / "g"), "--prior", "gaussian", "--prior-scale", "0.5", "1.5"]) == 0
    saved = json.loads((tmp_path / "g" / "config.json").read_text())
    assert saved["model"]["options"] == {"prior": {"scale": [0.5, 1.5]}}
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--prior", "mine", "--prior-scale", "0.5"]) == 2
    assert capsys.readouterr().err == "pyro-vae: error: --prior-scale: invalid INT value(s) 0.5\n"


def test_old_spellings_are_aliases_and_estimator_options_reach_training(tmp_path):
    args = ["train", "--epochs", "1", "--z-dim", "2", "--hidden", "8", "--no-progress", "--batch-size", "512"]
    out = tmp_path / "run"
    flags = ["--likelihood", "gaussian-learned", "--sigma", "0.5", "--min-sigma", "0.01", "--sigma-per-pixel"]
    flags += ["--elbo", "renyi", "--elbo-alpha", "0.25", "--num-particles", "2"]
    assert main([*args, "--out", str(out), *flags]) == 0
    saved = TrainConfig.from_json((out / "config.json").read_text())
    assert saved.model.options == {"likelihood": {"sigma": 0.5, "min_sigma": 0.01, "per_pixel": True}}
    assert (saved.elbo_options, saved.particles) == ({"alpha": 0.25}, 2)


def test_compare_estimators_gives_each_estimator_the_options_it_declares():
    from pyro_vae.commands.compare_estimators import _estimator

    parser = make_parser()
    args = parser.parse_args(["compare-estimators", "d", "--elbo-alpha", "0.2", "--particles", "3"])
    renyi = _estimator("renyi", args)
    assert (renyi.alpha, renyi.num_particles) == (0.2, 3)
    assert _estimator("iwae", args).num_particles == 3  # it takes no alpha, and is given none
    assert _estimator("renyi", parser.parse_args(["compare-estimators", "d", "--alpha", "0.7"])).alpha == 0.7
    assert _estimator("renyi", parser.parse_args(["compare-estimators", "d"])).alpha == 0.5  # RenyiOptions' default


def test_the_trained_estimator_is_made_with_its_options(tmp_path):
    from pyro_vae.data import load_data
    from pyro_vae.run_dir import RunDir
    from pyro_vae.strategy import SingleProcess
    from pyro_vae.training import Trainer

    data = load_data("digits")
    config = TrainConfig.for_data(data, elbo="renyi", elbo_options={"alpha": 0.25}, particles=2, epochs=1)
    with RunDir.lock(tmp_path / "run", "test") as run:
        trainer = Trainer(config, run, data=data, progress=False, strategy=SingleProcess())
        trainer.setup()
    assert (trainer.elbo.alpha, trainer.elbo.num_particles) == (0.25, 2)
    with pytest.raises(UserError, match="estimator 'renyi': alpha must be a finite number"):
        TrainConfig(elbo="renyi", elbo_options={"alpha": float("nan")})
    with pytest.raises(UserError, match="estimator 'meanfield' has no option.s. alpha; it takes no options"):
        TrainConfig(elbo="meanfield", elbo_options={"alpha": 0.5})


def test_reading_a_config_imports_no_code(tmp_path):
    plugin = tmp_path / "evil.py"
    plugin.write_text("raise SystemExit('imported')\n")
    d = {"model": {"x_dim": 4, "prior": "evil"}, "plugins": {"prior:evil": str(plugin)}}
    with pytest.raises(UserError, match="unknown prior 'evil'"):
        TrainConfig.from_dict(d)  # the record is read, not acted on
    assert TrainConfig.recorded_plugins(json.dumps(d)) == {"prior:evil": str(plugin)}


# --- a new component is one file and one line each --------------------------------------------------------------

SCRATCH = '''
"""A prior, a guide family and an estimator of a user's, each registered by one line."""
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_vae import register_estimator, register_guide, register_prior
from pyro_vae.guides import NormalGuide


@dataclass
class WideOptions:
    """Fields:
    scale: the prior's standard deviation.
    """

    scale: float = 1.0


class WidePrior(nn.Module):
    def __init__(self, z_dim, scale):
        super().__init__()
        self.register_buffer("scale", torch.full((z_dim,), float(scale)))

    def forward(self):
        return dist.Normal(torch.zeros_like(self.scale), self.scale).to_event(1)


class PlainGuide(NormalGuide):
    """A diagonal Normal q(z|x) under another name."""


@dataclass
class HalfOptions:
    """Fields:
    weight: a factor on the loss.
    """

    weight: float = 1.0


class WeightedELBO(Trace_ELBO):
    """weight times the ELBO's loss."""

    def __init__(self, weight=1.0, num_particles=1, max_plate_nesting=float("inf")):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.weight = weight

    def loss(self, model, guide, *args, **kwargs):
        return self.weight * super().loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return self.weight * super().loss_and_grads(model, guide, *args, **kwargs)


register_prior("wide", lambda c, options: WidePrior(c.z_dim, options.scale), options=WideOptions, latent="real")
register_guide("plain", lambda c, encoder: PlainGuide(encoder, c.z_dim), latent="real")
register_estimator("weighted", WeightedELBO, options=HalfOptions)
'''


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **env}
    return subprocess.run(
        [sys.executable, "-m", "pyro_vae", *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_prior_guide_and_estimator_of_one_scratch_file_train_evaluate_and_resume(tmp_path):
    plugin = tmp_path / "scratch_components.py"
    plugin.write_text(textwrap.dedent(SCRATCH))
    assert sum(line.startswith("register_") for line in SCRATCH.splitlines()) == 3
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    out = tmp_path / "run"
    small = ["--z-dim", "2", "--hidden", "16", "--batch-size", "512", "--threads", "1", "--no-progress"]
    chosen = ["--prior", "wide", "--prior-scale", "2", "--guide", "plain", "--elbo", "weighted", "--elbo-weight", "1"]
    proc = cli("train", "--plugin", str(plugin), *chosen, "--epochs", "1", "--out", str(out), *small, env=env)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["options"] == {"prior": {"scale": 2.0}} and saved["elbo_options"] == {"weight": 1.0}
    assert set(saved["plugins"]) == {"prior:wide", "guide:plain", "estimator:weighted"}
    # Evaluate and resume import the recorded (trusted) plugin by themselves.
    proc = cli("evaluate", str(out), "--num-samples", "4", "--examples", "20", "--no-collapse", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = cli("train", "--out", str(out), "--resume", "--epochs", "2", *small, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
