"""The test-set ELBO per example, split into its reconstruction and KL terms (eq. 28):

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)),

in nats per example, always at beta = 1 (the true ELBO, whatever beta training used). The KL is the
analytic ``torch.distributions.kl_divergence(q, p)`` where one is registered for the (guide, prior)
pair (eq. 40 for N(0, I)), and the Monte Carlo estimate log q(z|x) - log p(z) at the same draws
otherwise (what ``TraceMeanField_ELBO`` does too).

Any Pyro model and guide work (a user's own pair, ``pyro_vae.pairs``): without the ``VAEModel`` methods the terms
are read from traces of the guide and of the model replayed on it, every latent site and every observed site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import kl_divergence

from pyro_vae.kl_check import ANALYTIC, MONTE_CARLO

#: Seed of the evaluation draws: the same z-noise every epoch, so test-ELBO curves are not jittered by it.
EVAL_SEED = 20240


@dataclass
class ELBOTerms:
    """Per-example averages over a data set, in nats.

    elbo = -(recon + kl); ``recon`` = -E_q[log p(x|z)] (the reconstruction loss), ``kl`` = KL(q || p).
    """

    elbo: float
    recon: float
    kl: float
    kl_kind: str

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@torch.no_grad()
def elbo_terms(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    x: Tensor,
    num_samples: int = 1,
    seed: int | None = EVAL_SEED,
    batch_size: int = 2048,
) -> ELBOTerms:
    """Estimate the ELBO per example of ``x`` (N, D) and its two terms, with ``num_samples`` z per example.

    The z are drawn as ``guide.posterior(x_b).sample((num_samples,))`` for consecutive blocks ``x_b`` of
    ``batch_size`` rows, after ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (so the
    caller's random stream is untouched); ``seed=None`` draws from the current stream instead.
    ``model`` is a ``VAEModel`` (``prior()``, ``likelihood_dist(z)``) and ``guide`` a guide with ``posterior(x)``;
    any other Pyro pair is read from traces, one per sample and block (``trace_terms``).
    """
    if x.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if not all(hasattr(f, m) for f, m in ((model, "prior"), (model, "likelihood_dist"), (guide, "posterior"))):
            return trace_terms(model, guide, x, num_samples, batch_size)
        recon_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        kl_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        kind = ANALYTIC
        prior = model.prior()
        for xb in x.split(batch_size):
            q = guide.posterior(xb)
            z = q.sample((num_samples,))  # (S, n, z_dim)
            log_lik = model.likelihood_dist(z).log_prob(xb)  # (S, n)
            try:
                kl = kl_divergence(q, prior)
            except NotImplementedError:
                kind = MONTE_CARLO
                kl = (q.log_prob(z) - prior.log_prob(z)).mean(0)
            recon_sum -= log_lik.mean(0).sum().double()
            kl_sum += kl.sum().double()
    n = x.shape[0]
    recon, kl_value = (recon_sum / n).item(), (kl_sum / n).item()
    return ELBOTerms(elbo=-(recon + kl_value), recon=recon, kl=kl_value, kl_kind=kind)


def trace_terms(
    model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, num_samples: int, batch_size: int
) -> ELBOTerms:
    """``ELBOTerms`` of any Pyro pair from traces: recon = -sum of the observed sites' log p, KL = the sum over latent
    sites of ``kl_divergence(q, p)`` where registered, else log q(z) - log p(z) at the traced z."""
    recon_sum, kl_sum, kind = 0.0, 0.0, ANALYTIC
    for _ in range(num_samples):
        for xb in x.split(batch_size):
            guide_trace = poutine.trace(guide).get_trace(xb)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(xb)
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                if site["is_observed"]:
                    recon_sum -= float(site["fn"].log_prob(site["value"]).double().sum())
                    continue
                q, z = guide_trace.nodes[name]["fn"], site["value"]
                try:
                    kl = kl_divergence(q, site["fn"])
                except NotImplementedError:
                    kind, kl = MONTE_CARLO, q.log_prob(z) - site["fn"].log_prob(z)
                kl_sum += float(kl.double().sum())
    recon, kl_value = recon_sum / (num_samples * x.shape[0]), kl_sum / (num_samples * x.shape[0])
    return ELBOTerms(elbo=-(recon + kl_value), recon=recon, kl=kl_value, kl_kind=kind)


@torch.no_grad()
def latent_means(guide: Callable[..., Any], x: Tensor, batch_size: int = 4096) -> Tensor:
    """The encoder means E_q[z|x] (N, z_dim), on the CPU: ``guide.posterior(x).mean``, or for a guide without
    ``posterior`` the means of its latent sites' distributions (all sites, concatenated)."""
    if hasattr(guide, "posterior"):
        return torch.cat([guide.posterior(xb).mean for xb in x.split(batch_size)]).cpu()
    means = []
    for xb in x.split(batch_size):
        trace = poutine.trace(guide).get_trace(xb)
        sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
        means.append(torch.cat([s["fn"].mean.reshape(xb.shape[0], -1) for s in sites if not s["is_observed"]], -1))
    return torch.cat(means).cpu()


@torch.no_grad()
def reconstruction_error(model: torch.nn.Module, guide: torch.nn.Module, x: Tensor, batch_size: int = 4096) -> float:
    """The blog's reconstruction loss: (1/N) sum_i ||x_i - x_hat_i||^2, x_hat_i = E[x | z = E_q[z|x_i]].

    Summed over pixels, averaged over examples; ``x`` is the data as the model sees it (for a Bernoulli
    likelihood, the fixed binarisation of the test set, ``VAEData.test_x_eval``).
    """
    total = 0.0
    for xb in x.split(batch_size):
        x_hat = model.decode_mean(latent_means(guide, xb).to(xb.device))
        total += ((xb - x_hat) ** 2).sum().item()
    return total / x.shape[0]
