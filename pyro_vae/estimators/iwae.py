"""The importance-weighted bound (IWAE, Burda et al. 2015), per example and vectorised over K particles.

IWAE_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x),  z_k ~ q(z | x) independently.
E[IWAE_K] <= E[IWAE_{K+1}] <= log p(x), and IWAE_1 is the one-sample ELBO.
"""

from __future__ import annotations

from pyro_vae.estimators._jit import JitLossMixin
from pyro_vae.estimators.renyi import RenyiBound


class IWAEBound(RenyiBound):
    """Estimates the IWAE bound IWAE_K(x), summed over the batch (``loss`` returns its negation).

    Its value is the IWAE bound, not the ELBO (it is larger in expectation); its gradient is
    sum_k w~_k grad log w_k with w~_k = w_k / sum_j w_j, the gradient of IWAE_K, not of the ELBO.
    This is ``RenyiBound`` at alpha = 0 (Pyro's ``RenyiELBO(alpha=0)`` computes the same).
    """

    def __init__(
        self,
        num_particles: int = 10,
        max_plate_nesting: float = float("inf"),
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
    ) -> None:
        super().__init__(
            alpha=0.0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
        )


class JitIWAEBound(JitLossMixin, IWAEBound):
    """``IWAEBound`` with its loss compiled once per model, guide and batch shape."""
