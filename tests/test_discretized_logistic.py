"""The discretised logistic likelihood (Kingma et al. 2016): probabilities against scipy's logistic CDF, the edge
bins' tails, normalisation, the exact mean, sampling; and bits per dimension, whose convention for densities is
checked against the discretised probabilities themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pyro_vae.models.likelihoods import DiscretizedLogistic, DiscretizedLogisticLikelihood
from scipy import stats

from pyro_vae import VAEConfig, build
from pyro_vae.bits import bits_per_dim, bits_per_dim_of

LEVELS = torch.arange(256, dtype=torch.float64) / 255
#: (loc, scale): inside the range, near and beyond the edges, very sharp and very wide.
PARAMS = [(0.5, 0.05), (0.02, 0.01), (0.97, 0.2), (-0.3, 0.1), (1.4, 0.3), (0.3, 1e-3), (0.6, 5.0)]


def scipy_probabilities(loc: float, scale: float, bins: int = 256) -> np.ndarray:
    """P(k) for k = 0..bins-1 straight from the logistic CDF: bin edges (k -+ 1/2) / (bins - 1), edges to -+ inf."""
    edges = (np.arange(bins + 1) - 0.5) / (bins - 1)
    edges[0], edges[-1] = -np.inf, np.inf
    return np.diff(stats.logistic.cdf(edges, loc=loc, scale=scale))


@pytest.mark.parametrize(("loc", "scale"), PARAMS)
def test_probabilities_sum_to_one_and_match_the_logistic_cdf(loc, scale):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    p = d.log_prob(LEVELS).exp().numpy()
    assert abs(p.sum() - 1) < 1e-6
    expected = scipy_probabilities(loc, scale)
    big = expected > 1e-300
    np.testing.assert_allclose(p[big], expected[big], rtol=1e-6, atol=1e-12)


def test_edge_bins_take_the_tails():
    # A logistic centred below 0: most of its mass is below 0, and all of it goes to the pixel value 0.
    d = DiscretizedLogistic(torch.tensor(-0.2, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    p0 = d.log_prob(torch.tensor(0.0, dtype=torch.float64)).exp().item()
    assert p0 == pytest.approx(stats.logistic.cdf(0.5 / 255, loc=-0.2, scale=0.1), rel=1e-9)
    assert p0 > stats.logistic.cdf(0, loc=-0.2, scale=0.1) > 0.85
    d = DiscretizedLogistic(torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64))
    p255 = d.log_prob(torch.tensor(1.0, dtype=torch.float64)).exp().item()
    assert p255 == pytest.approx(stats.logistic.sf(254.5 / 255, loc=1.3, scale=0.1), rel=1e-9)


def test_log_prob_stays_finite_far_in_the_tails():
    # 1 - 1e-20 rounds to 1 in float64: a naive sigma(b) - sigma(a) is 0 there and its log -inf.
    d = DiscretizedLogistic(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.01, dtype=torch.float64))
    value = d.log_prob(torch.tensor(0.8, dtype=torch.float64)).item()
    expected = stats.logistic.logpdf(0.8, scale=0.01) + math.log(1 / 255)  # a bin far out: density x width
    assert math.isfinite(value) and value == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(("loc", "scale"), PARAMS)
def test_mean_is_exact(loc, scale):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    assert d.mean.item() == pytest.approx(float((scipy_probabilities(loc, scale) * LEVELS.numpy()).sum()), abs=1e-9)


def test_samples_follow_the_probabilities():
    torch.manual_seed(0)
    n = 200_000
    d = DiscretizedLogistic(torch.tensor(0.04), torch.tensor(0.03))
    x = d.sample((n,))
    assert set(torch.unique(x * 255).round().tolist()) <= set(range(256))
    p = scipy_probabilities(0.04, 0.03)
    counts = torch.bincount((x * 255).round().long(), minlength=256).numpy()
    # Each bin's count is Binomial(n, p_k): within 5 standard errors (the edge bin 0 holds the lower tail).
    se = np.sqrt(n * p * (1 - p))
    for k in (0, 5, 10, 20, 40):
        assert abs(counts[k] - n * p[k]) < 5 * se[k] + 1, (k, counts[k], n * p[k])


def test_the_likelihood_learns_one_scale_per_channel_and_checks_the_8_bit_grid():
    lik = DiscretizedLogisticLikelihood((3, 4, 4), init_scale=0.2)
    assert lik.scale.shape == (3, 1, 1) and torch.allclose(lik.scale, torch.tensor(0.2))
    assert DiscretizedLogisticLikelihood((3, 4, 4), scale_per_pixel=True).scale.shape == (3, 4, 4)
    d = lik(torch.zeros(5, 3, 4, 4))
    assert d.batch_shape == (5,) and d.event_shape == (3, 4, 4)
    lik.check_support(torch.randint(0, 256, (2, 3, 4, 4)) / 255.0)
    with pytest.raises(ValueError, match="k/255"):
        lik.check_support(torch.full((2, 3, 4, 4), 0.5))
    DiscretizedLogisticLikelihood(64, bins=17).check_support(torch.arange(17.0).repeat(4)[:64] / 16)


def test_it_trains_on_the_digits_with_their_17_levels(tmp_path):
    from pyro_vae import TrainConfig, train

    config = TrainConfig(
        model=VAEConfig(z_dim=2, hidden=(32,), likelihood="discretized-logistic", options={"likelihood": {"bins": 17}}),
        epochs=3,
        batch_size=256,
        threads=1,
    )
    result = train(config, tmp_path / "run", progress=False, figures=False)
    # A probability of the pixel values: log p(x|z) <= 0, so the ELBO is negative; and it improves.
    elbos = [m["test_elbo"] for m in result.metrics]
    assert all(e < 0 for e in elbos) and elbos[-1] > elbos[0]


# --- bits per dimension ----------------------------------------------------------------------------------------


def test_bits_per_dim_of_a_uniform_distribution_over_256_values_is_8():
    assert bits_per_dim(784 * -math.log(256), 784) == pytest.approx(8.0, rel=1e-12)


def test_the_density_convention_agrees_with_the_discretised_probability():
    """For a logistic much wider than a bin, P(bin) ~= density x bin width: the discretised logistic's bits (as a
    probability) and the continuous logistic density's bits (with the 1/255 bin width) agree to 1e-4 bits."""
    rng = np.random.default_rng(0)
    loc = torch.as_tensor(rng.uniform(0.3, 0.7, 500))
    scale = torch.as_tensor(rng.uniform(0.05, 0.2, 500))
    x = torch.as_tensor(rng.integers(60, 196, 500) / 255.0)  # interior pixels (the edge bins hold tails)
    discrete = DiscretizedLogistic(loc, scale).log_prob(x).sum().item()
    density = float(stats.logistic.logpdf(x.numpy(), loc=loc.numpy(), scale=scale.numpy()).sum())
    a, b = bits_per_dim(discrete, 500), bits_per_dim(density, 500, levels=256)
    assert abs(a - b) < 1e-4, (a, b)
    assert b == pytest.approx(-density / (500 * math.log(2)) + math.log2(255), rel=1e-12)


def test_which_likelihoods_get_bits_per_dim():
    for name, levels, expected in (("bernoulli", 256, None), ("gaussian", None, None), ("gaussian", 256, "density")):
        model, _ = build(VAEConfig(x_dim=4, likelihood=name, hidden=(2,)))
        value = bits_per_dim_of(model.likelihood, levels, -10.0, 4)
        assert (value is None) == (expected is None)
    model, _ = build(VAEConfig(x_dim=4, likelihood="discretized-logistic", hidden=(2,)))
    assert bits_per_dim_of(model.likelihood, None, -10.0, 4) == pytest.approx(10 / (4 * math.log(2)))


@pytest.mark.parametrize(
    ("likelihood", "extra", "bits"),
    [
        ("discretized-logistic", ["--likelihood-bins", "17"], "probability"),
        ("gaussian", [], "density"),
        ("bernoulli", [], None),
    ],
)
def test_evaluate_reports_bits_per_dimension_next_to_nats(tmp_path, capsys, likelihood, extra, bits):
    import json

    from pyro_vae.cli import main

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--likelihood", likelihood, *extra, "--epochs", "1", "--hidden", "8"]
    assert main([*args, "--batch-size", "512", "--threads", "1", "--no-progress"]) == 0
    assert main(["evaluate", str(out), "--num-samples", "20", "--num-examples", "30"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "evaluation.json").read_text())
    if bits is None:  # binarised digits: nats only
        assert record["bits_per_dim"] is None and "bits per dimension" not in printed
        return
    # The digits: 64 pixels on 17 levels; a density gets the bin width 1/16 (log2 16 = 4 bits), a probability none.
    width_bits = 4.0 if bits == "density" else 0.0
    for key in ("elbo", "log_likelihood"):
        assert record["bits_per_dim"][key] == pytest.approx(-record[key] / (64 * math.log(2)) + width_bits, rel=1e-9)
    assert f"IS log p(x) {record['bits_per_dim']['log_likelihood']:.4f}" in printed
