"""ELBO estimators by name: ``ESTIMATORS[name](**options)`` returns a Pyro ELBO usable by SVI.

Every factory is callable with no arguments (defaults) and accepts keyword options such as
``num_particles`` (and ``alpha`` for "renyi"). ``DESCRIPTIONS[name]`` says what each one's value
estimates and how its gradient differs from the plain reparameterised one. ``make_elbo`` checks the
name and options and raises a one-line ``UserError`` for bad ones.

Losses follow Pyro's convention: the negated estimate, summed over the batch.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.errors import UserError
from pyro_vae.estimators.dreg import DReGBound
from pyro_vae.estimators.iwae import IWAEBound, JitIWAEBound
from pyro_vae.estimators.jit_meanfield import JitTraceMeanFieldELBO
from pyro_vae.estimators.jit_trace import JitTraceELBO
from pyro_vae.estimators.log_weights import per_example_log_weights
from pyro_vae.estimators.renyi import JitRenyiBound, RenyiBound
from pyro_vae.estimators.stl import STLELBO, JitSTLELBO

# Trace-based ELBOs draw num_particles > 1 at once (a particle plate) rather than in a Python loop.
_vectorized = functools.partial  # _vectorized(cls, vectorize_particles=True): still overridable by the caller

#: name -> factory(**options) -> pyro.infer.ELBO
ESTIMATORS: dict[str, Callable[..., ELBO]] = {
    "trace": _vectorized(Trace_ELBO, vectorize_particles=True),
    "meanfield": _vectorized(TraceMeanField_ELBO, vectorize_particles=True),
    "iwae": IWAEBound,
    "renyi": RenyiBound,
    "stl": STLELBO,
    "dreg": DReGBound,
    "jit-trace": _vectorized(JitTraceELBO, vectorize_particles=True),
    "jit-meanfield": _vectorized(JitTraceMeanFieldELBO, vectorize_particles=True),
    "jit-iwae": JitIWAEBound,
    "jit-renyi": JitRenyiBound,
    "jit-stl": JitSTLELBO,
}

#: Bounds that tighten with the number of particles K and equal the ELBO at K = 1 (IWAE, DReG: log of the
#: mean weight; Renyi: the same for any alpha), so that training with them at K = 1 is plain ELBO training.
MULTI_PARTICLE_BOUNDS = frozenset({"iwae", "dreg", "renyi", "jit-iwae", "jit-renyi"})

#: name -> (what the value estimates, what the gradient is)
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "trace": ("ELBO (eq. 28), Monte Carlo KL", "reparameterised gradient of log p(x,z) - log q(z|x)"),
    "meanfield": ("ELBO, analytic KL where registered (eq. 40)", "reparameterised gradient, analytic KL term"),
    "iwae": ("IWAE bound, K particles (Burda et al. 2015)", "IWAE gradient: sum_k w~_k grad log w_k"),
    "renyi": ("Renyi bound L_alpha, K particles (Li & Turner 2016)", "sum_k softmax((1-alpha) log w)_k grad log w_k"),
    "stl": ("ELBO (same value as trace)", "path derivative only: log q at detached parameters (Roeder et al. 2017)"),
    "dreg": (
        "IWAE bound (same value as iwae)",
        "encoder: w~_k^2 path derivative; decoder: as IWAE (Tucker et al. 2018)",
    ),
}
for _name in ("trace", "meanfield", "iwae", "renyi", "stl"):
    DESCRIPTIONS[f"jit-{_name}"] = (DESCRIPTIONS[_name][0], DESCRIPTIONS[_name][1] + "; compiled once (JIT)")


def _accepted_options(factory: Callable[..., ELBO]) -> set[str]:
    target = factory.func if isinstance(factory, functools.partial) else factory
    return {p for p in inspect.signature(target).parameters if p != "self"}


def make_elbo(name: str, **options: Any) -> ELBO:
    """``ESTIMATORS[name](**options)`` with a one-line ``UserError`` for an unknown name or option."""
    if name not in ESTIMATORS:
        raise UserError(f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}")
    factory = ESTIMATORS[name]
    unknown = sorted(set(options) - _accepted_options(factory))
    if unknown:
        raise UserError(f"estimator {name!r} does not take option(s) {', '.join(unknown)}")
    return factory(**options)


__all__ = [
    "DESCRIPTIONS",
    "MULTI_PARTICLE_BOUNDS",
    "ESTIMATORS",
    "DReGBound",
    "IWAEBound",
    "JitIWAEBound",
    "JitRenyiBound",
    "JitSTLELBO",
    "JitTraceELBO",
    "JitTraceMeanFieldELBO",
    "RenyiBound",
    "STLELBO",
    "make_elbo",
    "per_example_log_weights",
]
