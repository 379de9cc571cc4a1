"""Does the importance-sampling gap stay put while a run trains? Its trend against the ELBO, with an interval.

A run's test log p(x) is estimated by importance sampling (Burda et al. 2016 [1]) at a few epochs only, since it
costs minutes, while its test ELBO is measured every epoch. A learning-curve forecast of the ELBO
(``pyro_vae.learning_curve``) becomes a forecast of log p(x) through the gap

.. math::

    \\Delta(t) = \\log p(x) - \\mathrm{ELBO}(t),

and holding :math:`\\Delta` at its last measured value assumes that the guide's looseness does not change as the
model trains. It need not: the gap is the inference gap of Cremer et al. [2], and a guide that keeps improving
closes part of it, so that log p(x) climbs more slowly than the ELBO. Given the same test images scored at several
epochs, this module fits their mean log p(x) linearly in the run's ELBO at those epochs,

.. math::

    \\overline{\\log p}_s = \\alpha + (1 + \\sigma)\\, e_s \\qquad (s = 1, \\dots, S \\text{ scores}),

by least squares, so that the gap moves by :math:`\\sigma` nats per nat of ELBO and log p(x) by :math:`1 + \\sigma`
(:math:`\\sigma = 0` is the constant gap). The regressor :math:`e_s` is the caller's: the learning curve's fitted
ELBO at the score's epoch is the one to use (``pyro-vae forecast --gap-trend`` and ``benchmarks/mnist_nll.py`` do),
not the ELBO measured at that epoch, which jitters from epoch to epoch by a few tenths of a nat as the guide moves
while log p(x) hardly does (IWAE k = 50 on MNIST: test ELBO -98.76 at epoch 298, -99.48 at 310, log p(x) -86.77 and
-86.75), and so would pull a trend fitted over nearby epochs towards :math:`\\sigma = -1`.

Its uncertainty has two parts. The images: the slope of other test images would differ, measured by a bootstrap over
the images that resamples the same images at every score (the scores share their images, whose log p(x) spans tens
of nats, so only paired differences are precise; resampling each score on its own would ignore that, Efron &
Tibshirani [3], ch. 6 and 9). And the epochs: log p(x) itself jitters from epoch to epoch around any trend, which
no resampling of images sees; with three or more scores the regression's residuals measure it (S - 2 degrees of
freedom). The interval is :math:`\\hat\\sigma \\pm q\\, \\sqrt{se_{\\text{images}}^2 + se_{\\text{residuals}}^2}`,
q from Student's t with S - 2 degrees of freedom (the normal's with two scores, when the epochs' part cannot be
measured and the interval is too narrow by that part: ``GapTrend.residual_sd`` is None then). The IS noise of each
image is in both parts, so the interval errs on the wide side. With three or more scores a back-test fits all but
the last score and predicts its mean log p(x).

Assumptions, stated: the trend is linear in the ELBO, and using it to convert a forecast ELBO carries it beyond the
range of ELBO it was measured over (``GapTrend.elbo_span``): an extrapolation, to be read with that span and the
back-test.

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    [2] C. Cremer, X. Li, D. Duvenaud. Inference Suboptimality in Variational Autoencoders. ICML 2018.
    [3] B. Efron, R. J. Tibshirani. An Introduction to the Bootstrap. Chapman & Hall, 1993.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["GapTrend", "gap_trend"]


@dataclass(frozen=True)
class GapTrend:
    """Mean log p(x) linear in the ELBO over a run's scores, as the gap's slope sigma (module docstring)."""

    slope: float  # sigma: nats of gap per nat of ELBO (log p(x) moves by 1 + sigma)
    slope_low: float
    slope_high: float
    intercept: float  # alpha
    level: float
    scores: int
    elbo_span: float  # the range of ELBO the trend was measured over
    slope_se_images: float  # the bootstrap-over-images part of the slope's standard error
    residual_sd: float | None  # the scores' scatter around the line (None with two scores: not measurable)
    backtest_error: float | None  # the trend of all but the last score: predicted minus measured last log p(x)
    backtest_se: float | None  # its bootstrap-over-images standard error

    def summary(self) -> dict[str, Any]:
        """The slope with its interval, the ELBO span, the scatter and the back-test, for a JSON record."""
        return {
            "slope": self.slope,
            "slope_interval": [self.slope_low, self.slope_high],
            "elbo_span": self.elbo_span,
            "residual_sd": self.residual_sd,
            "backtest_error": self.backtest_error,
            "backtest_se": self.backtest_se,
        }

    def log_px_at(self, elbo: float, *, elbo_ref: float, log_px_ref: float, slope: float | None = None) -> float:
        """log p(x) at ``elbo``: log p_ref + (1 + sigma)(elbo - elbo_ref), from a measured pair (elbo_ref, log_px_ref);
        ``slope`` overrides sigma (an end of its interval)."""
        s = self.slope if slope is None else slope
        return log_px_ref + (1.0 + s) * (elbo - elbo_ref)

    def elbo_for(self, log_px: float, *, elbo_ref: float, log_px_ref: float, slope: float | None = None) -> float:
        """The ELBO at which log p(x) reaches ``log_px`` (the inverse of ``log_px_at``); inf when it lies above
        ``log_px_ref`` and 1 + sigma <= 0, so that log p(x) does not rise with the ELBO at all."""
        s = self.slope if slope is None else slope
        if s <= -1.0:
            return math.inf if log_px > log_px_ref else elbo_ref
        return elbo_ref + (log_px - log_px_ref) / (1.0 + s)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (intercept, slope) of y on x along the last axis."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    slope = (xc * yc).sum(-1) / (xc * xc).sum(-1)
    return y.mean(-1) - slope * x.mean(-1), slope


def gap_trend(
    elbo: Sequence[float] | np.ndarray,
    log_px: np.ndarray,
    *,
    level: float = 0.9,
    resamples: int = 2000,
    seed: int = 0,
) -> GapTrend:
    """Fit the mean log p(x) of the same ``N`` images at ``S`` scores linearly in the run's ELBO at those scores.

    ``elbo``: (S,) the ELBO at each score (the learning curve's fitted value: module docstring); ``log_px``: (S, N),
    row s each image's IS log p(x) at score s, the images in the same order in every row. The ``level`` interval
    for the slope combines a bootstrap over the images (``resamples`` draws, the same draw at every score) with the
    residuals' scatter (module docstring). Needs S >= 2 scores at different ELBOs.
    """
    x = np.asarray(elbo, dtype=float)
    lp = np.asarray(log_px, dtype=float)
    if x.ndim != 1 or lp.ndim != 2 or lp.shape[0] != x.shape[0]:
        raise ValueError(f"elbo must be (scores,) and log_px (scores, images) arrays, got {x.shape} and {lp.shape}")
    scores, images = lp.shape
    if scores < 2 or images < 2:
        raise ValueError(f"a gap trend needs at least 2 scores of at least 2 images, got {scores} of {images}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(lp))):
        raise ValueError("the ELBO and log p(x) values must be finite")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 10:
        raise ValueError(f"resamples must be at least 10, got {resamples}")
    if np.ptp(x) == 0:
        raise ValueError("the scores' ELBOs are all equal: log p(x) has no trend in the ELBO to fit")
    means = lp.mean(1)
    intercept, beta = _line(x, means)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, images, size=(resamples, images))
    boot = lp[:, idx].mean(-1).T  # (resamples, scores): the same resampled images at every score
    _, betas = _line(x, boot)
    se_images = float(np.std(betas, ddof=1))
    residual_sd = None
    se = se_images
    quantile = float(stats.norm.ppf((1 + level) / 2))
    if scores >= 3:
        residuals = means - (intercept + beta * x)
        residual_sd = float(np.sqrt(residuals @ residuals / (scores - 2)))
        se_residuals = residual_sd / float(np.sqrt(((x - x.mean()) ** 2).sum()))
        se = math.hypot(se_images, se_residuals)
        quantile = float(stats.t.ppf((1 + level) / 2, scores - 2))
    backtest = backtest_se = None
    if scores >= 3 and np.ptp(x[:-1]) > 0:

        def miss(y: np.ndarray) -> np.ndarray:
            a, b = _line(x[:-1], y[..., :-1])
            return a + b * x[-1] - y[..., -1]

        backtest = float(miss(means))
        backtest_se = float(np.std(miss(boot), ddof=1))
    slope = float(beta) - 1.0
    return GapTrend(
        slope=slope,
        slope_low=slope - quantile * se,
        slope_high=slope + quantile * se,
        intercept=float(intercept),
        level=level,
        scores=scores,
        elbo_span=float(np.ptp(x)),
        slope_se_images=se_images,
        residual_sd=residual_sd,
        backtest_error=backtest,
        backtest_se=backtest_se,
    )
