"""Reweighted wake-sleep (Bornschein & Bengio 2015), wake updates, with per-example importance weights.

Value: the K-sample IWAE bound log (1/K) sum_k w_k per example (Burda et al. 2015), z_k ~ q(z | x).
Gradient: model (wake-theta) sum_k w~_k grad_theta log p(x, z_k), unbiased for the gradient of E[IWAE_K] with respect
to the model's parameters (z_k does not depend on them); guide (wake-phi) sum_k w~_k grad_phi log q(z_k | x), the
self-normalised estimate of -grad_phi KL(p(z | x) || q(z | x)): biased for finite K, consistent as K grows, and not
the gradient of any bound (RWS trains the guide on a different objective from the model).

Why ours rather than ``pyro.infer.ReweightedWakeSleep``: Pyro's sums the log weights over the data plate, so its
K weights are of the whole batch jointly (one K-sample bound of log p(x_1..x_N), far looser than the sum of the
per-example bounds), and its ``loss`` returns a pair of losses that a training step cannot read as one number.
Sleep-phi (training q on samples of the model) is not offered: the wake-phi update is the one the paper recommends.
"""

from __future__ import annotations

import math

import torch

from pyro_vae.estimators._score import LogDensityScoreELBO


class ReweightedWakeSleep(LogDensityScoreELBO):
    """Estimates the K-sample IWAE bound, summed over the batch; wake-theta and wake-phi gradients (module doc)."""

    min_particles = 1

    def __init__(self, num_particles: int = 10, max_plate_nesting: float = float("inf")) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def _loss_and_surrogate(self, log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lw = (log_p - log_q).detach()
        log_total = torch.logsumexp(lw, 0, keepdim=True)
        bound = log_total.squeeze(0) - math.log(lw.shape[0])
        weights = torch.exp(lw - log_total)
        # log p carries only model gradients and log q only guide gradients (z is detached): one surrogate gives
        # wake-theta to the model and wake-phi to the guide.
        return -bound.sum(), -(weights * (log_p + log_q)).sum()
