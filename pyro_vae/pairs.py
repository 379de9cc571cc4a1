"""A user's own Pyro model and guide: what ``train``, ``evaluate``, ``elbo_terms`` and the figures need of them.

The protocol (each feature needs only its row; a missing method is a one-line ``MissingMethod`` naming it):

============================================  ========================================================================
feature                                       the model and guide must offer
============================================  ========================================================================
``train(config, DIR, model=m, guide=g)``,     ``m(x)`` and ``g(x)``: Pyro callables of one batch x ``(N, *x_shape)``
``Trainer``; ``load_run(DIR, model, guide)``  with the same latent sites, x observed in the model (``obs=x``);
                                              parameters by ``pyro.param`` or ``pyro.module`` (the same names every
                                              run)
the test ELBO each epoch, ``elbo_terms``      nothing more: E_q log p(x|z) from the observed sites, the KL analytic
                                              where ``kl_divergence`` knows the pair of site distributions
``evaluate`` (IS log p(x), KL per             nothing more (traces of the pair)
dimension, active units)
``curves.png``, ``latent.png``                nothing more (the guide sites' means)
``reconstructions.png``, ``manifold.png``     ``decode_mean(z)``: E[x|z] for latents z (n, z_dim)
(z_dim = 2), the reconstruction error
``samples.png``                               ``decode_mean(z)`` and ``prior()``: p(z), a distribution
grey data binarised each epoch (Bernoulli)    ``binary_data = True``, or a ``likelihood`` object that says so
============================================  ========================================================================

A method is looked up on the callable itself (a function's attribute: ``model.decode_mean = ...``), then on the
object it is bound to: for Pyro's ``examples/vae/vae.py`` style, ``train(..., model=vae.model, guide=vae.guide)``
finds ``vae.decode_mean``. ``PairModule`` gives such a callable the face of an ``nn.Module`` (``parameters()``,
``state_dict()``: its Pyro parameters by name, ``train()``/``eval()``), so that the trainer, its checkpoints and
``load_run`` treat it like the built-in modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from pyro_vae.errors import UserError
from pyro_vae.estimators.log_weights import guess_plate_nesting

if TYPE_CHECKING:
    from pyro_vae.config import TrainConfig
    from pyro_vae.data import VAEData

#: What each optional method is, and which features need it (the messages of ``MissingMethod``).
PROTOCOL = {
    "decode_mean": "decode_mean(z), E[x|z] for a batch of latents, which the decoded-image figures "
    "(reconstructions, samples, manifold) and the reconstruction error need",
    "prior": "prior(), the distribution p(z), which samples.png needs",
    "posterior": "posterior(x), the distribution q(z|x)",
}
#: The keys of ``TrainConfig.plugins`` naming a run's own model and guide.
PAIR_KEYS = ("pair:model", "pair:guide")


class MissingMethod(UserError, AttributeError):
    """A method of the protocol that a user's model or guide does not have (also an ``AttributeError``, so that
    ``hasattr`` says False)."""


def label(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable (a bound method: of its function), for messages and the run's record."""
    target = getattr(fn, "__func__", fn)
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{getattr(target, '__module__', None) or type(target).__module__}.{name}"


class PairModule(nn.Module):
    """An ``nn.Module`` face for a user's Pyro model or guide ``fn`` (``role``: "model" or "guide").

    Calling it calls ``fn``. Its parameters are the Pyro parameters ``fn`` uses (``discover_parameters`` finds
    their names by running the pair once); ``state_dict`` maps those names to their unconstrained values and
    ``load_state_dict`` copies values back in. Other attributes come from ``fn`` or the object it is bound to.
    """

    def __init__(self, fn: Callable[..., Any], role: str) -> None:
        super().__init__()
        if not callable(fn):
            raise UserError(f"the {role} must be a callable Pyro {role}, got {fn!r}")
        self.__dict__["fn"] = fn  # not a submodule: its weights are counted once, through Pyro's parameter store
        self.role = role
        self.param_names: list[str] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        fn = self.__dict__["fn"]
        for holder in (fn, getattr(fn, "__self__", None)):
            if holder is not None and hasattr(holder, name):
                return getattr(holder, name)
        if name.startswith("_"):
            raise AttributeError(name)
        what = PROTOCOL.get(name, name)
        raise MissingMethod(
            f"your {self.role} {label(fn)} has no {what}; define it on the {self.role} or the object it belongs to"
        )

    def train(self, mode: bool = True) -> PairModule:
        owner = getattr(self.fn, "__self__", self.fn)
        if isinstance(owner, nn.Module):
            owner.train(mode)
        return super().train(mode)

    def _store(self) -> dict[str, Tensor]:
        return dict(pyro.get_param_store().named_parameters())

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        store = self._store()
        missing = [n for n in self.param_names if n not in store]
        if missing:
            raise UserError(
                f"the parameters {', '.join(missing)} of your {self.role} are no longer in Pyro's parameter store "
                "(pyro.clear_param_store() was called); load the run again with load_run(DIR, model=..., guide=...)"
            )
        return iter([store[n] for n in self.param_names])  # type: ignore[misc]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:  # type: ignore[override]
        return {n: p.detach().clone() for n, p in zip(self.param_names, self.parameters(), strict=True)}

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True, assign: bool = False) -> Any:
        if sorted(state) != sorted(self.param_names):
            raise UserError(
                f"the saved parameters of the {self.role} ({', '.join(sorted(state)) or 'none'}) are not those of "
                f"your {self.role} {label(self.fn)} ({', '.join(sorted(self.param_names)) or 'none'}); pass the "
                f"{self.role} the run was trained with"
            )
        with torch.no_grad():
            for name, p in zip(self.param_names, self.parameters(), strict=True):
                p.copy_(state[name])
        return None


def as_pair(model: Any, guide: Any) -> tuple[Any, Any]:
    """``(model, guide)`` with any plain callable (a function, a bound method) as a ``PairModule``; modules as is."""
    if model is None or guide is None:
        raise UserError("give both your model and your guide (model=..., guide=...), or neither")
    wrap = {"model": model, "guide": guide}
    for role, fn in wrap.items():
        if not isinstance(fn, nn.Module):
            wrap[role] = PairModule(fn, role)
    return wrap["model"], wrap["guide"]


def discover_parameters(model: PairModule, guide: PairModule, x: Tensor) -> list[Tensor]:
    """Run the guide and the model on ``x`` once (creating their Pyro parameters) and record which parameters each
    uses; return them all (the guide's first). The draws come from a forked generator."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        guide_trace = poutine.trace(guide.fn).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model.fn, trace=guide_trace)).get_trace(x)
    guide.param_names = [n for n, s in guide_trace.nodes.items() if s["type"] == "param"]
    # A parameter both use (a shared network) is counted once, as the guide's.
    model.param_names = [n for n, s in model_trace.nodes.items() if s["type"] == "param" and n not in guide.param_names]
    return [*guide.parameters(), *model.parameters()]


def prepare_pair(
    model: PairModule, guide: PairModule, data: VAEData, config: TrainConfig
) -> tuple[list[Tensor], TrainConfig]:
    """Make the pair ready for training on ``data``: (its parameters, ``config`` recording the pair).

    The data are prepared for the model's ``likelihood`` if it has one, else for the model's own ``binary_data``
    and ``check_support`` (without them the data are used as they are), binarised as ``config.binarization`` says.
    The model's ``plate_nesting`` is fixed here rather than guessed by the ELBO at its first call, which would draw
    random numbers at a different point of a resumed run.
    """
    # binary_data, check_support: the model's own if no likelihood; the binarisation is the config's.
    data.prepare(getattr(model, "likelihood", model), config.binarization)
    x = data.test_x_eval[: config.batch_size]
    params = discover_parameters(model, guide, x)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        model.plate_nesting = guess_plate_nesting(model, guide, (x[:1],), {})
    record = dict(zip(PAIR_KEYS, (label(model.fn), label(guide.fn)), strict=True))
    return params, dataclasses.replace(config, plugins={**config.plugins, **record})


def check_pair_run(plugins: dict[str, str], model: Any, guide: Any, where: Any) -> None:
    """One-line errors for loading a run of a user's pair without it, or a run of built-in modules with one."""
    own = PAIR_KEYS[0] in plugins
    if own and (model is None or guide is None):
        raise UserError(
            f"the run in {where} was trained with your own model and guide ({plugins[PAIR_KEYS[0]]}, "
            f"{plugins[PAIR_KEYS[1]]}), which pyro-vae cannot rebuild; load it in Python with "
            "load_run(DIR, model=..., guide=...)"
        )
    if not own and (model is not None or guide is not None):
        raise UserError(f"the run in {where} was built from its config; load it without model= and guide=")


__all__ = ["PROTOCOL", "MissingMethod", "PairModule", "as_pair", "discover_parameters"]
