"""DisARM (Dong, Mnih & Tucker 2020): antithetic, Rao-Blackwellised ARM (Yin & Zhou 2019) for Bernoulli latents.

For a guide site z ~ Bernoulli(sigmoid(alpha)) (any shape, ``to_event`` or not) and f(z) = log p(x, z) - log q(z | x):
draw u ~ U(0, 1), b = 1[u < sigmoid(alpha)] and its antithetic partner b~ = 1[1 - u < sigmoid(alpha)], and estimate
d E[f] / d alpha_i by

    g_i = 1/2 (f(b) - f(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigmoid(``|alpha_i|``)        (Dong et al. 2020, eq. 7)

then chain it to the guide's parameters through alpha. ``num_particles`` = the number of antithetic pairs per example.

Value: the mean of f over the 2K draws, an unbiased estimate of the ELBO (b and b~ are each distributed as q).
Gradient: unbiased for the ELBO's gradient with respect to guide (DisARM; the zero-mean term E[grad_phi log q] is
dropped, as in the paper) and model (the mean of grad_theta log p(x, z) over the 2K draws) parameters. Needs every
latent of the guide to be Bernoulli with logits that do not depend on other latents (one stochastic layer: the
estimator is for independent Bernoulli dimensions given x); it checks both at every call and says so in one line.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.poutine.messenger import Messenger

from pyro_vae.errors import UserError
from pyro_vae.estimators._score import (
    ScoreELBO,
    base_distribution,
    is_latent,
    one_line_errors,
    per_example_log_p_and_q,
    score_traces,
)


class AntitheticBernoulli(Messenger):
    """Sets each Bernoulli latent to b (``flip`` False) or its antithetic b~ (``flip`` True) from shared noise u,
    recording the logits alpha of each site."""

    def __init__(self, noise: dict[str, torch.Tensor], flip: bool) -> None:
        super().__init__()
        self.noise = noise
        self.flip = flip
        self.logits: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not is_latent(msg):
            return
        base, _ = base_distribution(msg["fn"])
        if not isinstance(base, torch.distributions.Bernoulli):
            raise UserError(
                f"disarm needs Bernoulli latents; guide site {msg['name']!r} is {type(base).__name__} (use reinforce, "
                "vimco or rws)"
            )
        logits = base.logits.expand(msg["fn"].shape())
        u = self.noise.setdefault(msg["name"], torch.rand(logits.shape, dtype=logits.dtype, device=logits.device))
        probs = torch.sigmoid(logits.detach())
        msg["value"] = ((1 - u if self.flip else u) < probs).to(logits.dtype)
        msg["done"] = True
        self.logits[msg["name"]] = logits


class DisARMELBO(ScoreELBO):
    """Estimates the ELBO (mean over K antithetic pairs), summed over the batch; the DisARM gradient (module doc).

    A direct ``ScoreELBO``: its two antithetic passes (shared noise u, values b and b~) do not fit one pass's
    (log p, log q), so it implements ``loss_and_surrogate_loss`` itself."""

    def loss_and_surrogate_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, surrogate loss): minus the mean of f over the 2K draws, and the DisARM surrogate (module doc)."""
        nesting = self._nesting(model, guide, args, kwargs)
        noise: dict[str, torch.Tensor] = {}
        passes = []
        for flip in (False, True):
            sampler = AntitheticBernoulli(noise, flip)
            with one_line_errors():
                traces = score_traces(model, guide, self.num_particles, nesting, args, kwargs, sampler=sampler)
            log_p, log_q = per_example_log_p_and_q(*traces)
            passes.append((log_p, log_q, sampler.logits, traces[1]))
        (log_p, log_q, logits, guide_trace), (log_p2, log_q2, logits2, _) = passes
        for name, alpha in logits.items():
            if not torch.equal(alpha.detach(), logits2[name].detach()):
                raise UserError(
                    f"disarm needs one layer of Bernoulli latents: the logits of guide site {name!r} depend on another "
                    "latent (use reinforce, vimco or rws)"
                )
        f1, f2 = (log_p - log_q).detach(), (log_p2 - log_q2).detach()
        half_difference = 0.5 * (f1 - f2)  # (K, N)
        surrogate = 0.5 * (log_p + log_p2).sum()
        for name, alpha in logits.items():
            b = guide_trace.nodes[name]["value"]
            u = noise[name]
            b_anti = ((1 - u) < torch.sigmoid(alpha.detach())).to(alpha.dtype)
            sign = 1 - 2 * b_anti  # (-1)^{b~}
            per_dim = sign * (b != b_anti).to(alpha.dtype) * torch.sigmoid(alpha.detach().abs())
            signal = half_difference.reshape(*half_difference.shape, *([1] * (alpha.dim() - 2))) * per_dim
            surrogate = surrogate + (signal * alpha).sum()
        value = 0.5 * (f1 + f2).mean(0)
        return -value.sum(), -surrogate / self.num_particles
