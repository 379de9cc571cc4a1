"""Training protocols of the literature as named presets (``pyro-vae train --preset NAME``, ``--preset help``).

A preset is one small file here holding a ``Preset``: the ``VAEConfig`` and ``TrainConfig`` values of a published
protocol, where it comes from, and what of it this project cannot do (``deviations``). Register a new one by adding
its module to ``_MODULES``. ``apply_preset`` puts the options given explicitly over the preset's values, and records
the preset's name in ``TrainConfig.preset`` (so ``config.json`` and a resumed run keep it). Depends on nothing but
the errors module: config and commands read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from pyro_vae.errors import UserError


@dataclass(frozen=True)
class Preset:
    """A published protocol: ``model`` (VAEConfig fields; component options under "options"), ``train``
    (TrainConfig fields), ``source`` (the paper and section, or code, each value comes from), ``evaluation`` (how
    the paper measured its number: run ``pyro-vae evaluate`` so), ``reference`` (the paper's result) and
    ``deviations`` (what the project does differently, and why)."""

    name: str
    summary: str
    source: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    evaluation: str = ""
    reference: str = ""
    deviations: tuple[str, ...] = ()


_MODULES = ("burda2016", "tomczak2018", "pythae")


def presets() -> dict[str, Preset]:
    """Every preset by name."""
    found = {}
    for module in _MODULES:
        preset = importlib.import_module(f"pyro_vae.presets.{module}").PRESET
        found[preset.name] = preset
    return found


def get_preset(name: str) -> Preset:
    """The preset ``name``; a one-line ``UserError`` listing the presets for any other name."""
    found = presets()
    if name not in found:
        raise UserError(f"unknown preset {name!r}; the presets are {', '.join(found)} (--preset help describes them)")
    return found[name]


def apply_preset(
    name: str | None, model: dict[str, Any], train: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(VAEConfig options, TrainConfig options): the preset's values with ``model`` and ``train`` (what the user gave
    explicitly) over them, component options merged per kind; ``train["preset"]`` names the preset. No preset
    (``name`` None): the options as given."""
    if name is None:
        return model, train
    preset = get_preset(name)
    merged_model = {**preset.model, **{k: v for k, v in model.items() if k != "options"}}
    options = {kind: dict(values) for kind, values in preset.model.get("options", {}).items()}
    for kind, values in (model.get("options") or {}).items():
        options[kind] = {**options.get(kind, {}), **values}
    if options:
        merged_model["options"] = options
    return merged_model, {**preset.train, **train, "preset": name}


def describe(preset: Preset) -> str:
    """A few lines on ``preset`` for ``--preset help``."""
    values = {**{k: v for k, v in preset.model.items() if k != "options"}, **preset.train}
    options = [f"{kind}.{k}={v}" for kind, o in preset.model.get("options", {}).items() for k, v in o.items()]
    settings = ", ".join([*(f"{k}={v}" for k, v in values.items()), *options])
    lines = [f"{preset.name}: {preset.summary}", f"  source: {preset.source}", f"  sets: {settings}"]
    if preset.evaluation:
        lines.append(f"  evaluation: {preset.evaluation}")
    if preset.reference:
        lines.append(f"  reference: {preset.reference}")
    lines += [f"  differs: {d}" for d in preset.deviations]
    return "\n".join(lines)
