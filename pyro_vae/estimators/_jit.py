"""Compile an ELBO's loss once per (model, guide, argument shapes) with ``torch.jit.trace``.

This replaces ``pyro.ops.jit.trace`` (which Pyro's jit ELBOs use) to fix three things:
- Pyro's jit ELBOs keep a single closure over the *first* model and guide they were called with, so a
  second (model, guide) pair silently reuses the first pair's closure;
- the compiled graph is keyed only by the number of arguments and the keyword arguments, so a batch of a
  new size (the last, smaller batch of an epoch) runs a graph traced for the old size;
- only param-store tensors are graph inputs. A ``pyro.module`` whose parameters are not the ones in the
  param store (a second model built under the same names without ``pyro.clear_param_store()``) then fails
  with "Cannot insert a Tensor that requires grad as a constant". Here the parameters of model and guide
  that are ``nn.Module`` s are inputs as well.

The traced graph is then simplified (``_graph.simplified``): shapes folded, neutral arithmetic and dead code
dropped, while its operations are still run by the plain interpreter and differentiated by eager autograd (the
reason is in ``_CompiledPair.__call__``).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.runtime import am_i_wrapped
from pyro.util import ignore_jit_warnings
from torch import nn
from torch.jit import TracerWarning

from pyro_vae.estimators._graph import simplified


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    shapes = tuple((a.shape, a.dtype, a.device) if torch.is_tensor(a) else type(a).__name__ for a in args)
    return shapes, tuple(sorted((k, repr(v)) for k, v in kwargs.items())) if kwargs else ()


def _module_parameters(*fns: Any) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for fn in fns:
        if isinstance(fn, nn.Module):
            for p in fn.parameters():
                if p.requires_grad:
                    seen.setdefault(id(p), p)
    return list(seen.values())


@dataclass
class _Graph:
    """One compiled graph: the param-store names and module parameters it takes, and the last inputs it ran on."""

    names: list[str]
    extra: list[torch.Tensor]
    fn: Any
    store: list[torch.Tensor] = field(default_factory=list)

    def inputs(self) -> list[torch.Tensor]:
        """The param store's tensors under ``names`` (unconstrained), then ``extra``.

        Under a Pyro handler (SVI's trace, which finds the parameters to step this way) they are read with
        ``pyro.param``, which the handler sees. Outside one, they are the tensors of the last call if the store
        still holds those very tensors (a cleared or reloaded store holds new ones): ``pyro.param`` for each
        name, and walking the modules, were ~0.1 ms of a 1.4 ms digits step (measured in its loop). The modules'
        parameters outside the store are the ones found when tracing; like the store's, an optimizer updates them
        in place.
        """
        if not am_i_wrapped() and self.store:
            current = pyro.get_param_store().named_parameters().mapping
            if all(current.get(n) is t for n, t in zip(self.names, self.store, strict=True)):
                return self.store + self.extra
        self.store = [pyro.param(name).unconstrained() for name in self.names]
        return self.store + self.extra


class _CompiledPair:
    """The compiled graphs of one (model, guide) pair, one per argument signature."""

    def __init__(self, fn: Callable[..., Any], model: Any, guide: Any, ignore_warnings: bool, options: dict) -> None:
        self.fn, self.model, self.guide = fn, model, guide
        self.ignore_warnings, self.options = ignore_warnings, options
        self.graphs: dict[tuple[Any, ...], _Graph] = {}

    def _trace(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Graph:
        with poutine.block(), poutine.trace(param_only=True) as capture:
            self.fn(*args, **kwargs)
        names = sorted(capture.trace.nodes)
        store = [pyro.param(name).unconstrained() for name in names]
        ids = {id(p) for p in store}
        extra = [p for p in _module_parameters(self.model, self.guide) if id(p) not in ids]
        inputs = store + extra
        fn = self.fn

        def graph(*params_and_args: Any) -> Any:
            # Constrained params recomputed from the unconstrained inputs, so the transform is in the graph.
            constrained = {name: pyro.param(name) for name in names}
            return poutine.replay(fn, params=constrained)(*params_and_args[len(inputs) :], **kwargs)

        if self.ignore_warnings:
            graph = ignore_jit_warnings()(graph)
        with pyro.validation_enabled(False), warnings.catch_warnings():
            # torch 2.x marks torch.jit.trace deprecated. Shapes read as Python numbers (K in log K, plate
            # sizes) become constants of the graph, which is safe: the shapes are part of the key.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message="Converting a tensor to a Python", category=TracerWarning)
            compiled = torch.jit.trace(graph, tuple(inputs) + args, **{"check_trace": False, **self.options})
        return _Graph(names, extra, simplified(compiled))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = _signature(args, kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._trace(args, kwargs)
        inputs = graph.inputs()
        # Run the traced ops as they are, differentiated by eager autograd: the optimising executor's own
        # symbolic backward (differentiable subgraphs) made the MLP step's backward ~12% slower than eager
        # PyTorch's (benchmarks/step_time.py, docs/performance.md). The flag is read at each call, so it is set
        # only around this one.
        with torch.jit.optimized_execution(False):
            return graph.fn(*inputs, *args)


class CompiledPerModel:
    """``cache(model, guide, *args, **kwargs)`` runs ``fn(owner, model, guide, args, kwargs)`` compiled.

    ``fn`` must be a pure tensor computation of the parameters and ``args`` (static model structure; Python
    values read at call time, such as ``BetaScaled.beta``, are frozen into the graph when it is traced).
    Keyword arguments are part of the key (each distinct value compiles once).
    """

    def __init__(
        self,
        owner: Any,
        fn: Callable[[Any, Any, Any, tuple[Any, ...], dict[str, Any]], Any],
        ignore_warnings: bool = False,
        jit_options: dict[str, Any] | None = None,
    ) -> None:
        self._owner = weakref.ref(owner)
        self._fn = fn
        self._ignore_warnings = ignore_warnings
        self._jit_options = dict(jit_options or {})
        # Strong references to model and guide (in _CompiledPair) keep their ids from being reused.
        self._pairs: dict[tuple[int, int], _CompiledPair] = {}

    @property
    def num_compilations(self) -> int:
        """Graphs traced so far: one per (model, guide, argument signature)."""
        return sum(len(pair.graphs) for pair in self._pairs.values())

    def __call__(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Any:
        pair = self._pairs.get((id(model), id(guide)))
        if pair is None:
            owner_ref, fn = self._owner, self._fn

            def bound(*args: Any, **kwargs: Any) -> Any:
                return fn(owner_ref(), model, guide, args, kwargs)

            pair = self._pairs[(id(model), id(guide))] = _CompiledPair(
                bound, model, guide, self._ignore_warnings, self._jit_options
            )
        return pair(*args, **kwargs)


def _uncompiled_loss_and_surrogate(owner: Any, model: Any, guide: Any, args: tuple, kwargs: dict) -> Any:
    return super(JitLossMixin, owner).loss_and_surrogate_loss(model, guide, *args, **kwargs)


class CompiledCache:
    """One ``CompiledPerModel`` per estimator object, made on first use, and its trace count."""

    ignore_jit_warnings: bool
    jit_options: dict[str, Any] | None

    def _run_compiled(self, fn: Callable[..., Any], model: Any, guide: Any, *args: Any, **kwargs: Any) -> Any:
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            compiled = self._compiled = CompiledPerModel(self, fn, self.ignore_jit_warnings, self.jit_options)
        return compiled(model, guide, *args, **kwargs)

    @property
    def num_compilations(self) -> int:
        """How many graphs have been traced (stays at 1 for a fixed model, guide and batch shape)."""
        compiled = self.__dict__.get("_compiled")
        return 0 if compiled is None else compiled.num_compilations


class JitLossMixin(CompiledCache):
    """Compile ``loss_and_surrogate_loss`` of the estimator class that follows this mixin in the MRO."""

    def loss_and_surrogate_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Any:
        return self._run_compiled(_uncompiled_loss_and_surrogate, model, guide, *args, **kwargs)
