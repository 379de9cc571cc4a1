"""``pyro-vae presets``: the published protocols ``pyro-vae train --preset NAME`` sets (``pyro_vae.presets``)."""

from __future__ import annotations

import argparse

from pyro_vae.presets import describe, get_preset, presets


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="list the presets of pyro-vae train --preset: each protocol's values, source and deviations",
        description="List the presets (or the one named): the VAEConfig and TrainConfig values each sets, the paper "
        "or code they come from, how the paper evaluated, its number, and what this project does differently.",
    )
    parser.add_argument("name", nargs="?", default=None, metavar="NAME", help="one preset (default: all)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    chosen = [get_preset(args.name)] if args.name else list(presets().values())
    print("\n\n".join(describe(p) for p in chosen))
    return 0
