"""The IS gap's trend against the ELBO (``pyro_vae.gap_trend``): exact on exact data, an interval that covers the
true slope as often as it says (and would not without either of its two parts), and a back-test with a closed-form
miss."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pyro_vae.gap_trend import gap_trend


def scores(rng, elbo, beta, *, images=500, spread=20.0, image_slope=0.3, noise=0.3, jitter=0.0):
    """(S, N) log p(x) of ``images`` images at scores where the run's ELBO is ``elbo``: image i's is
    mu_i + (beta + delta_i) * elbo_s + IS noise + the epoch's jitter j_s (one for all images), with images far apart
    (mu_i sd ``spread``: on MNIST log p(x) spans tens of nats) and their own slopes (delta_i sd ``image_slope``)
    around the population's ``beta``."""
    elbo = np.asarray(elbo, dtype=float)[:, None]
    mu = rng.normal(-100.0, spread, size=images)
    delta = rng.normal(0.0, image_slope, size=images)
    j = jitter * rng.standard_normal((len(elbo), 1))
    return mu + (beta + delta) * elbo + noise * rng.standard_normal((len(elbo), images)) + j


def test_a_log_px_exactly_linear_in_the_elbo_gives_its_slope_and_an_interval_of_width_zero():
    """No noise, every image moving alike: log p(x) gains 0.58 nats per nat of ELBO, so the gap's slope is -0.42,
    every bootstrap draw sees it, and the residuals are zero."""
    rng = np.random.default_rng(1)
    elbo = [0.0, 0.4, 1.0, 1.3]
    trend = gap_trend(elbo, scores(rng, elbo, 0.58, image_slope=0.0, noise=0.0), resamples=200)
    assert trend.slope == pytest.approx(-0.42, abs=1e-9)
    assert trend.slope_low == pytest.approx(-0.42, abs=1e-9) and trend.slope_high == pytest.approx(-0.42, abs=1e-9)
    assert trend.elbo_span == pytest.approx(1.3, abs=1e-12) and trend.residual_sd == pytest.approx(0.0, abs=1e-9)
    assert trend.backtest_error == pytest.approx(0.0, abs=1e-9) and trend.scores == 4


def coverage(rng, half_width):
    """How many of 200 data sets' intervals (``half_width(trend)`` about the slope) cover the true slope -0.4."""
    elbo = [0.0, 0.3, 0.6, 0.9, 1.2, 1.5]
    covered = 0
    for _ in range(200):
        log_px = scores(rng, elbo, 0.6, image_slope=1.0, jitter=0.05)
        trend = gap_trend(elbo, log_px, resamples=300, seed=int(rng.integers(1 << 30)))
        covered += abs(trend.slope + 0.4) <= half_width(trend)
    return covered


def test_the_interval_covers_the_true_slope_as_often_as_its_level_says():
    """200 data sets (fixed seed), six scores over 1.5 nats of ELBO, images with their own slopes (sd 1), IS noise
    and an epoch jitter of 0.05 nats: the 90% interval covers the true slope in 180 of 200 expected (binomial sd
    4.2), and at least 167 (3 sd) must; it errs on the wide side (the IS noise is in both of its parts), so up to 199
    passes (measured 193). Either part alone is too narrow: the images' bootstrap alone misses the jitter, the
    residuals alone the images' own slopes; each covers fewer than 167 (measured 156 and 154)."""
    t = stats.t.ppf(0.95, 4)
    assert 167 <= coverage(np.random.default_rng(0), lambda tr: (tr.slope_high - tr.slope_low) / 2) <= 199
    assert coverage(np.random.default_rng(0), lambda tr: 1.6449 * tr.slope_se_images) < 167

    def residuals_only(tr):
        combined = (tr.slope_high - tr.slope_low) / 2 / t
        return t * math.sqrt(max(combined**2 - tr.slope_se_images**2, 0.0))

    assert coverage(np.random.default_rng(0), residuals_only) < 167


def test_pairing_by_image_is_what_makes_the_interval_narrow():
    """Two scores with the images shuffled at one of them (pairs broken, means unchanged): the slope is the same,
    but its interval must widen by several times, because the images' own spread (sd 20 nats) no longer cancels
    between the scores. An interval that did not pair the images would be this wide on the real data too."""
    rng = np.random.default_rng(2)
    elbo = [0.0, 1.0]
    log_px = scores(rng, elbo, 0.5)
    paired = gap_trend(elbo, log_px)
    log_px[1] = log_px[1, rng.permutation(log_px.shape[1])]
    unpaired = gap_trend(elbo, log_px)
    assert unpaired.slope == pytest.approx(paired.slope, abs=1e-9)
    assert unpaired.slope_high - unpaired.slope_low > 4 * (paired.slope_high - paired.slope_low)
    assert paired.slope_low < -0.5 < paired.slope_high and paired.residual_sd is None  # two scores: no residuals


def test_the_backtest_misses_a_curved_trend_by_its_closed_form():
    """Mean log p(x) 0.6 e + kappa e^2 at ELBOs 0, 1, 2 (no noise): the line through the first two scores has slope
    0.6 + kappa and predicts 1.2 + 2 kappa at 2, where log p(x) is 1.2 + 4 kappa: a miss of -2 kappa, SE zero."""
    kappa = 0.3
    mu = np.random.default_rng(3).normal(-100.0, 20.0, size=300)
    elbo = np.array([0.0, 1.0, 2.0])
    log_px = mu + (0.6 * elbo + kappa * elbo**2)[:, None]
    trend = gap_trend(elbo, log_px, resamples=100)
    assert trend.backtest_error == pytest.approx(-2 * kappa, abs=1e-9)
    assert trend.backtest_se == pytest.approx(0.0, abs=1e-9)
    assert gap_trend(elbo[:2], log_px[:2], resamples=100).backtest_error is None  # two scores: nothing to hold out


def test_log_px_moves_by_one_plus_the_slope_and_elbo_for_inverts_it():
    rng = np.random.default_rng(4)
    trend = gap_trend([0.0, 1.0], scores(rng, [0.0, 1.0], 0.5, image_slope=0.0, noise=0.0), resamples=50)
    ref = {"elbo_ref": -98.0, "log_px_ref": -86.0}
    assert trend.log_px_at(-96.0, **ref) == pytest.approx(-85.0)  # 2 nats of ELBO, 1 nat of log p(x)
    assert trend.elbo_for(-85.0, **ref) == pytest.approx(-96.0)
    assert trend.log_px_at(-96.0, **ref, slope=0.0) == pytest.approx(-84.0)  # the constant gap
    # A gap that falls as fast as the ELBO rises (slope -1): log p(x) never moves, so a higher one is never reached.
    assert trend.elbo_for(-85.0, **ref, slope=-1.0) == math.inf
    assert trend.elbo_for(-87.0, **ref, slope=-1.0) == -98.0  # already there


@pytest.mark.parametrize(
    "elbo, log_px, message",
    [
        ([0.0], np.ones((1, 5)), "at least 2 scores"),
        ([0.0, 1.0], np.ones((3, 5)), "arrays"),
        ([1.0, 1.0], np.ones((2, 5)), "all equal"),
        ([0.0, np.nan], np.ones((2, 2)), "finite"),
    ],
    ids=["one-score", "shapes", "no-spread", "nan"],
)
def test_bad_input_is_refused_with_a_reason(elbo, log_px, message):
    with pytest.raises(ValueError, match=message):
        gap_trend(elbo, log_px)
