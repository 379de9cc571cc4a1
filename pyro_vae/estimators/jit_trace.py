"""``Trace_ELBO`` compiled with the PyTorch JIT, once per model, guide and batch shape.

Pyro's ``JitTrace_ELBO`` keeps one closure over the first model and guide it sees and keys the graph
without the batch shape; this subclass uses ``_jit.CompiledPerModel`` instead. Value and gradient are
``Trace_ELBO``'s.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO

from pyro_vae.estimators._jit import CompiledCache


def _trace_elbo_loss_and_surrogate(elbo: JitTraceELBO, model: Any, guide: Any, args: tuple, kwargs: dict) -> Any:
    loss: Any = 0.0
    surrogate: Any = 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        with warnings.catch_warnings():
            # Trace_ELBO converts its (unused here) value to a Python float; the surrogate is traced.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            _, surrogate_particle = Trace_ELBO._differentiable_loss_particle(elbo, model_trace, guide_trace)
        elbo_particle = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
        loss = loss - elbo_particle.detach() / elbo.num_particles
        surrogate = surrogate + surrogate_particle / elbo.num_particles
    return loss, surrogate


class JitTraceELBO(CompiledCache, JitTrace_ELBO):
    """Trace_ELBO (eq. 28, Monte Carlo KL) with ``loss_and_surrogate_loss`` compiled once."""

    def loss_and_surrogate_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Any:
        return self._run_compiled(_trace_elbo_loss_and_surrogate, model, guide, *args, **kwargs)
