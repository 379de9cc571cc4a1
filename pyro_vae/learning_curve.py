"""How far is a training run from a number it has not reached yet? A learning-curve fit with an interval.

A run stopped by a budget reports an ELBO that is still climbing. To say how far the budget falls short of a
published number, the per-epoch test ELBO is fitted with a saturating power law (the form used for learning curves
since Cortes et al. 1994 [1], and in the scaling-law literature [2]):

.. math::

    \\mathrm{ELBO}(t) = A - b\\, t^{-c}, \\qquad b > 0,\\ c > 0,

where :math:`A` is the ELBO the run would reach with unlimited epochs, and the epoch at which it reaches a target
:math:`T < A` is :math:`t^* = (b / (A - T))^{1/c}` (never, :math:`t^* = \\infty`, when :math:`T \\ge A`). A power law
in epochs suits schedules that change the learning rate at geometric epochs (Burda et al.'s 3^i epochs) because they
look the same at every scale of log t, though each change still bends the curve: ``pyro-vae forecast`` names the
changes that fall inside the back-test's span and ahead of the curve.

For a fixed :math:`c` the model is linear in :math:`(A, b)`, so the fit is least squares over :math:`(A, b)` inside a
one-dimensional search over :math:`c` (variable projection): it has no starting point to choose and cannot fail to
converge, which a generic three-parameter ``curve_fit`` can. The interval comes from a moving-block bootstrap of the
residuals [3] (blocks keep the epoch-to-epoch correlation of a training curve, which independent resampling would
ignore and so give intervals too narrow). A back-test says how much to trust the extrapolation: the same fit on the
first half of the epochs predicts the last epochs, and the error is reported beside the forecast. The error is the
mean over the last ``block`` epochs (the bootstrap's block length), not the last epoch alone: one epoch's ELBO
scatters by a few tenths of a nat (0.1 to 0.3 sd from epoch to epoch on the MNIST rows of docs/images.md), enough
to fail a fit that is right or pass one that is wrong. On 600 power laws (epochs 3-150) with 0.3 nats of
independent noise an epoch, the last epoch alone put 78 right fits (13%) more than 0.5 nats off, the mean over the
last 6 epochs 3 (0.5%).

The forecast is an extrapolation: it assumes the run goes on with the same protocol and that the curve keeps its
power-law shape, and it is only as good as its back-test. A fit whose exponent ends at the floor of its search range
(``PowerLawFit.identified`` False) saw a curve still climbing like log t over its epochs, which has no asymptote to
read: its A is an artefact of the floor and is not reported as a limit.

References:
    [1] C. Cortes, L. D. Jackel, S. A. Solla et al. Learning Curves: Asymptotic Values and Rate of Convergence. 1994.
    [2] J. Hestness et al. Deep Learning Scaling is Predictable, Empirically. arXiv:1712.00409, 2017.
    [3] H. R. Kuensch. The Jackknife and the Bootstrap for General Stationary Observations. Ann. Statist. 17, 1989.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

#: The search range of the exponent c: below it the curve is flat to rounding, above it it has saturated already.
EXPONENT_RANGE = (1e-3, 4.0)
#: The fewest epochs a fit takes: three parameters and at least two degrees of freedom for the residuals.
MIN_POINTS = 5


@dataclass(frozen=True)
class PowerLawFit:
    """ELBO(t) = A - b t^(-c), least squares over the epochs it was fitted to."""

    asymptote: float  # A: the ELBO with unlimited epochs
    scale: float  # b > 0
    exponent: float  # c > 0
    residual_sd: float

    @property
    def identified(self) -> bool:
        """False when the exponent sits at the floor of its search range: over the fitted epochs the curve still climbs
        like log t (A - b t^(-c) -> A - b + b c log t as c -> 0), so A and b grow without bound together and the
        asymptote is an artefact of the floor, not a property of the curve. Epochs to a target near the curve are
        still a log-linear extrapolation; the limit cannot be read from it."""
        return self.exponent > EXPONENT_RANGE[0] * 1.01

    def predict(self, epochs: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """The fitted ELBO at ``epochs``."""
        return self.asymptote - self.scale * np.asarray(epochs, dtype=float) ** (-self.exponent)

    def epochs_to(self, target: float) -> float:
        """t* = (b / (A - T))^(1/c), the epoch at which the fitted curve reaches ``target``; inf if it never does."""
        if target >= self.asymptote:
            return math.inf
        return float((self.scale / (self.asymptote - target)) ** (1.0 / self.exponent))


def _linear_part(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(A, b, SSE) of the least-squares y = A - b x with b >= 0 (x = t^(-c))."""
    xc, yc = x - x.mean(), y - y.mean()
    sxx = float(xc @ xc)
    b = max(0.0, -float(xc @ yc) / sxx) if sxx > 0 else 0.0
    a = float(y.mean() + b * x.mean())
    r = y - (a - b * x)
    return a, b, float(r @ r)


def fit_power_law(epochs: Sequence[float] | np.ndarray, elbo: Sequence[float] | np.ndarray) -> PowerLawFit:
    """Least-squares fit of ELBO(t) = A - b t^(-c) to a learning curve (module docstring)."""
    t = np.asarray(epochs, dtype=float)
    y = np.asarray(elbo, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError("epochs and elbo must be 1-D sequences of the same length")
    if len(t) < MIN_POINTS:
        raise ValueError(f"a learning-curve fit needs at least {MIN_POINTS} epochs, got {len(t)}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y)) and np.all(t > 0)):
        raise ValueError("epochs must be positive and the ELBO values finite")
    log_t = np.log(t)

    def sse(log_c: float) -> float:
        return _linear_part(np.exp(-math.exp(log_c) * log_t), y)[2]

    # A coarse grid first (the SSE over c can have more than one dip), then a bounded refinement around the best.
    lo, hi = (math.log(v) for v in EXPONENT_RANGE)
    grid = np.linspace(lo, hi, 41)
    best = int(np.argmin([sse(g) for g in grid]))
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    log_c = float(minimize_scalar(sse, bounds=(left, right), method="bounded", options={"xatol": 1e-6}).x)
    if sse(grid[best]) < sse(log_c):
        log_c = float(grid[best])
    c = math.exp(log_c)
    a, b, total = _linear_part(np.exp(-c * log_t), y)
    return PowerLawFit(a, b, c, math.sqrt(total / max(len(t) - 3, 1)))


@dataclass(frozen=True)
class Forecast:
    """When a learning curve reaches ``target``, with a bootstrap interval and a back-test (module docstring)."""

    target: float
    epochs_done: float
    epochs: float  # the fitted t*; inf: the fitted curve never reaches the target
    epochs_low: float
    epochs_high: float  # inf when the interval's upper end never reaches it
    asymptote: float
    asymptote_low: float
    asymptote_high: float
    level: float
    backtest_error: float | None  # fitted on the first half, predicted minus measured ELBO over the last epochs
    backtest_window: int  # how many last epochs ``backtest_error`` averages (0 when it is None)
    fit: PowerLawFit

    @property
    def identified(self) -> bool:
        """Whether the fitted curve has an asymptote at all (``PowerLawFit.identified``)."""
        return self.fit.identified

    @property
    def epochs_short(self) -> float:
        """Epochs still needed after the last one measured (0 when the fit says it is there already)."""
        return max(0.0, self.epochs - self.epochs_done)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], method="lower")
    return float(lo), float(hi)


def forecast(
    epochs: Sequence[float] | np.ndarray,
    elbo: Sequence[float] | np.ndarray,
    target: float,
    *,
    level: float = 0.9,
    resamples: int = 400,
    block: int | None = None,
    seed: int = 0,
) -> Forecast:
    """Fit ``elbo`` over ``epochs`` and say at which epoch it reaches ``target``, with a ``level`` interval.

    The interval is a percentile interval over ``resamples`` moving-block bootstrap curves: the fitted curve plus
    residuals resampled in blocks of ``block`` consecutive epochs (default ceil(n^(1/3)), Kuensch 1989), each
    refitted. ``backtest_error`` is the mean of predicted minus measured ELBO over the last ``block`` epochs (at
    most those after the first half) of the fit made on the epochs up to half the last; None when that half is too
    short to fit.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 10:
        raise ValueError(f"resamples must be at least 10, got {resamples}")
    t = np.asarray(epochs, dtype=float)
    y = np.asarray(elbo, dtype=float)
    fit = fit_power_law(t, y)
    n = len(t)
    if block is None:
        block = max(1, math.ceil(n ** (1 / 3)))
    if not 1 <= block <= n:
        raise ValueError(f"block must be between 1 and the number of epochs ({n}), got {block}")
    rng = np.random.default_rng(seed)
    fitted = fit.predict(t)
    residuals = y - fitted
    starts_max = n - block + 1
    times, asymptotes = np.empty(resamples), np.empty(resamples)
    for i in range(resamples):
        starts = rng.integers(0, starts_max, size=math.ceil(n / block))
        resampled = np.concatenate([residuals[s : s + block] for s in starts])[:n]
        refit = fit_power_law(t, fitted + resampled)
        times[i], asymptotes[i] = refit.epochs_to(target), refit.asymptote
    epochs_low, epochs_high = _percentiles(times, level)
    asymptote_low, asymptote_high = _percentiles(asymptotes, level)
    half = t <= t[-1] / 2
    window = min(block, int((~half).sum()))
    backtest = None
    if half.sum() >= MIN_POINTS and window >= 1:
        early = fit_power_law(t[half], y[half])
        backtest = float(np.mean(early.predict(t[-window:]) - y[-window:]))
    else:
        window = 0
    return Forecast(
        target=target,
        epochs_done=float(t[-1]),
        epochs=fit.epochs_to(target),
        epochs_low=epochs_low,
        epochs_high=epochs_high,
        asymptote=fit.asymptote,
        asymptote_low=asymptote_low,
        asymptote_high=asymptote_high,
        level=level,
        backtest_error=backtest,
        backtest_window=window,
        fit=fit,
    )
