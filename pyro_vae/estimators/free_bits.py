"""Free bits (Kingma, Salimans, Jozefowicz, Chen, Sutskever and Welling 2016, "Improved Variational Inference with
Inverse Autoregressive Flow", NeurIPS; the "free bits" objective of its appendix C.8) as a Pyro ELBO.

The KL term of the meanfield ELBO, sum_j E_x[KL(q(z_j|x) || p(z_j))], becomes sum_j max(lambda, E_M[KL_j]): each
latent dimension's KL averaged over the minibatch M (and the particles), floored at lambda nats. The objective per
minibatch, in Pyro's convention (a loss summed over its N examples), is

    loss = -sum_i E_q[log p(x_i|z)] + beta * N * sum_j max(lambda, (1/N) sum_i KL(q(z_j|x_i) || p(z_j)))

A group here is one latent dimension: where q and p of a latent site are both ``Independent`` over the same
dimensions (a diagonal Gaussian guide with a factorised prior), the KL of their base distributions gives one KL per
dimension; otherwise the site's whole KL is one group. Each KL is analytic (``torch.distributions.kl_divergence``,
as ``TraceMeanField_ELBO`` computes it); a pair without one is refused in one line. With lambda = 0 the value is
``TraceMeanField_ELBO``'s (the KL is >= 0). Training only: the test ELBO a run reports is the true ELBO.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions import Independent
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from torch.distributions import kl_divergence

from pyro_vae.checks import check_number
from pyro_vae.errors import UserError

NO_ANALYTIC_KL = (
    "free bits need the analytic KL(q || p) of every latent site (--elbo meanfield with a guide and prior that "
    "torch.distributions.kl_divergence pairs, e.g. the normal guide with the standard or gaussian prior)"
)


def per_group_kl(q: Any, p: Any) -> torch.Tensor:
    """KL(q || p) per group: shape batch + (dimensions) where both are ``Independent`` over the same event
    dimensions (one KL per latent dimension), else the site's batch shape (the site is one group).
    ``UserError`` (one line) when no analytic KL is registered for the pair."""
    try:
        if (
            isinstance(q, Independent)
            and isinstance(p, Independent)
            and q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims
        ):
            kl = kl_divergence(q.base_dist, p.base_dist)
            return kl.expand(q.base_dist.batch_shape) if kl.shape != q.base_dist.batch_shape else kl
        kl = kl_divergence(q, p)
    except NotImplementedError:
        raise UserError(f"{NO_ANALYTIC_KL}; no KL for {type(q).__name__} and {type(p).__name__}") from None
    return kl.expand(q.batch_shape) if torch.is_tensor(kl) and kl.shape != q.batch_shape else kl


class FreeBitsELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` with the free-bits KL floor ``free_bits`` (lambda, nats per latent dimension).

    Each latent site's scale (beta, under ``pyro_vae.beta.LatentScale``) multiplies its floored KL term."""

    def __init__(self, free_bits: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_number(free_bits, "free_bits", low=0)
        self.free_bits = float(free_bits)

    def _floored_kl(self, model_site: dict[str, Any], guide_site: dict[str, Any]) -> torch.Tensor:
        """N * sum_j max(lambda, mean over the batch of KL_j), times the site's scale; N = the batch's size."""
        q = guide_site["fn"]
        kl = per_group_kl(q, model_site["fn"])
        groups = kl.dim() - len(q.batch_shape)  # trailing dimensions: one KL per latent dimension
        batch = kl.shape[: kl.dim() - groups]
        if guide_site["mask"] is not None:  # a masked-out example contributes no KL (as in TraceMeanField_ELBO)
            mask = torch.as_tensor(guide_site["mask"], device=kl.device)
            kl = kl * mask.reshape(mask.shape + (1,) * groups)
        mean = kl.reshape(batch.numel(), -1).mean(0)  # E_M[KL_j], averaged over examples (and particles)
        floored = torch.clamp(mean, min=self.free_bits).sum() * batch.numel()
        return scale_and_mask(floored, scale=guide_site["scale"])

    def _differentiable_loss_particle(self, model_trace: Any, guide_trace: Any) -> tuple[Any, torch.Tensor]:
        elbo_particle: Any = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo_particle = elbo_particle + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            elbo_particle = elbo_particle - self._floored_kl(model_site, guide_site)
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                raise UserError(f"{NO_ANALYTIC_KL}; the guide's site {name!r} has no model site")
        loss = -(elbo_particle.detach() if torch._C._get_tracing_state() else torch_item(elbo_particle))
        return loss, -elbo_particle
