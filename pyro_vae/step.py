"""The SVI training step: the hot path of training.

One torch optimizer over all parameters of model and guide (``pyro.optim`` keeps one optimizer per
parameter, which costs ~0.5 ms per step for a small MLP), the ELBO's own gradient estimator, and
optional gradient-norm clipping.

``TrainStep(..., fast=True)`` (or ``TrainStep.fast_step``, which also makes the optimizer) computes the
same loss and gradients with less Python per step:

- the first step also runs the ELBO as given, without gradients, with Pyro's validation as the caller set
  it, so bad data (grey pixels under a Bernoulli likelihood), shape errors and model/guide mismatches are
  still caught; the steps themselves run with validation off (Pyro's trace checks and the distributions'
  argument checks cost a few tenths of a millisecond per step), and the caller's setting is restored
  after each step;
- a ``TraceMeanField_ELBO`` (the default "meanfield") is replaced by the same objective compiled once per
  batch shape with the PyTorch JIT (``pyro_vae.estimators.JitTraceMeanFieldELBO``), so the model and guide
  no longer go through Pyro's handler stack, or re-register their parameters with ``pyro.module``, at
  every step. Validation and compilation draw their random numbers from a forked generator, so a fast run
  follows the same random stream as a plain one (same losses to rounding: the JIT's float32 results
  differ from eager PyTorch's in the last bits), and a resumed fast run repeats an uninterrupted one
  exactly. Other ELBOs run as given, with validation on for their first step only;
- ``make_optimizer`` gives one fused Adam over all parameters.

``step(x, beta=b)`` weights the KL term by b (``pyro_vae.beta.beta_input``): beta is an input of the step, a
0-dim tensor argument of the model and guide, so a compiled graph takes the current value at every call
rather than the one it was traced with, and KL warm-up never re-traces.

``benchmarks/step_time.py`` measures what each part buys (README, section "Performance").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, TraceMeanField_ELBO
from torch import Tensor, nn

from pyro_vae.beta import beta_input


def parameters_of(*modules: nn.Module) -> list[nn.Parameter]:
    """The parameters of several modules, each once (a prior may share the guide's encoder)."""
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def make_optimizer(params: Iterable[nn.Parameter], lr: float, fused: bool | None = None) -> torch.optim.Adam:
    """One Adam (Kingma & Ba 2015) over all ``params``, as a single fused kernel where torch has one.

    ``fused=None`` fuses when every parameter is a floating-point tensor on the CPU or a CUDA device. The
    update is Adam's: it agrees with ``torch.optim.Adam(params, lr)`` to rounding.
    """
    params = list(params)
    if fused is None:
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def compiled_objective(elbo: ELBO) -> ELBO | None:
    """The JIT-compiled twin of ``elbo`` (same estimator, same options), or None if it has none.

    Only ``TraceMeanField_ELBO`` itself is compiled (the project's default estimator); any other ELBO,
    a JIT one included, is used as given.
    """
    if type(elbo) is not TraceMeanField_ELBO:
        return None
    from pyro_vae.estimators import JitTraceMeanFieldELBO

    twin = JitTraceMeanFieldELBO()
    # Copy the options as set (num_particles, max_plate_nesting, vectorize_particles, ...): passing them to
    # the constructor would add the particle dimension to max_plate_nesting a second time.
    twin.__dict__.update(elbo.__dict__)
    twin.ignore_jit_warnings = True
    return twin


class TrainStep:
    """``step(x) -> loss``: estimate the ELBO gradient for batch x, clip, and take one optimizer step.

    ``model`` and ``guide`` are Pyro callables (possibly beta-wrapped); ``elbo`` any Pyro ELBO. The
    returned loss is the ELBO estimator's value for the batch (a sum over the batch, as Pyro reports it).

    ``step(x, beta=b)`` scales the latent sites of model and guide by b (recon + b KL); ``beta=None`` leaves
    them alone. ``fast=True``: validation on the first step only, and a compiled ``TraceMeanField_ELBO``
    (module docstring). A compiled graph freezes the Python values that the model and guide read when it is
    traced (beta given to the step is an input, not such a value); for such a value pass ``trace_key`` (a
    function returning it): the step re-traces whenever the key changes.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        elbo: ELBO,
        optimizer: torch.optim.Optimizer,
        params: Iterable[nn.Parameter],
        clip_norm: float | None = None,
        *,
        fast: bool = False,
        trace_key: Callable[[], Hashable] | None = None,
    ) -> None:
        self.model, self.guide, self.elbo = model, guide, elbo
        self.optimizer = optimizer
        self.params = list(params)
        self.clip_norm = clip_norm
        self.fast = fast
        self.steps = 0
        self.trace_key = trace_key
        self._scaled = (beta_input(model), beta_input(guide))
        self._beta: tuple[tuple[Any, ...], Tensor] | None = None
        self._compiles = fast and compiled_objective(elbo) is not None
        self._compiled: ELBO | None = None
        self._compiled_key: Hashable = None
        self._compiled_shapes: set[tuple[Any, ...]] = set()

    @classmethod
    def fast_step(
        cls,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        elbo: ELBO,
        params: Iterable[nn.Parameter],
        lr: float,
        clip_norm: float | None = None,
        trace_key: Callable[[], Hashable] | None = None,
    ) -> TrainStep:
        """``TrainStep(model, guide, elbo, make_optimizer(params, lr), params, clip_norm, fast=True)``."""
        params = list(params)
        return cls(model, guide, elbo, make_optimizer(params, lr), params, clip_norm, fast=True, trace_key=trace_key)

    @property
    def compiled(self) -> ELBO | None:
        """The compiled objective in use (None before the first fast step, or when nothing is compiled)."""
        return self._compiled

    def __call__(self, x: Tensor, beta: float | None = None) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if beta is None:
            model, guide, args = self.model, self.guide, (x,)
        else:
            (model, guide), args = self._scaled, (x, self._beta_tensor(beta, x))
        if self._compiles:
            if self.steps == 0:
                self._validate(model, guide, args)
            with pyro.validation_enabled(False):
                loss = self._compiled_loss_and_grads(model, guide, args)
        elif self.fast and self.steps > 0:
            with pyro.validation_enabled(False):
                loss = self.elbo.loss_and_grads(model, guide, *args)
        else:
            # loss_and_grads works for every Pyro ELBO (RenyiELBO has no differentiable_loss).
            loss = self.elbo.loss_and_grads(model, guide, *args)
        self.steps += 1
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        return float(loss)

    def _beta_tensor(self, beta: float, x: Tensor) -> Tensor:
        """beta as a 0-dim tensor of x's dtype and device (a new one only when beta changes)."""
        # Compared as Python numbers: reading a CUDA tensor back would synchronise every step.
        key = (float(beta), x.dtype, x.device)
        if self._beta is None or self._beta[0] != key:
            self._beta = (key, torch.tensor(key[0], dtype=x.dtype, device=x.device))
        return self._beta[1]

    def _validate(self, model: Callable[..., Any], guide: Callable[..., Any], args: tuple[Tensor, ...]) -> None:
        """Run the uncompiled ELBO once with Pyro's validation as the caller set it (raising on bad data),
        without gradients and on a forked generator: every step then runs the same compiled graph, so a run
        resumed from a checkpoint computes exactly what an uninterrupted one does."""
        with torch.no_grad(), self._forked_rng(args[0]):
            self.elbo.loss(model, guide, *args)

    @staticmethod
    def _forked_rng(x: Tensor) -> Any:
        return torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])

    def _compiled_loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: tuple[Tensor, ...]
    ) -> float:
        x = args[0]
        key = self.trace_key() if self.trace_key is not None else None
        if self._compiled is None or key != self._compiled_key:
            # New frozen values: start a new compiled objective and let the old graphs go.
            self._compiled = compiled_objective(self.elbo)
            self._compiled_key = key
            self._compiled_shapes = set()
        shape = (tuple(x.shape), x.dtype, x.device)
        if shape not in self._compiled_shapes:
            # Tracing runs the model and guide (drawing z) more often than a step does; doing it on a forked
            # generator keeps the training random stream identical to the plain step's.
            with self._forked_rng(x):
                self._compiled.differentiable_loss(model, guide, *args)
            self._compiled_shapes.add(shape)
        loss = self._compiled.differentiable_loss(model, guide, *args)
        loss.backward()
        return loss.item()
