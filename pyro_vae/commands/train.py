"""``pyro-vae train``: train a VAE and write a run directory (config, metrics, checkpoint, figures).

The model options are generated from ``VAEConfig``'s dataclass fields and the training options from
``TrainConfig``'s (``z_dim`` -> ``--z-dim``, ``learn_prior`` -> ``--learn-prior/--no-learn-prior``,
``hidden`` -> ``--hidden 256 128``), so a field added to either appears here with no edit; x_dim comes
from the data. Help texts come from the classes' "Fields:" docstrings; the choices for ``--prior``,
``--likelihood``, ``--decoder`` and ``--elbo`` from the registries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_vae.config import VAEConfig
from pyro_vae.data import BUILTIN_DATASETS

#: Namespace keys that are not config fields.
_NOT_CONFIG = {"command", "run", "out", "resume", "overwrite", "progress"}


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> help text, parsed from the "Fields:" section of ``cls``'s docstring."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Fields:") + 1
    except StopIteration:
        return docs
    current: list[str] = []
    for line in lines[start:]:
        m = re.match(r"^\s+([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*):\s+(.*)$", line)
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            for n in current:
                docs[n] = m.group(2).strip()
        elif line.strip() and current:
            for n in current:
                docs[n] += " " + line.strip()
        elif not line.strip() and docs:
            break
    return docs


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({err.msg})") from None


def _argument(tp: Any) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    """argparse keyword arguments for a field of type ``tp``, and the conversion applied after parsing."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = False
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = tuple(a for a in args if a is not type(None))
        tp = rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 - built from a runtime tuple
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    scalars = (int, float, str)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}, lambda v: v
    if tp in scalars:
        return {"type": _optional(tp) if optional else tp, "metavar": tp.__name__.upper()}, lambda v: v
    if origin in (tuple, list) and args and args[0] in scalars:
        as_seq = tuple if origin is tuple else list
        nargs = "*" if optional else "+"
        return {"type": args[0], "nargs": nargs, "metavar": args[0].__name__.upper()}, as_seq
    if origin in (typing.Union, types.UnionType):
        # e.g. float | list[float]: one value or one per dimension.
        scalar = next((a for a in args if a in scalars), None)
        if scalar is not None and all(a in scalars or typing.get_origin(a) in (list, tuple) for a in args):
            return {"type": scalar, "nargs": "+", "metavar": scalar.__name__.upper()}, (
                lambda v: v[0] if len(v) == 1 else list(v)
            )
    if origin is typing.Literal:
        return {"choices": list(args)}, lambda v: v
    return {"type": _json_value, "metavar": "JSON"}, lambda v: v


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) if value else "none"
    return str(value)


def add_dataclass_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    extra_help: dict[str, str] | None = None,
) -> dict[str, Callable[[Any], Any]]:
    """Add one ``--option`` per dataclass field of ``cls`` (except ``skip``); return name -> converter.

    Options default to ``argparse.SUPPRESS``, so the parsed namespace holds only what the user gave;
    ``defaults`` only changes the default shown in the help.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = defaults or {}
    extra_help = extra_help or {}
    converters = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs, convert = _argument(hints[f.name])
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        text = docs.get(f.name, f"the {cls.__name__} field {f.name}")
        if f.name in extra_help:
            text += f" {extra_help[f.name]}"
        help_text = f"{text} (default: {_default_text(default)})".replace("%", "%%")
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS, help=help_text, **kwargs
        )
        converters[f.name] = convert
    return converters


def registry_help() -> dict[str, str]:
    """The current names in the registries, for the help of --prior, --likelihood, --decoder, --elbo."""
    from pyro_vae.estimators import ESTIMATORS
    from pyro_vae.registry import DECODERS, LIKELIHOODS, PRIORS

    return {
        "prior": f"One of: {', '.join(PRIORS)}.",
        "likelihood": f"One of: {', '.join(LIKELIHOODS)}.",
        "decoder": f"One of: {', '.join(DECODERS)}.",
        "elbo": f"One of: {', '.join(ESTIMATORS)}.",
    }


def add_config_options(
    parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> dict[str, Callable[[Any], Any]]:
    """The VAEConfig (model) and TrainConfig (training) options, in two help groups."""
    from pyro_vae.train import TrainConfig

    extra = registry_help()
    converters = add_dataclass_options(
        parser.add_argument_group("model (VAEConfig)"), VAEConfig, ("x_dim", *skip), defaults, extra
    )
    converters.update(
        add_dataclass_options(
            parser.add_argument_group("training (TrainConfig)"), TrainConfig, ("model", *skip), defaults, extra
        )
    )
    return converters


def given_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(VAEConfig options, TrainConfig options) the user gave explicitly, converted to field values."""
    converters: dict[str, Callable[[Any], Any]] = args._converters
    model_fields = {f.name for f in dataclasses.fields(VAEConfig)}
    model, train = {}, {}
    for name, value in vars(args).items():
        if name in _NOT_CONFIG or name.startswith("_"):
            continue
        value = converters[name](value)
        (model if name in model_fields else train)[name] = value
    for name in ("dataset", "labels", "data_dir"):
        # Store user paths absolute, so `pyro-vae plot DIR` works from any directory.
        value = train.get(name)
        if value is not None and value not in BUILTIN_DATASETS and Path(value).exists():
            train[name] = str(Path(value).resolve())
    return model, train


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="train a VAE; write config, metrics, checkpoint and figures to --out",
        description="Train a VAE by SVI and write DIR/config.json, DIR/metrics.jsonl (one record per epoch: "
        "train loss, test ELBO, KL and reconstruction terms, nats per example), DIR/checkpoint.pt and figures.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="run directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from its checkpoint (options given here override the stored config; "
        "only --epochs, --device, --data-dir, --threads, --download may change)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in DIR")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    converters = add_config_options(parser)
    parser.set_defaults(run=run, _converters=converters)
    return parser


def run(args: argparse.Namespace) -> int:
    from pyro_vae.checkpoint import CHECKPOINT, load_checkpoint
    from pyro_vae.data import load_data
    from pyro_vae.train import TrainConfig, train

    model_opts, train_opts = given_options(args)
    data = None
    if args.resume:
        stored = TrainConfig.from_json(load_checkpoint(args.out / CHECKPOINT)["config"])
        d = stored.to_dict()
        d["model"].update(model_opts)
        d.update(train_opts)
        config = TrainConfig.from_dict(d)
    else:
        # Check the options before loading the data, which can take long; x_dim comes from the data.
        TrainConfig(model=VAEConfig(x_dim=1, **model_opts), **train_opts)
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "model"}
        opts = {**defaults, **train_opts}
        data = load_data(opts["dataset"], data_dir=opts["data_dir"], labels=opts["labels"], download=opts["download"])
        config = TrainConfig(model=VAEConfig(x_dim=data.x_dim, **model_opts), **train_opts)
    # Ctrl-C / SIGTERM: TrainingInterrupted, a one-line message and exit 128 + signum from pyro_vae.cli.
    result = train(config, args.out, resume=args.resume, progress=args.progress, data=data, overwrite=args.overwrite)
    print_result(result)
    return 0


def print_result(result: Any) -> None:
    """One line of final metrics and where the run is."""
    if result.metrics:
        last = result.metrics[-1]
        print(
            f"{result.out_dir}: epoch {last['epoch']}, test ELBO {last['test_elbo']:.3f} nats/example "
            f"(reconstruction {last['test_recon']:.3f}, KL {last['test_kl']:.3f})"
        )
    if result.figures:
        print(f"figures: {', '.join(str(p) for p in result.figures)}")
