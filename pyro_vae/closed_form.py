"""The VAE loss in closed form, written from Odaibo, "Tutorial: Deriving the Standard VAE Loss
Function", and the blog post "Why we need KL divergence loss in VAEs".

These functions are the project's hand-derived truth: the tests compare Pyro's ELBOs against them.
They are deliberately written out from the equations rather than calling ``torch.distributions``.
Equation numbers refer to the tutorial. (The tutorial writes the Gaussian densities in x where it
means z, and indexes sigma with i where j is meant in eqs. 42-43; the code follows the mathematics.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu_q: Tensor, sigma_q: Tensor, mu_p: Tensor | float, sigma_p: Tensor | float) -> Tensor:
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)), elementwise.

    The general-prior result on the line just before eq. 40 (negated there):
    KL = log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2.
    """
    mu_p = torch.as_tensor(mu_p, dtype=mu_q.dtype, device=mu_q.device)
    sigma_p = torch.as_tensor(sigma_p, dtype=mu_q.dtype, device=mu_q.device)
    return torch.log(sigma_p / sigma_q) + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2 * sigma_p**2) - 0.5


def standard_normal_kl(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag exp(log_var)) || N(0, I)), summed over the last (latent) dimension j.

    Eq. 40 in the blog's log-variance form: KL = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    """
    return -0.5 * torch.sum(1 + log_var - mu**2 - log_var.exp(), dim=-1)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, sigma: Tensor | float = 1.0) -> Tensor:
    """log N(x; mean, sigma^2 I) over the last dimension (k = x.shape[-1]), with every constant:

    -1/2 [k log 2 pi + log det(Sigma) + (x - mean)^T Sigma^-1 (x - mean)], with Sigma = sigma^2 I, i.e.
    -1/2 [k log 2 pi + 2 k log sigma + ||x - mean||^2 / sigma^2].

    Relation to the MSE (the blog's reconstruction loss): with sigma = 1,
    -log p(x|z) = 1/2 ||x - mean||^2 + k/2 log 2 pi = k/2 * MSE + const, so minimising the MSE maximises
    this log-likelihood; see ``mse_from_gaussian_log_likelihood``.
    """
    k = x.shape[-1]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    sq = torch.sum((x - mean) ** 2, dim=-1)
    return -0.5 * (k * LOG_2PI + 2 * k * torch.log(sigma) + sq / sigma**2)


def mse_from_gaussian_log_likelihood(log_lik: Tensor, k: int, sigma: float = 1.0) -> Tensor:
    """Invert ``gaussian_log_likelihood`` to the per-pixel mean squared error ||x - mean||^2 / k."""
    return (-2 * log_lik - k * LOG_2PI - 2 * k * math.log(sigma)) * sigma**2 / k


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """sum_d [x_d log p_d + (1 - x_d) log(1 - p_d)] with p = sigmoid(logits), over the last dimension.

    log p = logsigmoid(l) and log(1 - p) = logsigmoid(-l), which stay finite for large ``|l|``.
    """
    return torch.sum(x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits), dim=-1)


def discretized_logistic_log_likelihood(x: Tensor, loc: Tensor, scale: Tensor | float, bins: int = 256) -> Tensor:
    """sum_d log P(x_d) over the last dimension, for x_d in {k / (B - 1)} and a logistic discretised to those values
    (Kingma et al. 2016), written out with the logistic CDF sigma:

    P(x) = sigma((x + delta/2 - mu) / s) - sigma((x - delta/2 - mu) / s), delta = 1 / (B - 1), except at the edges,
    which take the tails: P(0) = sigma((delta/2 - mu) / s) and P(1) = 1 - sigma((1 - delta/2 - mu) / s).
    """
    delta = 1.0 / (bins - 1)
    upper = torch.sigmoid((x + delta / 2 - loc) / scale)
    lower = torch.sigmoid((x - delta / 2 - loc) / scale)
    p = torch.where(x < delta / 2, upper, torch.where(x > 1 - delta / 2, 1 - lower, upper - lower))
    return torch.log(p).sum(-1)


def batch_loss(kl: Tensor, log_lik: Tensor) -> Tensor:
    """The batch loss of eq. 43 with L samples per datum: sum_i [KL_i - (1/L) sum_l log p(x_i | z_il)].

    Args:
        kl: KL(q(z|x_i) || p(z)) per datum, shape (N,), already summed over the latent index j.
        log_lik: log p(x_i | z_il), shape (L, N) (or (N,) for L = 1).
    """
    if log_lik.dim() == kl.dim():
        log_lik = log_lik.unsqueeze(0)
    return torch.sum(kl - log_lik.mean(0))
