"""Held-out evaluation of a trained VAE: ELBO, importance-sampled log p(x), KL per latent dimension, active units.

- log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x) (the IWAE_K bound of Burda et al. 2015,
  which converges to log p(x) as K grows), one value per example.
- The ELBO per example is estimated from the same K samples, (1/K) sum_k log w_k, so gap = log p(x) - ELBO
  is >= 0 for every example.
- Active units (Burda et al. 2015): latent dimension j is active when Var_x(E_q[z_j | x]) > 0.01.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Independent, kl_divergence

from pyro_vae.estimators.log_weights import guess_plate_nesting, per_example_log_weights

#: Default bound on (particles x examples) rows pushed through the decoder at once.
MAX_ROWS = 2**15

ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def importance_sample_stats(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int = 5000,
    max_rows: int = MAX_ROWS,
) -> tuple[Tensor, Tensor]:
    """(ELBO_i, log p(x_i)) per example from the same ``num_samples`` importance samples of q(z | x_i).

    ELBO_i = (1/K) sum_k log w_ik and log p(x_i) ~= logsumexp_k log w_ik - log K. Memory stays bounded:
    at most ``max_rows`` (particle, example) pairs go through the model at once.
    """
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("no examples to evaluate")
    block = min(n, max_rows)
    chunk = max(1, min(num_samples, max_rows // block))
    nesting = guess_plate_nesting(model, guide, (x[:block],), {})
    elbos, log_ps = [], []
    for start in range(0, n, block):
        xb = x[start : start + block]
        lse = torch.full((xb.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        total = torch.zeros(xb.shape[0], dtype=x.dtype, device=x.device)
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            log_w = per_example_log_weights(model, guide, xb, num_particles=k, plate_nesting=nesting)
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
            total += log_w.sum(0)
            done += k
        elbos.append(total / num_samples)
        log_ps.append(lse - math.log(num_samples))
    return torch.cat(elbos), torch.cat(log_ps)


def log_likelihood(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int = 5000,
    max_rows: int = MAX_ROWS,
) -> Tensor:
    """Importance-sampled log p(x_i) for each row of x, with the guide as proposal (Burda et al. 2015).

    Chunked over particles and examples so memory stays bounded for large ``num_samples``.
    """
    return importance_sample_stats(model, guide, x, num_samples, max_rows)[1]


def _latent_sites(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> list[tuple[str, Any, Any]]:
    """(name, q, p) for every latent site, from one guide run and the model replayed on it."""
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return [
        (name, site["fn"], model_trace.nodes[name]["fn"])
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def _factorised(d: Any) -> bool:
    return isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1


@torch.no_grad()
def kl_per_dimension(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, num_samples: int = 100
) -> tuple[Tensor | None, float]:
    """(KL_j averaged over the examples, shape (J,), or None; total KL averaged over the examples).

    KL_j = KL(q(z_j | x) || p(z_j)) needs q and p to factorise over dimensions (Independent of univariate
    distributions): analytic where ``kl_divergence`` is registered, otherwise a ``num_samples`` Monte Carlo
    average. For a prior that does not factorise (a mixture, the VampPrior) there is no per-dimension KL;
    the total is then E_q[log q(z|x) - log p(z)] by Monte Carlo.
    """
    per_dim: list[Tensor] = []
    total = 0.0
    factorised = True
    for _, q, p in _latent_sites(model, guide, x):
        if _factorised(q) and _factorised(p):
            try:
                kl = kl_divergence(q.base_dist, p.base_dist)
            except NotImplementedError:
                z = q.base_dist.rsample((num_samples,))
                kl = (q.base_dist.log_prob(z) - p.base_dist.log_prob(z)).mean(0)
            kl = kl.reshape(x.shape[0], -1).mean(0)
            per_dim.append(kl)
            total += float(kl.sum())
        else:
            factorised = False
            z = q.rsample((num_samples,))
            total += float((q.log_prob(z) - p.log_prob(z)).mean())
    return (torch.cat(per_dim) if factorised and per_dim else None), total


@torch.no_grad()
def posterior_means(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor) -> Tensor:
    """E_q[z | x] for every example, all latent sites concatenated: shape (N, total latent dimension)."""
    return torch.cat([q.mean.reshape(x.shape[0], -1) for _, q, _ in _latent_sites(model, guide, x)], dim=-1)


def active_units(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD
) -> tuple[int, Tensor]:
    """(number of active units, Var_x(E_q[z_j | x]) per dimension); active means variance > ``threshold``."""
    variances = posterior_means(model, guide, x).var(dim=0, unbiased=False)
    return int((variances > threshold).sum()), variances


@dataclass
class Evaluation:
    """Per-example averages in nats over ``num_examples`` held-out examples."""

    elbo: float
    log_likelihood: float
    gap: float
    kl_per_dimension: list[float] | None
    kl_total: float
    active_units: int
    posterior_mean_variance: list[float]
    num_samples: int
    num_examples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    x: Tensor,
    num_samples: int = 5000,
    max_rows: int = MAX_ROWS,
) -> Evaluation:
    """ELBO and IS log-likelihood per example (and their gap), KL per latent dimension and active units."""
    elbo, log_p = importance_sample_stats(model, guide, x, num_samples, max_rows)
    kl_dims, kl_total = kl_per_dimension(model, guide, x)
    count, variances = active_units(model, guide, x)
    return Evaluation(
        elbo=float(elbo.mean()),
        log_likelihood=float(log_p.mean()),
        gap=float((log_p - elbo).mean()),
        kl_per_dimension=None if kl_dims is None else [float(v) for v in kl_dims],
        kl_total=kl_total,
        active_units=count,
        posterior_mean_variance=[float(v) for v in variances],
        num_samples=num_samples,
        num_examples=int(x.shape[0]),
    )
