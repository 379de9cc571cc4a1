"""ELBO estimators by name: ``ESTIMATORS[name](**options)`` returns a Pyro ELBO usable by SVI.

Every factory is callable with no arguments (defaults) and accepts keyword options such as
``num_particles``.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

#: name -> factory(**options) -> pyro.infer.ELBO
ESTIMATORS: dict[str, Callable[..., ELBO]] = {
    # Estimates the ELBO (eq. 28) with a Monte Carlo KL: log q(z|x) - log p(z) at the sampled z.
    "trace": Trace_ELBO,
    # Estimates the same ELBO with the analytic KL where kl_divergence(q, p) is registered (eq. 40).
    "meanfield": TraceMeanField_ELBO,
}
