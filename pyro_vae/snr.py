"""The gradient signal-to-noise ratio ``|E g| / std(g)`` averaged over parameter elements (Rainforth et al.
2018), its noise floor for R draws, and its bias-corrected value with a bootstrap interval.

References:
    - [1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh. Tighter Variational
      Bounds are Not Necessarily Better. ICML 2018.
    - [2] B. Efron, R. J. Tibshirani. An Introduction to the Bootstrap. 1993 (the basic interval, ch. 13).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Bootstrap resamples behind the SNR intervals.
BOOTSTRAP_RESAMPLES = 200


def gradient_variance_and_snr(grads: Tensor) -> tuple[float, float]:
    """(mean over elements of Var(g), mean over elements of ``|E g| / std(g)``) for draws ``grads`` of shape (R, P).

    Elements whose gradient never varies (std = 0, e.g. parameters the loss does not touch) are left out
    of the SNR average; it is NaN when every element is constant.
    """
    var = grads.var(dim=0, unbiased=True)
    std = var.sqrt()
    varying = std > 0
    snr = (grads.mean(0).abs()[varying] / std[varying]).mean() if varying.any() else torch.tensor(math.nan)
    return float(var.mean()), float(snr)


def snr_floor(num_draws: int) -> float:
    """``E[|mean| / std]`` of R draws of a zero-mean Gaussian gradient element, for large R: sqrt(2 / (pi R))."""
    return math.sqrt(2.0 / (math.pi * num_draws))


def snr_bootstrap(
    grads: Tensor, num_resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(bias-corrected SNR, low, high): the element-averaged SNR corrected for its bias by the bootstrap, with its
    basic bootstrap interval, resampling the R draws (rows of ``grads``); all three NaN when R < 2.

    With s the plug-in SNR and s* its value on a resample, the basic interval is (2 s - q_high(s*), 2 s -
    q_low(s*)) (Efron & Tibshirani 1993, ch. 13), and the corrected estimate 2 s - median(s*) lies in it by
    construction (the printed estimate and its interval agree); all three are clipped at 0, as an SNR is.

    Why corrected: the plug-in SNR is biased upwards (``|mean|`` of noisy draws), most where it is near the noise
    floor, and averaging over many elements makes the bias larger than the spread, so the plug-in value lies
    above its own basic interval and a percentile interval misses the true value (measured: 54% coverage at SNR
    2 over 50 elements, R = 100). The basic interval corrects the bias to first order (measured coverage of the
    nominal 95%: 93% at SNR 0.5, 90% at SNR 2 over 1000 experiments; 88% at SNR 0.1, near the floor).
    Each resample's means and variances are weighted sums of the draws, computed for all resamples at once as
    matrix products, in chunks of elements.
    """
    r, p = grads.shape
    if r < 2 or p == 0 or num_resamples < 1:
        return math.nan, math.nan, math.nan
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(num_resamples, r, dtype=grads.dtype)
    counts.scatter_add_(
        1, torch.randint(r, (num_resamples, r), generator=gen), torch.ones(num_resamples, r, dtype=grads.dtype)
    )
    weights = counts / r
    varying = grads.std(0) > 0
    g = grads[:, varying]
    total = torch.zeros(num_resamples, dtype=grads.dtype)
    number = torch.zeros(num_resamples, dtype=grads.dtype)
    chunk = max(1, 2**22 // num_resamples)
    for start in range(0, g.shape[1], chunk):
        part = g[:, start : start + chunk]
        mean = weights @ part
        var = ((weights @ part**2) - mean**2).clamp(min=0) * r / (r - 1)
        ok = var > 0
        total += torch.where(ok, mean.abs() / var.sqrt().clamp(min=1e-300), 0.0).sum(1)
        number += ok.sum(1)
    snr = total / number
    snr = snr[torch.isfinite(snr)]
    if snr.numel() == 0:
        return math.nan, math.nan, math.nan
    estimate = gradient_variance_and_snr(grads)[1]
    tail = (1 - level) / 2
    quantiles = torch.tensor([tail, 0.5, 1 - tail], dtype=torch.float64)
    low, median, high = (float(q) for q in torch.quantile(snr.to(torch.float64), quantiles))
    return max(0.0, 2 * estimate - median), max(0.0, 2 * estimate - high), max(0.0, 2 * estimate - low)


def snr_bootstrap_interval(
    grads: Tensor, num_resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The basic bootstrap interval of the element-averaged SNR (``snr_bootstrap`` without the estimate)."""
    return snr_bootstrap(grads, num_resamples, level, seed)[1:]
