"""The command line people read: help text, --version, case-insensitive data set names, "did you mean", and the
TensorBoard logger.

Truths: the installed package's metadata (the version), the registries (every choice listed in the help), the
dataclasses' own defaults (the defaults the help shows), and metrics.jsonl read back through TensorBoard's own
event reader (the logged scalars).
"""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata

import pytest

from pyro_vae import ESTIMATORS, PRIORS, TrainConfig, VAEConfig
from pyro_vae.cli import main, make_parser
from pyro_vae.commands import COMMANDS
from pyro_vae.registry import COMPONENTS


def help_of(command: str | None, capsys) -> str:
    assert main([command, "--help"] if command else ["--help"]) == 0
    return capsys.readouterr().out


TRAIN_SKIP = {"model", "plugins", "elbo_options"}


def test_version_is_the_installed_packages(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pyro-vae {metadata.version('pyro-vae')}\n"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_markup_no_none_defaults_and_lists_choices(command, capsys):
    text = help_of(command, capsys)
    assert "``" not in text and "(default: None)" not in text and " STR" not in text
    if command in ("train", "kl-ablation", "compare-estimators"):
        assert "--prior {" + ",".join(PRIORS) + "}" in " ".join(text.split())
        assert "--elbo {" + ",".join(ESTIMATORS) + "}" in " ".join(text.split())


def shown(value) -> str:
    """How a default reads in the help: on/off for switches, widths separated by spaces."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == ():
        return "none"  # an empty list (--lr-milestones)
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def test_every_shown_default_is_the_dataclasses_default():
    train_parser = make_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train_parser._actions}
    checked = 0
    for cls, skip in (
        (VAEConfig, {"x_shape", "x_dim", "options"}),
        (TrainConfig, {"model", "plugins", "elbo_options"}),
    ):
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            if f.default is None:  # what None means, in words, never "None"
                assert not helps[f.name].endswith("(default: None)"), f.name
            else:
                assert helps[f.name].endswith(f"(default: {shown(f.default)})"), (f.name, helps[f.name])
                checked += 1
    # Each component's and estimator's options: every declaration's default is in its flag's help.
    for kind, registry in {**COMPONENTS, "elbo": ESTIMATORS}.items():
        for name, entry in registry.items():
            for f in dataclasses.fields(entry.options) if entry.options is not None else ():
                if f.default is not None and f.default is not dataclasses.MISSING:
                    text = " ".join(helps[f"component:{kind}:{f.name}"].split())
                    assert f"(default: {shown(f.default)})" in text, (kind, name, f.name, text)
                    checked += 1
    assert checked >= 40


def test_two_options_never_share_a_help_text():
    for name, parser in make_parser()._subparsers._group_actions[0].choices.items():
        texts = [a.help for a in parser._actions if a.help and a.option_strings != ["-h", "--help"]]
        duplicated = {t for t in texts if texts.count(t) > 1 and "--plugin" not in str(t) and "import this" not in t}
        assert not duplicated, (name, duplicated)
        # compare-estimators has one K option (--particles), not also --num-particles.
        options = {s for a in parser._actions for s in a.option_strings}
        assert not (name == "compare-estimators" and "--num-particles" in options)


def test_built_in_data_set_names_ignore_case(tmp_path, capsys):
    assert TrainConfig(dataset="MNIST").dataset == "mnist" and TrainConfig(dataset="Digits").dataset == "digits"
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["train", "--out", str(tmp_path / "r"), "--dataset", "MNIST", "--data-dir", str(empty), "--no-download"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"pyro-vae: error: mnist is not in {empty}/MNIST/raw")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trian"], "argument COMMAND: invalid choice 'trian'; did you mean 'train'? (choose from train, plot,"),
        (["evalute", "x"], "invalid choice 'evalute'; did you mean 'evaluate'?"),
        (["train", "--out", "r", "--lrr", "0.1"], "unrecognized arguments: --lrr 0.1; did you mean '--lr'?"),
        (["train", "--out", "r", "--prior", "standrd"], "unknown prior 'standrd'; choose one of: bernoulli, "),
        (["train", "--out", "r", "--elbo", "iwea"], "unknown elbo 'iwea'; choose one of: trace, meanfield, iwae,"),
        (["train", "--out", "r", "--logger", "tensorbord"], "invalid choice 'tensorbord'; did you mean 'tensorboard'?"),
        (["train", "--out", "r", "--dataset", "mnsit"], "or a folder of images; did you mean 'mnist'?"),
    ],
)
def test_mistakes_get_a_did_you_mean_in_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_tensorboard_logs_every_epoch_once_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pyro_vae.loggers import SCALARS

    out = str(tmp_path / "run")
    common = ["--out", out, "--threads", "1", "--hidden", "16", "--logger", "tensorboard", "--no-progress"]
    assert main(["train", *common, "--epochs", "2"]) == 0
    assert main(["train", *common, "--epochs", "3", "--resume"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    for key, tag in SCALARS.items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in records], rel=1e-6)


def test_a_missing_tensorboard_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["train", "--out", str(tmp_path / "r"), "--logger", "tensorboard"]) == 2
    assert capsys.readouterr().err == (
        "pyro-vae: error: --logger tensorboard needs the tensorboard package; pip install tensorboard "
        "(or drop --logger)\n"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["plot", "evaluate"])
def test_every_command_runs_on_one_thread_unless_told(command, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        missing = str(tmp_path / "no-run")  # the command fails after the rule is applied: no training needed
        assert main([command, missing, "--threads", "2"]) == 2 and torch.get_num_threads() == 2
        assert main([command, missing]) == 2 and torch.get_num_threads() == 1
        capsys.readouterr()
        assert main([command, missing, "--threads", "0"]) == 2
        assert capsys.readouterr().err == "pyro-vae: error: --threads must be >= 1, got 0\n"
    finally:
        torch.set_num_threads(before)
    assert TrainConfig().threads == 1  # train, kl-ablation and compare-estimators: the same default


def test_a_reader_that_goes_away_stops_the_command_quietly():
    """``pyro-vae presets | head -1``: the pipe's reader closes before the output is written; the command stops
    with 128 + SIGPIPE, as Unix tools do, and prints no error (it printed "pyro-vae: error: [Errno 32] Broken
    pipe")."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pyro_vae.cli import main; sys.exit(main(['presets']))"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # the reader goes away before a byte is written
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141 and err == ""
