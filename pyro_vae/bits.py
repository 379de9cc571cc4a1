"""Bits per dimension: a log-likelihood in nats per example as base-2 bits per pixel value, the unit of image
likelihoods (Theis, van den Oord & Bethge 2016).

For a likelihood that is a probability of the values the pixels take (the discretised logistic, on 8-bit images),

.. math::  \\text{bits/dim} = -\\frac{\\log P(x)}{D \\ln 2}.

For a continuous density p on pixels scaled to [0, 1] (the Gaussian, the continuous Bernoulli), the convention
used here is the one of Theis et al.: a pixel that takes L levels x = k / (L - 1) stands for a bin of width
delta = 1 / (L - 1) (1/255 for 8-bit data), and P(x) ~= p(x) delta^D, so

.. math::  \\text{bits/dim} = \\frac{-\\log p(x) - D \\log \\delta}{D \\ln 2}
           = -\\frac{\\log p(x)}{D \\ln 2} + \\log_2 (L - 1).

(Data scaled by 1/256 instead, as with uniform dequantisation, would add log2(256/255) = 0.0056 bits.) This turns a
density into a probability only approximately (exactly for a density constant on each bin), so bits per dimension
of a continuous and of a discrete likelihood compare only roughly. For binary data (a Bernoulli likelihood) the
log-likelihood is reported in nats only, as is customary for binarised MNIST.
"""

from __future__ import annotations

import math
from typing import Any

from pyro_vae.checks import check_number

LN2 = math.log(2.0)


def bits_per_dim(log_p: float, num_dims: int, levels: int | None = None) -> float:
    """-log2 P(x) / D from ``log_p`` (nats per example) over ``num_dims`` values per example.

    ``levels=None``: ``log_p`` is the log of a probability (a discrete likelihood). ``levels=L``: ``log_p`` is the
    log of a density on [0, 1]-scaled data with L levels, and the bin width 1 / (L - 1) is accounted for.
    """
    check_number(num_dims, "num_dims", integer=True, low=1)
    if levels is not None:
        check_number(levels, "levels", integer=True, low=2)
    width_term = 0.0 if levels is None else num_dims * math.log(levels - 1)
    return (-log_p + width_term) / (num_dims * LN2)


def bits_per_dim_of(likelihood: Any, levels: int | None, log_p: float, num_dims: int) -> float | None:
    """Bits per dimension for a model with ``likelihood`` on data with ``levels`` pixel levels, or None where they
    are not reported: a binary likelihood (Bernoulli), or a density on data whose levels are unknown."""
    if getattr(likelihood, "binary_data", False):
        return None
    if getattr(likelihood, "discrete", False):
        return bits_per_dim(log_p, num_dims)
    return None if levels is None else bits_per_dim(log_p, num_dims, levels)
