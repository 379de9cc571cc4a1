"""``EstimatorSpec``: everything one estimator name means, in one place.

What its value estimates (the ELBO, the IWAE bound, a Renyi bound), how its gradient differs from the plain
reparameterised one, whether its value is a K-particle bound that tightens with K, the options it takes, and
whether it has a compiled (JIT) form. The command line, the estimator comparison and the docs read these.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyro.infer import ELBO

from pyro_vae.errors import UserError

#: Options every estimator takes (Pyro's ELBO constructor arguments that the project relies on).
COMMON_OPTIONS = ("num_particles", "max_plate_nesting")


@dataclass(frozen=True)
class EstimatorSpec:
    """One estimator. ``spec.make(num_particles=K, jit=False, **options)`` (or ``spec(...)``) returns the
    Pyro ELBO.

    Attributes:
        name: the registry name ("trace", "iwae", ...).
        factory: the Pyro ELBO class (or factory) of the plain estimator.
        estimates: what the value estimates, in short: "ELBO", "IWAE bound" or "Renyi bound".
        value: what the value is, in a sentence.
        gradient: what the gradient is, in a sentence.
        multi_particle: the value is a K-particle bound that tightens with K and equals the ELBO at K = 1.
        options: the options beyond ``num_particles`` and ``max_plate_nesting`` (e.g. ``("alpha",)``).
        jit_factory: the compiled variant, or None where there is none.
        no_jit_reason: why there is no compiled variant (said in the error).
        defaults: keyword arguments the factory always gets unless overridden (e.g. vectorised particles).
    """

    name: str
    factory: Callable[..., ELBO]
    estimates: str
    value: str
    gradient: str
    multi_particle: bool = False
    options: tuple[str, ...] = ()
    jit_factory: Callable[..., ELBO] | None = None
    no_jit_reason: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The declared options must be what the factories accept: a spec never promises an option it lacks.
        for fn in filter(None, (self.factory, self.jit_factory)):
            accepted = set(inspect.signature(fn).parameters)
            missing = (set(COMMON_OPTIONS) | set(self.options) | set(self.defaults)) - accepted
            if missing:
                raise ValueError(f"estimator {self.name!r}: {fn.__name__} does not take {', '.join(sorted(missing))}")

    def check(self, jit: bool = False, **options: Any) -> None:
        """One-line ``UserError`` for an option this estimator does not take, or a JIT it does not have."""
        unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(self.options) - set(self.defaults))
        if unknown:
            raise UserError(f"estimator {self.name!r} does not take option(s) {', '.join(unknown)}")
        if jit and self.jit_factory is None:
            raise UserError(f"estimator {self.name!r} has no compiled form ({self.no_jit_reason}); drop --jit")

    def make(self, *, jit: bool = False, **options: Any) -> ELBO:
        """The Pyro ELBO, compiled once per model, guide and batch shape when ``jit``."""
        self.check(jit=jit, **options)
        factory = self.jit_factory if jit else self.factory
        return factory(**{**self.defaults, **options})  # type: ignore[misc]

    def __call__(self, **options: Any) -> ELBO:
        return self.make(**options)

    @property
    def description(self) -> str:
        """``value; gradient: ...``, one line for help texts and reports."""
        return f"{self.value}; gradient: {self.gradient}"
