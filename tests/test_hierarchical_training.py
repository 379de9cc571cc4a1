"""The hierarchical VAE end to end: exact resumption, the command line (train, evaluate with AIS, gaps and the
per-layer active units), and refusals in one line."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.training import TrainConfig, train

SMALL = {"model": "hierarchical", "z_dim": 2, "hidden": (16,), "batch_size": 256, "threads": 1}
ORDERS = {
    # the default: ladder guide, meanfield ELBO (analytic KL per layer)
    "ladder-meanfield": {"options": {"model": {"sizes": (4, 2)}}},
    # Burda's bottom-up guide with the IWAE bound over both layers, two particles
    "bottomup-iwae": {"options": {"model": {"sizes": (4, 2), "order": "bottomup"}}, "elbo": "iwae", "particles": 2},
}


def config(name: str, epochs: int) -> TrainConfig:
    # A checkpoint after every epoch (checkpoint_seconds = 0), so the run can stop between two of them.
    return TrainConfig.for_data(load_data("digits"), epochs=epochs, checkpoint_seconds=0, **SMALL, **ORDERS[name])


@pytest.mark.parametrize("name", list(ORDERS))
def test_two_epochs_resumed_to_three_equal_three_uninterrupted(tmp_path, name):
    full = train(config(name, 3), tmp_path / "full", progress=False, figures=False)
    train(config(name, 2), tmp_path / "cut", progress=False, figures=False)
    resumed = train(config(name, 3), tmp_path / "cut", resume=True, progress=False, figures=False)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(full.guide.state_dict().values(), resumed.guide.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_train_and_evaluate_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "hierarchical", "--layers", "2", "--model-sizes", "4", "2", "--hidden", "16"]
    assert main([*argv, "--epochs", "1", "--batch-size", "256", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["model"] == "hierarchical" and config["model"]["options"]["model"]["layers"] == 2
    assert (out / "samples.png").exists() and (out / "reconstructions.png").exists()
    said = capsys.readouterr()
    assert "KL per latent site: z2=analytic, z1=analytic" in said.out + said.err
    evaluate = ["evaluate", str(out), "--ll-samples", "20", "--examples", "8", "--ais", "--ais-examples", "2"]
    gaps = ["--ais-num-steps", "5", "--ais-num-chains", "2", "--gaps", "--gap-examples", "2", "--gap-num-steps", "3"]
    assert main([*evaluate, *gaps]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert list(result["active_units_per_site"]) == ["z2", "z1"]
    assert [v["dimensions"] for v in result["active_units_per_site"].values()] == [2, 4]
    assert "per latent site    z2 " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-order", "bottomup"], "biased; use --elbo trace, iwae, stl or dreg, or --model-order ladder"),
        (["--model-order", "bottomup", "--elbo", "iwae", "--prior", "vamp"], "use --model-order ladder"),
        (["--model-sizes", "3"], "sizes needs one dimension per layer (2)"),
        (["--guide", "power-spherical", "--prior", "uniform-sphere", "--z-dim", "3"], "layers are Gaussian on R^J"),
    ],
)
def test_bad_combinations_are_refused_in_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--model", "hierarchical", "--epochs", "1", "--out", str(out), *argv]) != 0
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_two_ranks_under_torchrun_train_the_single_process_hierarchical_run(tmp_path):
    """torchrun with two ranks = one process, for the ladder guide (meanfield) over both layers."""
    from tests.test_distributed import assert_same_run, ok, single, torchrun

    argv = ["--model", "hierarchical", "--model-sizes", "4", "2", "--epochs", "1", "--batch-size", "128", "--seed", "3"]
    ok(single("--out", str(tmp_path / "one"), *argv))
    ok(torchrun(2, "--out", str(tmp_path / "two"), *argv))
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_the_two_layer_mnist_rows_have_burdas_architecture():
    """benchmarks/mnist_nll.py's two-layer rows: 784 -> 200 -> 200 -> z1 (100) -> 100 -> 100 -> z2 (50), all tanh,
    in the bottom-up guide, and back in the model."""
    import dataclasses
    import sys
    from pathlib import Path

    from torch import nn

    from pyro_vae import build

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mnist_nll

    config = mnist_nll.row_config("mlp2-standard-iwae5", None, 1)
    assert (config.elbo, config.particles) == ("iwae", 5)
    model, guide = build(dataclasses.replace(config.model, x_shape=(1, 28, 28), x_dim=None))

    def shape(net: nn.Sequential) -> list:
        return [(m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m).__name__ for m in net]

    tanh2 = ["Tanh"]
    assert shape(guide.first.encoder.net) == [(784, 200), *tanh2, (200, 200), *tanh2]
    assert guide.first.head.out_features == 2 * 100
    assert shape(guide.ups[0].net) == [(100, 100), "Tanh", (100, 100), "Tanh", (100, 2 * 50)]
    assert shape(model.conditionals[0].net) == [(50, 100), "Tanh", (100, 100), "Tanh", (100, 2 * 100)]
    assert shape(model.decoder.net) == [(100, 200), "Tanh", (200, 200), "Tanh", (200, 784)]
