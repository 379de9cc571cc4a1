"""CLI subcommands. Each module exposes ``add_parser(subparsers, name)`` which sets ``run`` as the default.

Register a new subcommand by adding its module to ``COMMANDS``.
"""

from __future__ import annotations

from types import ModuleType

COMMANDS: dict[str, ModuleType] = {}
