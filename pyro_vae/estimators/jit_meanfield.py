"""``TraceMeanField_ELBO`` compiled with the PyTorch JIT, traced once rather than on every call.

Pyro 1.9.2's ``JitTraceMeanField_ELBO.differentiable_loss`` checks ``self._loss_and_surrogate_loss`` but
stores the compiled function in ``self._differentiable_loss``, so the check never succeeds: every call
builds a fresh ``pyro.ops.jit.trace`` and traces the model and guide again (slower than no JIT at all).
This subclass keeps the compiled function (one per model, guide and argument shapes; see ``_jit.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import JitTraceMeanField_ELBO

from pyro_vae.estimators._jit import CompiledCache


def _meanfield_surrogate_loss(elbo: JitTraceMeanFieldELBO, model: Any, guide: Any, args: tuple, kwargs: dict) -> Any:
    particles = [
        elbo._differentiable_loss_particle(model_trace, guide_trace)[1]
        for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs)
    ]
    # One trace (vectorized particles, or just one) and one particle (the trainer's default) is the loss as it
    # is: no "0 + l / 1" operations in the graph.
    loss = particles[0] if len(particles) == 1 else sum(particles)
    return loss if elbo.num_particles == 1 else loss / elbo.num_particles


class JitTraceMeanFieldELBO(CompiledCache, JitTraceMeanField_ELBO):
    """The mean-field ELBO (analytic KL where registered, eq. 40) with a loss compiled once.

    Estimates the same ELBO, with the same gradient estimator, as ``TraceMeanField_ELBO``; only the
    execution differs. The usual JIT restrictions apply: static model structure, tensors passed as
    positional arguments, and Python values the model reads at call time (e.g. ``BetaScaled.beta``)
    are frozen into the graph when it is traced.
    """

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._run_compiled(_meanfield_surrogate_loss, model, guide, *args, **kwargs)
