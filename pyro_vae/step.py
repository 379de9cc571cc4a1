"""The SVI training step: the hot path of training.

One torch optimizer over all parameters of model and guide (``pyro.optim`` keeps one optimizer per
parameter, which costs ~0.5 ms per step for a small MLP), the ELBO's own gradient estimator, and
optional gradient-norm clipping.

By default the step runs the model and guide as Pyro runs them: ``elbo.loss_and_grads(model, guide, x)`` at every
step, so any Python in a prior, likelihood or guide (a counter, a branch on a tensor's value, a flag changed between
batches) runs at every step exactly as under ``pyro.infer.SVI``. ``TrainStep(..., fast=True)`` (the trainer's, and
``TrainStep.fast_step``'s) changes no number: Pyro's validation runs on the first step only (bad data such as grey
pixels under a Bernoulli likelihood, shape errors and model/guide mismatches are caught there; Pyro's trace checks
and the distributions' argument checks cost a few tenths of a millisecond per step), and the caller's setting is
restored after each step. ``make_optimizer`` gives one fused Adam over all parameters.

``jit=True`` (``TrainConfig.jit``, ``--jit``; opt-in) uses the estimator's compiled form (the registry's
``jit_factory``: ``pyro_vae.estimators``), traced with the PyTorch JIT once per batch shape. A trace records the
tensor operations of one run: it assumes control flow that depends only on shapes and no Python state read at call
time. So at the first step of each batch shape the uncompiled step runs as usual and the compiled loss and gradients
are then computed on the very same random draws (a forked generator set to the state that step started from) and
compared (relative ``CHECK_TOLERANCE``). Equal: this step takes the compiled values and later steps at that shape
run compiled. Different, or tracing failed: the step falls back to the uncompiled one for good and logs one line
saying why (logger ``pyro_vae.step``). A value or branch that changes only after that first step (a counter that
starts moving later, a branch on a parameter that crosses a threshold during training) is not caught: the compiled
graph keeps the value it was traced with. Drawing on a forked generator keeps the training random stream that of
the uncompiled step, and a resumed run, which checks again, computes what an uninterrupted one does.

``step(x, beta=b)`` weights the KL term by b (``pyro_vae.beta.beta_input``): beta is an input of the step, a
0-dim tensor argument of the model and guide, so a compiled graph takes the current value at every call
rather than the one it was traced with, and KL warm-up never re-traces. (At b = 1 the uncompiled step skips the
scaling: latent sites scaled by 1 give the same numbers.)

``benchmarks/step_time.py`` measures both steps (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import pyro
import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from pyro_vae.beta import beta_input


def parameters_of(*modules: nn.Module) -> list[nn.Parameter]:
    """The parameters of several modules, each once (a prior may share the guide's encoder)."""
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


#: Burda et al. 2016's stages: stage i (0-based) trains 3^i epochs, so stage i + 1 starts after epoch
#: 1 + 3 + ... + 3^i = (3^(i+1) - 1) / 2; the eighth stage (i = 7) ends at epoch 3280 and its rate is kept after.
BURDA_MILESTONES = tuple((3 ** (i + 1) - 1) // 2 for i in range(7))  # 1, 4, 13, 40, 121, 364, 1093
BURDA_EPOCHS = (3**8 - 1) // 2  # 3280
#: The factor between two stages' rates: 10^(-1/7), so stage i has lr * 10^(-i/7) and stage 7 lr / 10.
BURDA_GAMMA = 10 ** (-1 / 7)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    epochs: int,
    step_epochs: int = 10,
    gamma: float = 0.1,
    patience: int = 2,
    milestones: tuple[int, ...] = (),
) -> Any:
    """The ``torch.optim.lr_scheduler`` of ``schedule``, stepped once per epoch; None for "constant".

    "step": ``StepLR`` (lr * gamma every ``step_epochs`` epochs); "cosine": ``CosineAnnealingLR`` over ``epochs``
    (lr_t = lr (1 + cos(pi t / T)) / 2, Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", without restarts); "plateau": ``ReduceLROnPlateau`` on the test ELBO (mode "max"; lr * gamma after
    more than ``patience`` epochs without a rise, any rise counting: threshold 0, absolute); "burda": Burda et al.
    2016, "Importance Weighted Autoencoders", Sec. 5: 3^i epochs at lr * 10^(-i/7) for i = 0, ..., 7 (3280 epochs),
    then the last rate: ``MultiStepLR`` with gamma 10^(-1/7) at the ends of the stages, epochs ``BURDA_MILESTONES``;
    "multistep": ``MultiStepLR`` (lr * gamma^m after the m-th of the epochs ``milestones``, as pythae's reproductions
    use with milestones 200, 350, 500, 750, 1000 and gamma 10^(-1/5)).
    """
    sched = torch.optim.lr_scheduler
    if schedule == "burda":
        return sched.MultiStepLR(optimizer, milestones=list(BURDA_MILESTONES), gamma=BURDA_GAMMA)
    if schedule == "multistep":
        return sched.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    if schedule == "step":
        return sched.StepLR(optimizer, step_size=step_epochs, gamma=gamma)
    if schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=epochs)
    if schedule == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, mode="max", factor=gamma, patience=patience, threshold=0.0, threshold_mode="abs"
        )
    return None


def scheduled_rates(
    schedule: str,
    lr: float,
    until: int,
    *,
    epochs: int,
    step_epochs: int = 10,
    gamma: float = 0.1,
    milestones: tuple[int, ...] = (),
) -> list[float] | None:
    """The learning rate of each of epochs 1, ..., ``until`` under ``schedule`` (``make_scheduler``'s arguments),
    read from torch's own scheduler stepped once per epoch as training steps it (so no schedule is re-derived here);
    None for "plateau", whose steps follow the test ELBO and cannot be known in advance."""
    if schedule == "plateau":
        return None
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=lr)
    scheduler = make_scheduler(
        optimizer, schedule, epochs=epochs, step_epochs=step_epochs, gamma=gamma, milestones=milestones
    )
    rates = []
    for _ in range(until):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient, so no update: the order torch expects (else it warns of a skipped rate)
        if scheduler is not None:
            scheduler.step()
    return rates


def make_optimizer(
    params: Iterable[nn.Parameter], lr: float, fused: bool | None = None, eps: float = 1e-8
) -> torch.optim.Adam:
    """One Adam (Kingma & Ba 2015) over all ``params``, as a single fused kernel where torch has one; ``eps`` is
    Adam's epsilon (1e-8, torch's default; Burda et al. 2016 used 1e-4).

    ``fused=None`` fuses when every parameter is a floating-point tensor on the CPU or a CUDA device. The
    update is Adam's: it agrees with ``torch.optim.Adam(params, lr)`` to rounding.
    """
    params = list(params)
    if fused is None:
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused, eps=eps)


def compiled_objective(elbo: ELBO) -> ELBO | None:
    """The JIT-compiled twin of ``elbo`` (same estimator, same options), or None if it has none.

    The twin is the ``jit_factory`` of the registered estimator whose plain factory is ``type(elbo)``
    (``pyro_vae.estimators.ESTIMATORS``); an ELBO that is already compiled, or that no estimator makes, has none.
    """
    from pyro_vae.estimators import ESTIMATORS

    spec = next((s for s in ESTIMATORS.values() if s.factory is type(elbo) and s.jit_factory is not None), None)
    if spec is None or spec.jit_factory is None:
        return None
    twin = spec.jit_factory()
    # Copy the options as set (num_particles, max_plate_nesting, vectorize_particles, ...): passing them to
    # the constructor would add the particle dimension to max_plate_nesting a second time.
    twin.__dict__.update(elbo.__dict__)
    twin.ignore_jit_warnings = True
    return twin


#: Relative tolerance of the first-use check, by dtype: the JIT's float32 sums differ from eager PyTorch's in the
#: last bits; a frozen branch or value changes the loss or a gradient by far more.
CHECK_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


class TrainStep:
    """``step(x) -> loss``: estimate the ELBO gradient for batch x, clip, and take one optimizer step.

    ``model`` and ``guide`` are Pyro callables (possibly beta-wrapped); ``elbo`` any Pyro ELBO, run as Pyro runs it
    (``elbo.loss_and_grads``). The returned loss is the estimator's value for the batch (a sum over the batch, as
    Pyro reports it).

    ``step(x, beta=b)`` scales the latent sites of model and guide by b (recon + b KL); ``beta=None`` leaves
    them alone. ``fast=True``: Pyro's validation on the first step only. ``jit``: use a compiled form of ``elbo``
    (True: ``compiled_objective(elbo)``; or a function that makes one), checked against ``elbo`` at the first use of
    each batch shape, with a fallback to ``elbo`` (module docstring). ``trace_key`` (a function returning a Python
    value the model reads): the compiled objective is made and checked anew whenever the key changes.
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
        jit: bool | Callable[[], ELBO | None] = False,
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
        self._make_compiled: Callable[[], ELBO | None] | None = (
            (lambda: compiled_objective(elbo)) if jit is True else (jit or None)
        )
        self._compiled: ELBO | None = None
        self._compiled_key: Hashable = None
        self._checked: set[tuple[Any, ...]] = set()
        #: Why the step runs uncompiled although compilation was asked for (None while it compiles, or if never asked).
        self.fallback_reason: str | None = None

    @classmethod
    def fast_step(
        cls,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        elbo: ELBO,
        params: Iterable[nn.Parameter],
        lr: float,
        clip_norm: float | None = None,
        *,
        jit: bool | Callable[[], ELBO | None] = False,
        trace_key: Callable[[], Hashable] | None = None,
    ) -> TrainStep:
        """``TrainStep(model, guide, elbo, make_optimizer(params, lr), params, clip_norm, fast=True, jit=jit)``."""
        params = list(params)
        optimizer = make_optimizer(params, lr)
        return cls(model, guide, elbo, optimizer, params, clip_norm, fast=True, jit=jit, trace_key=trace_key)

    @property
    def compiled(self) -> ELBO | None:
        """The compiled objective in use (None before the first step, without ``jit``, or after a fallback)."""
        return self._compiled

    def __call__(self, x: Tensor, beta: float | None = None) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if beta is None or (beta == 1.0 and self._make_compiled is None):
            # Latent sites scaled by 1 give the very same numbers: the uncompiled step skips the scaling handler.
            model, guide, args = self.model, self.guide, (x,)
        else:
            (model, guide), args = self._scaled, (x, self._beta_tensor(beta, x))
        validation = contextlib.nullcontext() if not self.fast or self.steps == 0 else pyro.validation_enabled(False)
        with validation:
            compiled = self._compiled_for(x) if self._make_compiled is not None else None
            if compiled is None:
                # loss_and_grads works for every Pyro ELBO (RenyiELBO has no differentiable_loss).
                loss = self.elbo.loss_and_grads(model, guide, *args)
            elif self._shape_key(x) in self._checked:
                loss = self._compiled_step(compiled, model, guide, args)
            else:
                loss = self._checked_step(compiled, model, guide, args)
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

    @staticmethod
    def _shape_key(x: Tensor) -> tuple[Any, ...]:
        return (tuple(x.shape), x.dtype, x.device)

    def _compiled_for(self, x: Tensor) -> ELBO | None:
        """The compiled objective for this step, made anew when ``trace_key`` changes; None after a fallback."""
        key = self.trace_key() if self.trace_key is not None else None
        if self._compiled is None or key != self._compiled_key:
            assert self._make_compiled is not None
            # New frozen values: a new compiled objective, checked again at each shape; the old graphs go.
            self._compiled, self._compiled_key, self._checked = self._make_compiled(), key, set()
            if self._compiled is None:
                self._fall_back(f"the {type(self.elbo).__name__} estimator has no compiled form")
        return self._compiled

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self._make_compiled = self._compiled = None
        _log.warning("--jit: %s; training runs the model and guide uncompiled (as Pyro runs them)", reason)

    def _compiled_step(
        self, compiled: ELBO, model: Callable[..., Any], guide: Callable[..., Any], args: tuple[Tensor, ...]
    ) -> float:
        """A step of the checked compiled objective; if it raises (an error the graph meets only on some values),
        ``_fall_back`` and take this step uncompiled, from the same random draws."""
        start = _rng_state(args[0])
        try:
            with pyro.validation_enabled(False):
                return compiled.loss_and_grads(model, guide, *args)
        except Exception as err:  # noqa: BLE001 - whatever the graph raised, the uncompiled step is the fallback
            self._fall_back(f"the compiled objective failed at step {self.steps + 1} ({_one_line(err)})")
        self.optimizer.zero_grad(set_to_none=True)
        _set_rng_state(start, args[0])
        return self.elbo.loss_and_grads(model, guide, *args)

    def _checked_step(
        self, compiled: ELBO, model: Callable[..., Any], guide: Callable[..., Any], args: tuple[Tensor, ...]
    ) -> float:
        """The first step at a batch shape: the uncompiled step as usual (with validation as the step sets it),
        then the compiled objective traced and run on the very same random draws (a forked generator set to
        the state the uncompiled step started from). Equal loss and gradients: this step takes the compiled ones
        (so a resumed run, which checks again, computes what an uninterrupted one does) and later steps at this
        shape run compiled. Any difference or error: ``_fall_back``, and this step keeps the uncompiled ones."""
        x = args[0]
        start = _rng_state(x)
        loss = self.elbo.loss_and_grads(model, guide, *args)
        if not math.isfinite(loss):
            return loss  # nothing to compare: the trainer stops on it, and a caller that goes on checks next time
        eager = [p.grad for p in self.params]
        try:
            # The check stands in for the tracer's warnings (shapes read as numbers are safe: they are in the key).
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                for _ in range(2):  # trace (the tracer runs the model more than once), then run the graph
                    self.optimizer.zero_grad(set_to_none=True)
                    with _rng_at(start, x):
                        compiled_loss = compiled.loss_and_grads(model, guide, *args)
        except Exception as err:  # noqa: BLE001 - any failure to trace or run means: run uncompiled
            for p, g in zip(self.params, eager, strict=True):
                p.grad = g
            self._fall_back(f"compiling failed ({_one_line(err)})")
            return loss
        grads = [p.grad for p in self.params]
        difference = _difference(loss, compiled_loss, eager, grads, CHECK_TOLERANCE.get(x.dtype, 1e-2))
        if difference is not None:
            for p, g in zip(self.params, eager, strict=True):
                p.grad = g
            self._fall_back(
                f"the compiled objective differs from the uncompiled one at batch shape {tuple(x.shape)} "
                f"({difference}): the model or guide reads Python values or branches on tensor values"
            )
            return loss
        self._checked.add(self._shape_key(x))
        return compiled_loss


_log = logging.getLogger(__name__)


def _rng_state(x: Tensor) -> tuple[Tensor, Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None


def _set_rng_state(state: tuple[Tensor, Tensor | None], x: Tensor) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], x.device)


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it); for an error raised inside a TorchScript
    graph, whose first line only says so, its last line (the operation's own error)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[-1] if "TorchScript" in lines[0] and len(lines) > 1 else lines[0]
    return line[:200] if line.startswith(("RuntimeError:", "ValueError:")) else f"{type(err).__name__}: {line[:200]}"


@contextlib.contextmanager
def _rng_at(state: tuple[Tensor, Tensor | None], x: Tensor) -> Iterator[None]:
    """Run the block from the generator state ``state``, and leave the generators as they were before it."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        _set_rng_state(state, x)
        yield


def _difference(
    loss: float, other_loss: float, grads: list[Tensor | None], other: list[Tensor | None], tolerance: float
) -> str | None:
    """None if the two losses and gradients agree to ``tolerance`` (relative to the loss, and to the largest gradient
    entry), else what differs."""
    loss, other_loss = float(loss), float(other_loss)
    if not abs(loss - other_loss) <= tolerance * max(abs(loss), 1.0):
        return f"loss {other_loss:.8g} vs {loss:.8g}"
    pairs = [(a, b) for a, b in zip(grads, other, strict=True) if a is not None or b is not None]
    scale = max((float(g.abs().max()) for g, _ in pairs if g is not None and g.numel()), default=0.0)
    for k, (a, b) in enumerate(pairs):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        gap = float((a - b).abs().max()) if a.numel() else 0.0
        if not gap <= tolerance * max(scale, 1e-12):
            return f"gradient of parameter {k} off by {gap:.3g}, largest gradient {scale:.3g}"
    return None
