"""Presets (``--preset``): each sets its published values, explicit options override them, the name is recorded in
the run's config (so a resume keeps it), and ``--preset help`` lists them with their sources."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.presets import apply_preset, get_preset, presets
from pyro_vae.run_dir import resume_config


def test_burda2016_sets_the_papers_values_and_flags_override():
    config = TrainConfig.from_preset("burda2016", train={"elbo": "iwae", "particles": 50, "epochs": 3})
    # Burda et al. 2016, Sec. 5 / the authors' code: 2 x 200 hidden, 50 latents, batch 20, Adam eps 1e-4, the 3^i
    # schedule from 1e-3, the last 400 of the 60,000 training images held out.
    assert (config.model.z_dim, config.model.hidden, config.batch_size) == (50, (200, 200), 20)
    assert config.model.options == {"encoder": {"activation": "tanh"}, "decoder": {"activation": "tanh"}}
    assert (config.lr, config.lr_schedule, config.adam_eps) == (1e-3, "burda", 1e-4)
    assert (config.validation, config.validation_split, config.dataset) == (400, "last", "mnist")
    assert (config.elbo, config.particles, config.epochs, config.preset) == ("iwae", 50, 3, "burda2016")
    assert get_preset("burda2016").train["epochs"] == 3280  # the override did not touch the preset


def test_component_options_merge_per_kind():
    model, train = apply_preset("tomczak2018", {"options": {"prior": {"learn_weights": True}}}, {"patience": 5})
    assert model["options"]["prior"] == {"components": 500, "learn_weights": True}
    assert (model["z_dim"], train["patience"], train["kl_warmup"], train["preset"]) == (40, 5, 100, "tomczak2018")


@pytest.mark.parametrize("name", list(presets()))
def test_every_preset_makes_a_valid_config_and_cites_its_source(name):
    config = TrainConfig.from_preset(name)
    preset = get_preset(name)
    assert config.preset == name and "github.com" in preset.source and preset.reference and preset.evaluation


def test_cli_preset_with_overrides_is_recorded_and_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    # pythae's values, on the digits, shortened: the explicit flags win over the preset's.
    args = ["train", "--preset", "pythae", "--dataset", "digits", "--epochs", "1", "--validation", "100"]
    args += ["--hidden", "16", "--z-dim", "3", "--out", str(out), "--no-progress", "--checkpoint-seconds", "0"]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["preset"], saved["lr"], saved["seed"], saved["batch_size"]) == ("pythae", 1e-4, 123, 100)
    assert (saved["epochs"], saved["validation"], saved["model"]["hidden"], saved["model"]["z_dim"]) == (
        1,
        100,
        [16],
        3,
    )
    config, _ = resume_config(out, {}, {"epochs": 2})
    assert config.preset == "pythae" and config.lr == 1e-4
    assert main(["train", "--resume", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["preset"] == "pythae"


def test_preset_help_and_unknown_preset(tmp_path, capsys):
    assert main(["train", "--preset", "help"]) == 0  # no run directory needed to read the presets
    text = capsys.readouterr().out
    assert not (tmp_path / "x").exists()
    assert main(["train", "--epochs", "1"]) == 2  # any other train needs --out: one line
    err = capsys.readouterr().err.strip()
    assert "needs --out DIR" in err and "\n" not in err
    assert all(name in text for name in presets()) and "yburda/iwae" in text and "-84.78" in text
    assert main(["presets", "tomczak2018"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("tomczak2018:") and "burda2016" not in text and "jmtomczak/vae_vampprior" in text
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
