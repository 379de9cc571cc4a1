"""Simulation-based calibration (pyro_vae.sbc) on the linear-Gaussian VAE, whose exact posterior is known.

Truth: with the guide at the exact posterior the ranks are uniform on {0..L} (Talts et al. 2018, Thm. 1). With the
guide's std r times the posterior's (mean exact), given z* the rank is Binomial(L, Phi(e / r)) with e = (z* - m) / s
~ N(0, 1), so the expected rank distribution is the integral of that over e (computed here by quadrature, apart
from the code): an inverted U for r = 3, a U for r = 0.5. From it, the chi-square test's noncentrality
lambda = N sum_b (p_b - 1/B)^2 / (1/B) (314 for r = 3, 317 for r = 0.5) and its power at the Bonferroni level
alpha / J: > 0.9999 for both at N = 300, L = 99, B = 20 (so a miss is not bad luck); the end bins of r = 0.5 hold
4.0 times their uniform share, the middle ones of r = 3 2.8 times; and the observed histograms match the expected.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from torch.distributions.transforms import AffineTransform

from pyro_vae import VAEConfig, build
from pyro_vae.linear_gaussian import set_guide_to_posterior
from pyro_vae.sbc import SBCResult, check_settings, rank_histogram, simulation_based_calibration
from pyro_vae.sbc_figures import plot_sbc, uniform_band
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_evaluation import linear_gaussian
from tests.test_gaps import KAPPA, sphere_guide, sphere_model

pytestmark = pytest.mark.usefixtures("one_thread")

N, L, B, ALPHA, J = 300, 99, 20, 0.01, 2


def expected_bin_probabilities(r: float, draws: int = L, bins: int = B) -> np.ndarray:
    """P(rank in bin b) for a guide whose std is r times the exact posterior's, by quadrature over e ~ N(0, 1)."""
    e = np.linspace(-12, 12, 24001)
    weights = stats.norm.pdf(e) * (e[1] - e[0])
    u = stats.norm.cdf(e / r)
    pmf = (stats.binom.pmf(np.arange(draws + 1)[:, None], draws, u[None, :]) * weights).sum(1)
    return pmf.reshape(bins, -1).sum(1)


def power(probabilities: np.ndarray, n: int = N, level: float = ALPHA / J) -> float:
    """Power of Pearson's chi-square test of uniformity against these bin probabilities (noncentral chi-square)."""
    bins = len(probabilities)
    noncentrality = n * bins * ((probabilities - 1 / bins) ** 2).sum()
    return float(stats.ncx2.sf(stats.chi2.isf(level, bins - 1), bins - 1, noncentrality))


@pytest.fixture
def lg(float64):
    return linear_gaussian(x_dim=5, z_dim=J)


def run_sbc(model, guide, scale: float, seed: int = 0) -> SBCResult:
    set_guide_to_posterior(guide, model, scale_factor=scale)
    pyro.set_rng_seed(seed)
    return simulation_based_calibration(model, guide, N, num_posterior_draws=L, num_bins=B, alpha=ALPHA)


def test_the_exact_posterior_is_not_flagged_and_its_ranks_are_uniform(lg):
    model, guide = lg
    result = run_sbc(model, guide, 1.0)
    assert result.ranks.shape == (N, J) and int(result.ranks.min()) >= 0 and int(result.ranks.max()) <= L
    assert result.flagged == []
    # Measured at this seed: p = 0.23 and 0.57, both above the Bonferroni level 0.01 / 2.
    assert min(result.p_values) > ALPHA / J
    assert expected_bin_probabilities(1.0) == pytest.approx(np.full(B, 1 / B), abs=1e-9)  # the quadrature's check


@pytest.mark.parametrize(("scale", "shape"), [(3.0, "inverted U"), (0.5, "U")])
def test_an_over_or_underdispersed_guide_is_flagged_with_the_expected_rank_histogram(lg, scale, shape):
    model, guide = lg
    expected = expected_bin_probabilities(scale)
    assert power(expected) > 0.9999  # a miss could not be bad luck
    middle, ends = expected[B // 2 - 2 : B // 2 + 2].mean(), expected[[0, -1]].mean()
    assert (middle > 2 / B and ends < 0.1 / B) if shape == "inverted U" else (ends > 3 / B and middle < 0.6 / B)
    result = run_sbc(model, guide, scale, seed=1)
    assert result.flagged == ["z[0]", "z[1]"]
    # The observed histogram is the expected one: Pearson's test against the quadrature's probabilities, pooling
    # bins expected to hold fewer than 5 counts (as the test needs), is not rejected at 0.001.
    for counts in result.histogram().T.numpy():
        big = expected * N >= 5
        observed = np.append(counts[big], counts[~big].sum())
        predicted = np.append(expected[big], expected[~big].sum()) * N
        keep = predicted > 0
        assert stats.chisquare(observed[keep], predicted[keep]).pvalue > 1e-3


def gaussian_model(x):
    """A Pyro model of the user's own: z ~ N(0, 1), x | z ~ N(z, 1), per example; p(z | x) = N(x / 2, 1 / 2)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        return pyro.sample("obs", dist.Normal(z, 1.0), obs=x)


def exact_guide(x, scale=1.0):
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("z", dist.Normal(x / 2, scale * 0.5**0.5))


def test_any_pyro_model_with_its_data_shape_and_an_exact_guide_is_calibrated_and_a_biased_one_is_not(float64):
    x_like = torch.zeros(N)
    pyro.set_rng_seed(2)
    calibrated = simulation_based_calibration(gaussian_model, exact_guide, N, x_like=x_like)
    assert calibrated.names == ["z"] and calibrated.flagged == []

    def biased(x):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(x / 2 + 0.5, 0.5**0.5))  # shifted by 0.71 posterior std

    pyro.set_rng_seed(2)
    assert simulation_based_calibration(gaussian_model, biased, N, x_like=x_like).flagged == ["z"]


def test_ranks_are_pooled_into_equal_bins_and_bad_settings_are_refused():
    ranks = torch.tensor([[0], [4], [5], [99], [50]])
    assert rank_histogram(ranks, 99, 20)[:, 0].tolist() == [2, 1] + [0] * 8 + [1] + [0] * 8 + [1]
    for bad in [(0, 99, 20), (10, 0, 20), (10, 99, 7), (10, 99, 1), (2.5, 99, 20)]:
        with pytest.raises(ValueError, match="SBC"):
            check_settings(*bad)


def test_the_figure_is_written_with_the_uniform_band(lg, tmp_path):
    model, guide = lg
    result = run_sbc(model, guide, 3.0)
    low, high = uniform_band(N, B)
    # Binomial(300, 1/20) (mean 15, sd 3.8): its 0.5% and 99.5% quantiles.
    assert (low, high) == (stats.binom.ppf(0.005, N, 1 / B), stats.binom.ppf(0.995, N, 1 / B)) and low < 15 < high
    path = plot_sbc(result.summary(), tmp_path / "sbc_ranks.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_projects_model_simulates_without_data_and_gives_the_same_verdicts(lg):
    model, guide = lg
    set_guide_to_posterior(guide, model)
    pyro.set_rng_seed(0)
    assert simulation_based_calibration(model, guide, N).flagged == []  # model(None, num_samples=N)
    set_guide_to_posterior(guide, model, scale_factor=3.0)
    pyro.set_rng_seed(0)
    assert simulation_based_calibration(model, guide, N, x_like=torch.zeros(N, 5)).flagged == ["z[0]", "z[1]"]


@pytest.mark.parametrize(("kappa", "flagged"), [(KAPPA, False), (4 * KAPPA, True)])
def test_on_the_sphere_the_exact_power_spherical_posterior_passes_and_a_too_concentrated_one_is_flagged(
    float64, kappa, flagged
):
    """The conjugate model of tests/test_gaps.py: z uniform on S^2, x | z ~ PS(z, 5), so p(z | x) = PS(x, 5); the
    coordinates of z are ranked one by one. A guide 4 times as concentrated is too narrow in every direction."""
    guide = functools.partial(sphere_guide, tilt=0.0, kappa=kappa)
    pyro.set_rng_seed(8)
    result = simulation_based_calibration(sphere_model, guide, N, x_like=torch.zeros(N, 3))
    assert result.names == ["z[0]", "z[1]", "z[2]"]
    assert (result.flagged == result.names) if flagged else (result.flagged == [])


@pytest.mark.parametrize("prior", ["mixture", "vamp", "flow"])
def test_any_registered_prior_a_guide_drawing_from_the_prior_passes_even_when_wrong_and_a_shrunk_one_is_flagged(prior):
    """Any registered prior. A guide that draws from p(z) whatever x is passes SBC even when x says much about z:
    z* and its draws are then i.i.d. from p(z), so the ranks are uniform by symmetry (SBC checks calibration
    averaged over p(x), and the prior is calibrated in that sense, as Talts et al. 2018 point out). With the decoder's
    weights at zero p(z | x) = p(z), and the same draws shrunk towards 0 by half are too narrow: flagged."""
    torch.manual_seed(0)
    config = VAEConfig(x_dim=5, z_dim=2, decoder="linear", likelihood="gaussian", prior=prior)
    model, _ = build(replace(config, options={"encoder": {"hidden": ()}, "likelihood": {"sigma": 0.3}}))

    def prior_guide(x, shrink=1.0):
        with pyro.plate("data", x.shape[0]):
            shrunk = dist.TransformedDistribution(model.prior(), [AffineTransform(0.0, shrink, event_dim=1)])
            return pyro.sample("z", shrunk)

    with torch.no_grad():
        model.decoder.linear.weight.copy_(3 * torch.eye(5, 2))  # x says much about z
    pyro.set_rng_seed(9)
    assert simulation_based_calibration(model, prior_guide, N).flagged == []
    with torch.no_grad():
        model.decoder.linear.weight.zero_()
    pyro.set_rng_seed(9)
    assert simulation_based_calibration(model, prior_guide, N).flagged == []
    shrunk = functools.partial(prior_guide, shrink=0.5)
    assert simulation_based_calibration(model, shrunk, N).flagged == ["z[0]", "z[1]"]
