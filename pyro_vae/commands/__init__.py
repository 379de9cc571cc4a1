"""CLI subcommands. Each module exposes ``add_parser(subparsers, name)`` which sets ``run`` as the default.

Register a new subcommand by adding its module to ``COMMANDS``.
"""

from __future__ import annotations

from types import ModuleType

from pyro_vae.commands import compare_estimators, evaluate, export, forecast, kl_ablation, plot, presets, train

COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "plot": plot,
    "kl-ablation": kl_ablation,
    "evaluate": evaluate,
    "compare-estimators": compare_estimators,
    "export": export,
    "presets": presets,
    "forecast": forecast,
}
