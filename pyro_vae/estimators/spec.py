"""``EstimatorSpec``: everything one estimator name means, in one place.

What its value estimates (the ELBO, the IWAE bound, a Renyi bound), how its gradient differs from the plain
reparameterised one, whether its value is a K-particle bound that tightens with K, the options it takes, and
whether it has a compiled (JIT) form. The command line, the estimator comparison and the docs read these.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyro.infer import ELBO

from pyro_vae.errors import UserError

#: Options every estimator takes (Pyro's ELBO constructor arguments that the project relies on).
COMMON_OPTIONS = ("num_particles", "max_plate_nesting")
#: The kinds of latents an estimator may work with (``EstimatorSpec.latents``).
LATENTS = ("continuous", "discrete", "any")


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
        options: a dataclass of the options beyond ``num_particles`` and ``max_plate_nesting`` (renyi's
            ``RenyiOptions``, one field ``alpha``); its fields are the factory's keywords and the command line's
            ``--elbo-FIELD``; None when it takes none. Its ``__post_init__`` checks the values.
        jit_factory: the compiled variant, or None where there is none.
        no_jit_reason: why there is no compiled variant (said in the error).
        defaults: keyword arguments the factory always gets unless overridden (e.g. vectorised particles).
        latents: the latents it works with: "continuous" (reparameterised, the default), "discrete" (Bernoulli or
            categorical: enum, relaxed, disarm) or "any" (score-function estimators: reinforce, vimco, rws).
    """

    name: str
    factory: Callable[..., ELBO]
    estimates: str
    value: str
    gradient: str
    multi_particle: bool = False
    options: type | None = None
    jit_factory: Callable[..., ELBO] | None = None
    no_jit_reason: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    latents: str = "continuous"

    def __post_init__(self) -> None:
        if self.latents not in LATENTS:
            raise ValueError(
                f"estimator {self.name!r}: latents must be one of {', '.join(LATENTS)}, got {self.latents!r}"
            )
        if self.options is not None and not (isinstance(self.options, type) and dataclasses.is_dataclass(self.options)):
            raise ValueError(f"estimator {self.name!r}: options must be a dataclass, got {self.options!r}")
        # The declared options must be what the factories accept: a spec never promises an option it lacks.
        for fn in filter(None, (self.factory, self.jit_factory)):
            accepted = set(inspect.signature(fn).parameters)
            missing = (set(COMMON_OPTIONS) | set(self.option_names) | set(self.defaults)) - accepted
            if missing:
                raise ValueError(f"estimator {self.name!r}: {fn.__name__} does not take {', '.join(sorted(missing))}")

    @property
    def option_names(self) -> tuple[str, ...]:
        """The fields of ``options`` (none when it is None)."""
        return tuple(f.name for f in dataclasses.fields(self.options)) if self.options is not None else ()

    def make_options(self, values: Mapping[str, Any]) -> Any:
        """The ``options`` dataclass filled from ``values`` (checked by it); one-line ``UserError`` for a name it
        does not have or a value it refuses. None when the estimator takes no options."""
        unknown = sorted(set(values) - set(self.option_names))
        if unknown:
            has = f"its options are {', '.join(self.option_names)}" if self.option_names else "it takes no options"
            raise UserError(f"estimator {self.name!r} has no option(s) {', '.join(unknown)}; {has}")
        if self.options is None:
            return None
        try:
            return self.options(**values)
        except (TypeError, ValueError) as err:
            raise UserError(f"estimator {self.name!r}: {err}") from None

    def check(self, jit: bool = False, **options: Any) -> None:
        """One-line ``UserError`` for an option this estimator does not take, or a JIT it does not have."""
        unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(self.option_names) - set(self.defaults))
        if unknown:
            raise UserError(f"estimator {self.name!r} does not take option(s) {', '.join(unknown)}")
        if jit and self.jit_factory is None:
            raise UserError(f"estimator {self.name!r} has no compiled form ({self.no_jit_reason}); drop --jit")

    def make(self, *, jit: bool = False, **options: Any) -> ELBO:
        """The Pyro ELBO, compiled once per model, guide and batch shape when ``jit``."""
        self.check(jit=jit, **options)
        own = {k: v for k, v in options.items() if k in self.option_names}
        if self.options is not None:  # checked by the dataclass, with its defaults for what is not given
            options = {**options, **dataclasses.asdict(self.make_options(own))}
        factory = self.jit_factory if jit else self.factory
        return factory(**{**self.defaults, **options})  # type: ignore[misc]

    def __call__(self, **options: Any) -> ELBO:
        return self.make(**options)

    def works_with(self, discrete: bool) -> bool:
        """Whether it works with a guide whose latents are discrete (``discrete``) or continuous."""
        return self.latents == "any" or self.latents == ("discrete" if discrete else "continuous")

    @property
    def description(self) -> str:
        """``value; gradient: ...``, one line for help texts and reports."""
        return f"{self.value}; gradient: {self.gradient}"
