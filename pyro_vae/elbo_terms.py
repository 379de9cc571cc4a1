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

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Independent, kl_divergence

from pyro_vae.kl_check import ANALYTIC, MONTE_CARLO, closed_form_kl_sites

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


@dataclass
class ELBOSums:
    """Sums over examples, in nats: ``recon`` of -E_q[log p(x|z)], ``kl`` of KL(q || p), over ``n`` examples;
    ``monte_carlo`` when some KL was estimated rather than analytic. Sums of disjoint blocks add (``+``), which is
    how a test set evaluated in parts, e.g. by several ranks (``pyro_vae.distributed``), is put together."""

    recon: float = 0.0
    kl: float = 0.0
    n: int = 0
    monte_carlo: bool = False

    def __add__(self, other: ELBOSums) -> ELBOSums:
        return ELBOSums(
            self.recon + other.recon, self.kl + other.kl, self.n + other.n, self.monte_carlo or other.monte_carlo
        )

    def terms(self) -> ELBOTerms:
        if self.n == 0:
            raise ValueError("no examples to evaluate")
        recon, kl = self.recon / self.n, self.kl / self.n
        return ELBOTerms(elbo=-(recon + kl), recon=recon, kl=kl, kl_kind=MONTE_CARLO if self.monte_carlo else ANALYTIC)


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
    ``batch_size`` rows, block b after ``torch.manual_seed(seed + b)`` inside ``torch.random.fork_rng`` (so the
    caller's random stream is untouched, and each block's draws are the same whoever evaluates it: see
    ``elbo_sums``); ``seed=None`` draws from the current stream instead.
    ``model`` is a ``VAEModel`` (``prior()``, ``likelihood_dist(z)``) and ``guide`` a guide with ``posterior(x)``;
    any other Pyro pair is read from traces, one per sample and block (``trace_terms``).
    """
    if x.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    return elbo_sums(model, guide, x, num_samples, seed, batch_size).terms()


@torch.no_grad()
def elbo_sums(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    x: Tensor,
    num_samples: int = 1,
    seed: int | None = EVAL_SEED,
    batch_size: int = 2048,
    blocks: Iterable[int] | None = None,
) -> ELBOSums:
    """The ``ELBOSums`` of the blocks ``blocks`` (indices into ``x.split(batch_size)``; all by default), each
    block b drawn after ``torch.manual_seed(seed + b)``: any subset of blocks gives the same sums as the same
    blocks of a whole-set evaluation, and the sums of disjoint subsets add up to it."""
    devices = [x.device] if x.device.type == "cuda" else []
    parts = x.split(batch_size)
    total = ELBOSums()
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        for b in range(len(parts)) if blocks is None else blocks:
            if seed is not None:
                _manual_seed(seed + b, x.device)
            total = total + _block_sums(model, guide, parts[b], num_samples)
    return total


def _manual_seed(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for the generators a draw on ``device`` reads: the CPU's, and CUDA's for CUDA.

    ``torch.manual_seed`` also queues lazy seeds for CUDA, XPU and MTIA, formatting the Python stack for each
    (~0.15 ms a call, measured; the trainer evaluates after every epoch). The draws are the same.
    """
    if device.type not in ("cpu", "cuda"):
        torch.manual_seed(seed)
        return
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def _block_sums(model: torch.nn.Module, guide: torch.nn.Module, xb: Tensor, num_samples: int) -> ELBOSums:
    exact = getattr(model, "elbo_terms_exact", None)
    if exact is not None:  # a discrete latent summed exactly by the model itself (M2's y)
        recon, kl = exact(guide, xb, num_samples)
        return ELBOSums(float(recon.sum().double()), float(kl.sum().double()), xb.shape[0], False)
    if not all(hasattr(f, m) for f, m in ((model, "prior"), (model, "likelihood_dist"), (guide, "posterior"))):
        return trace_terms(model, guide, xb, num_samples)
    q, prior = guide.posterior(xb), model.prior()
    z = q.sample((num_samples,))  # (S, n, z_dim)
    log_lik = model.likelihood_dist(z).log_prob(xb)  # (S, n)
    monte_carlo = False
    try:
        kl = kl_divergence(q, prior)
    except NotImplementedError:
        monte_carlo = True
        kl = (q.log_prob(z) - prior.log_prob(z)).mean(0)
    # Summed in the tensor's dtype, then widened: the arithmetic the recorded metrics of earlier runs used.
    recon = -float(log_lik.mean(0).sum().double())
    return ELBOSums(recon, float(kl.sum().double()), xb.shape[0], monte_carlo)


def trace_terms(model: Callable[..., Any], guide: Callable[..., Any], x: Tensor, num_samples: int) -> ELBOSums:
    """``ELBOSums`` of any Pyro pair on the block ``x``, from traces (``num_samples`` per example, averaged): recon =
    -sum of the observed sites' log p, KL = the sum over latent sites of ``kl_divergence(q, p)`` where registered
    and valid at the traced values of the other sites (``closed_form_kl_sites``: not for a site the guide samples
    before one of its model parents), else log q(z) - log p(z) at the traced z."""
    recon_sum, kl_sum, monte_carlo = 0.0, 0.0, False
    for _ in range(num_samples):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        closed_form = closed_form_kl_sites(model_trace, guide_trace)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                recon_sum -= float(site["fn"].log_prob(site["value"]).double().sum())
                continue
            q, z = guide_trace.nodes[name]["fn"], site["value"]
            kl = None
            if name in closed_form:  # elsewhere the closed form would be biased; the Monte Carlo term is not
                try:
                    kl = kl_divergence(q, site["fn"])
                except NotImplementedError:  # no KL registered for this pair
                    kl = None
            if kl is None:
                monte_carlo, kl = True, q.log_prob(z) - site["fn"].log_prob(z)
            kl_sum += float(kl.double().sum())
    return ELBOSums(recon_sum / num_samples, kl_sum / num_samples, x.shape[0], monte_carlo)


@torch.no_grad()
def latent_means(guide: Callable[..., Any], x: Tensor, batch_size: int = 4096) -> Tensor:
    """The encoder means E_q[z|x] (N, z_dim), on the CPU: ``guide.posterior(x).mean``; for a hierarchical guide
    ``guide.code_mean(x)``, the bottom layer z_1 that the decoder takes; for a guide without either, the means of
    its latent sites' distributions (all sites, concatenated)."""
    if hasattr(guide, "code_mean"):
        return torch.cat([guide.code_mean(xb) for xb in x.split(batch_size)]).cpu()
    if hasattr(guide, "posterior"):
        return torch.cat([guide.posterior(xb).mean for xb in x.split(batch_size)]).cpu()
    means = []
    for xb in x.split(batch_size):
        trace = poutine.trace(guide).get_trace(xb)
        sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
        means.append(torch.cat([s["fn"].mean.reshape(xb.shape[0], -1) for s in sites if not s["is_observed"]], -1))
    return torch.cat(means).cpu()


def is_discrete(q: Any) -> bool:
    """Whether the distribution ``q`` samples discrete values (its support is discrete: Bernoulli, one-hot, ...)."""
    return bool(getattr(getattr(q, "support", None), "is_discrete", False))


def representative_code(q: Any) -> Tensor:
    """The z that stands for q(z|x) when decoding one reconstruction: E_q[z] for a continuous q; for a discrete q
    its most probable value (the mean of a Bernoulli is a probability the decoder never sees as input)."""
    if not is_discrete(q):
        return q.mean
    base = q.base_dist if isinstance(q, Independent) else q
    if isinstance(base, torch.distributions.Bernoulli):
        return (q.mean > 0.5).to(q.mean.dtype)  # ties (p = 1/2) go to 0; the mode is then not unique anyway
    return q.mode


def latent_codes(guide: Callable[..., Any], x: Tensor, batch_size: int = 4096) -> Tensor:
    """``representative_code`` of q(z|x) for each row of x (N, z_dim), on the CPU: E_q[z|x] for a continuous guide,
    the most probable z for a discrete one (``guide.posterior``; a guide without it: ``latent_means``)."""
    if not hasattr(guide, "posterior"):
        return latent_means(guide, x, batch_size)
    with torch.no_grad():
        return torch.cat([representative_code(guide.posterior(xb)) for xb in x.split(batch_size)]).cpu()


@torch.no_grad()
def reconstruction_error(model: torch.nn.Module, guide: torch.nn.Module, x: Tensor, batch_size: int = 4096) -> float:
    """The blog's reconstruction loss: (1/N) sum_i ||x_i - x_hat_i||^2, x_hat_i = E[x | z = E_q[z|x_i]] (for a
    discrete guide, z = the most probable code: ``latent_codes``).

    Summed over pixels, averaged over examples; ``x`` is the data as the model sees it (for a Bernoulli
    likelihood, the fixed binarisation of the test set, ``VAEData.test_x_eval``).
    """
    total = 0.0
    for xb in x.split(batch_size):
        x_hat = model.decode_mean(latent_codes(guide, xb).to(xb.device))
        total += ((xb - x_hat) ** 2).sum().item()
    return total / x.shape[0]
