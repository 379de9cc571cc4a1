"""VAEConfig round-trips to JSON, rejects bad names, and build() gives working Pyro model/guide pairs."""

from __future__ import annotations

import math

import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from scipy import stats

from pyro_vae import TrainConfig, VAEConfig, build, load_data, load_run, train
from pyro_vae.closed_form import (
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    mse_from_gaussian_log_likelihood,
)


def test_readme_api_snippet_runs_and_shapes_are_right():
    model, guide = build(VAEConfig(x_dim=64, z_dim=2, prior="standard", likelihood="bernoulli", decoder="mlp"))
    x = torch.bernoulli(torch.full((10, 64), 0.3))
    tr = poutine.trace(guide).get_trace(x)
    assert tr.nodes["z"]["value"].shape == (10, 2)
    mtr = poutine.trace(poutine.replay(model, trace=tr)).get_trace(x)
    assert mtr.nodes["x"]["is_observed"]
    assert mtr.nodes["z"]["fn"].event_shape == (2,)
    assert mtr.nodes["x"]["fn"].event_shape == (64,)
    assert [f.name for f in mtr.nodes["z"]["cond_indep_stack"]] == ["data"]


def test_config_round_trips_through_json(tmp_path):
    cfg = VAEConfig(
        x_dim=64,
        z_dim=3,
        prior="gaussian",
        options={
            "prior": {"loc": [0.1, 0.2, 0.3], "scale": 2.0, "learn": True},
            "likelihood": {"sigma": 0.5},
            "encoder": {"hidden": ()},
        },
        likelihood="gaussian",
        decoder="linear",
        hidden=(32, 16),
    )
    assert VAEConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "config.json")
    assert VAEConfig.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize(
    "given,msg",
    [
        ({"prior": "laplace"}, "unknown prior 'laplace'"),
        ({"likelihood": "poisson"}, "unknown likelihood 'poisson'"),
        ({"decoder": "deconv"}, "unknown decoder 'deconv'"),
        ({"z_dim": 0}, "z_dim must be an integer >= 1"),
        (
            {"likelihood": "gaussian", "options": {"likelihood": {"sigma": -1.0}}},
            "likelihood 'gaussian': sigma must be",
        ),
        ({"options": {"likelihood": {"sigma": 1.0}}}, "likelihood 'bernoulli' has no option.s. sigma; it takes no"),
    ],
)
def test_config_rejects_bad_values_with_clear_message(given, msg):
    with pytest.raises(ValueError, match=msg) as err:
        VAEConfig(x_dim=4, **given)
    assert "\n" not in str(err.value)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown VAEConfig field"):
        VAEConfig.from_dict({"x_dim": 4, "colour": "red"})


def test_gaussian_log_likelihood_has_all_constants():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    ours = gaussian_log_likelihood(x, mean, 0.7)
    scipy_value = stats.norm(mean.numpy(), 0.7).logpdf(x.numpy()).sum(-1)
    assert torch.allclose(ours, torch.from_numpy(scipy_value), rtol=1e-12)
    mse = ((x - mean) ** 2).mean(-1)
    assert torch.allclose(mse_from_gaussian_log_likelihood(ours, 5, 0.7), mse, rtol=1e-10)
    # The blog's sigma = 1 case: -log p = k/2 * MSE + k/2 log 2 pi.
    nll = -gaussian_log_likelihood(x, mean, 1.0)
    assert torch.allclose(nll, 5 / 2 * mse + 5 / 2 * math.log(2 * math.pi), rtol=1e-12)


def test_bernoulli_log_likelihood_matches_scipy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, generator=g, dtype=torch.float64) * 3
    x = torch.bernoulli(torch.full((3, 8), 0.5, dtype=torch.float64), generator=g)
    p = torch.sigmoid(logits).numpy()
    expected = stats.bernoulli(p).logpmf(x.numpy()).sum(-1)
    assert torch.allclose(bernoulli_log_likelihood(x, logits), torch.from_numpy(expected), rtol=1e-10)


def test_encoder_scale_is_positive_even_for_extreme_inputs():
    _, guide = build(VAEConfig(x_dim=4, z_dim=2, hidden=(8,)))
    _, scale = guide.loc_scale(torch.full((2, 4), -1e4))
    assert (scale > 0).all()
    assert torch.isfinite(torch.log(scale)).all()


def test_learnable_prior_parameters_belong_to_the_model():
    model, guide = build(VAEConfig(x_dim=4, prior="gaussian", options={"prior": {"learn": True}}))
    names = {n for n, _ in model.named_parameters()}
    assert {"prior.loc", "prior.raw_scale"} <= names
    model_fixed, _ = build(VAEConfig(x_dim=4, prior="gaussian", options={"prior": {"scale": 2.0}}))
    assert not any(n.startswith("prior") for n, _ in model_fixed.named_parameters())
    assert torch.allclose(model_fixed.prior.scale, torch.full((2,), 2.0))


def test_kl_kinds_reports_analytic_for_gaussian_priors():
    from pyro_vae.kl_check import ANALYTIC, kl_kinds

    for prior in ("standard", "gaussian"):
        model, guide = build(VAEConfig(x_dim=4, prior=prior))
        assert kl_kinds(model, guide, torch.bernoulli(torch.full((3, 4), 0.5))) == {"z": ANALYTIC}


def test_a_config_made_for_data_records_where_they_came_from_so_the_run_loads_them_again(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npy"
    np.save(path, (rng.random((40, 4, 4)) > 0.5).astype(np.float32))
    data = load_data(str(path))
    config = TrainConfig.for_data(data, z_dim=2, hidden=(8,), epochs=1, threads=1)
    assert config.dataset == str(path)
    train(config, tmp_path / "run", data=data, progress=False, figures=False)
    run = load_run(tmp_path / "run")  # the same data again, or the data check would refuse them
    assert torch.equal(run.data.train_x, data.train_x)
    assert TrainConfig.for_data(load_data("digits"), dataset="digits").dataset == "digits"
