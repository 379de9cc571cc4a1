"""The dataclass -> argparse layer: one ``--option`` per field of ``VAEConfig`` and ``TrainConfig`` and per option
of every registered component, so that a new field, component or estimator appears on the command line with no
edit here.

``z_dim`` -> ``--z-dim``, ``learn_prior`` -> ``--learn-prior/--no-learn-prior``, ``hidden`` -> ``--hidden 256 128``;
a component's option ``channels`` of kind ``decoder`` -> ``--decoder-channels`` (into ``VAEConfig.options``).
Help texts come from the classes' "Fields:" docstrings, choices from the registries. Options default to
``argparse.SUPPRESS``, so the parsed namespace holds only what the user gave.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from pyro_vae.config import TrainConfig, VAEConfig
from pyro_vae.data import default_data_dir
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.registry import COMPONENTS


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


def plain(text: str) -> str:
    """Help text without docstring markup (````name````) or "(None: ...)" (the default shown says it), with
    argparse's ``%`` escaped."""
    text = re.sub(r"\s*\((?:None|none)\s*[:=][^()]*\)", "", text)
    return re.sub(r"``(.+?)``", r"\1", text).replace("%", "%%")


def add_dataclass_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    extra_help: dict[str, str] | None = None,
    metavars: dict[str, str] | None = None,
) -> dict[str, Callable[[Any], Any]]:
    """Add one ``--option`` per dataclass field of ``cls`` (except ``skip``); return name -> converter.

    Options default to ``argparse.SUPPRESS``, so the parsed namespace holds only what the user gave;
    ``defaults`` only changes the default shown in the help (a string there is shown as it is: what a None
    default means). ``extra_help`` is appended to a field's help, ``metavars`` replace the type's name.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults, extra_help, metavars = defaults or {}, extra_help or {}, metavars or {}
    converters = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kwargs, convert = _argument(hints[f.name])
        if f.name in metavars:
            kwargs["metavar"] = metavars[f.name]
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        text = docs.get(f.name, f"the {cls.__name__} field {f.name}").rstrip(".")
        if f.name in extra_help:
            text += f"{extra_help[f.name]}"
        help_text = plain(f"{text} (default: {_default_text(default)})")
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS, help=help_text, **kwargs
        )
        converters[f.name] = convert
    return converters


def _choices(names: list[str]) -> str:
    return "{" + ",".join(names) + "}"


def registry_help() -> tuple[dict[str, str], dict[str, str]]:
    """(help text, metavar) of --prior, --likelihood, --encoder, --decoder, --guide and --elbo: the names in the
    registries now (a plugin's too) and what each is."""
    texts, metavars = {}, {}
    for kind, registry in COMPONENTS.items():
        described = [f"{n} = {c.description}" if c.description else n for n, c in registry.items()]
        texts[kind] = ": " + "; ".join(described)
        metavars[kind] = _choices(list(registry))
    texts["elbo"] = ": " + "; ".join(f"{n} = {spec.value}" for n, spec in ESTIMATORS.items())
    texts["elbo"] += "; jit-NAME = NAME with --jit"
    # What --jit assumes and what its check can catch (pyro_vae/step.py): said where the flag is.
    texts["jit"] = (
        "; off, the model and guide run as Pyro runs them. Assumes control flow that depends only on shapes and no "
        "Python state read at call time: at the first step of each batch shape the compiled loss and gradients are "
        "checked against the uncompiled ones on the same draws, and any difference or tracing error trains "
        "uncompiled (one line says why); a value or branch that changes only after that step is not caught"
    )
    metavars["elbo"] = _choices(list(ESTIMATORS))
    return texts, metavars


#: What a None default means, shown as the default in the help instead of "None".
UNSET = {
    "encoder_hidden": "those of --hidden",
    "decoder_hidden": "those of --hidden",
    "labels": "none",
    "clip_norm": "no clipping",
    "image_size": "keep their size, the same for all",
}
#: Metavars of the fields whose type (str) says nothing.
METAVARS = {
    "dataset": "{digits,mnist,fashion-mnist,FILE,DIR}",
    "data_dir": "DIR",
    "labels": "FILE",
    "device": "{auto,cpu,cuda,cuda:N}",
}


#: VAEConfig fields that are not options: the data give x_shape; components' options have their own flags.
_NOT_OPTIONS = ("x_shape", "x_dim", "options")
#: The namespace key of a component option: "component:decoder:channels".
_COMPONENT = "component"


def add_component_options(parser: argparse.ArgumentParser, taken: set[str]) -> dict[str, Callable[[Any], Any]]:
    """``--KIND-FIELD`` for every field of every registered component's options dataclass (one flag per name even
    when two components of a kind declare it; they must agree on its type)."""
    converters: dict[str, Callable[[Any], Any]] = {}
    seen: dict[str, tuple[str, Any]] = {}
    for kind, registry in COMPONENTS.items():
        for name, component in registry.items():
            if component.options is None:
                continue
            hints = typing.get_type_hints(component.options)
            docs = field_docs(component.options)
            group = parser.add_argument_group(f"{kind} {name!r} options")
            for f in component.option_fields():
                flag = f"--{kind}-{f.name}".replace("_", "-")
                if flag in taken:
                    raise ValueError(f"{kind} {name!r} option {f.name!r} clashes with the existing option {flag}")
                if flag in seen:
                    if seen[flag][1] != hints[f.name]:
                        raise ValueError(f"{flag} has two types: {seen[flag][1]} ({seen[flag][0]}) and {hints[f.name]}")
                    continue
                seen[flag] = (name, hints[f.name])
                kwargs, convert = _argument(hints[f.name])
                default = "" if f.default is dataclasses.MISSING else f" (default: {_default_text(f.default)})"
                text = docs.get(f.name, f"the {name} {kind}'s option {f.name}").rstrip(".") + default
                dest = f"{_COMPONENT}:{kind}:{f.name}"
                group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=plain(text), **kwargs)
                converters[dest] = convert
    return converters


def add_config_options(
    parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> dict[str, Callable[[Any], Any]]:
    """The VAEConfig (model), component and TrainConfig (training) options, in help groups."""
    extra, metavars = registry_help()
    metavars.update(METAVARS)
    shown = {**UNSET, "data_dir": str(default_data_dir()), **(defaults or {})}
    converters = add_dataclass_options(
        parser.add_argument_group("model (VAEConfig)"), VAEConfig, (*_NOT_OPTIONS, *skip), shown, extra, metavars
    )
    converters.update(
        add_dataclass_options(
            parser.add_argument_group("training (TrainConfig)"),
            TrainConfig,
            ("model", "plugins", *skip),
            shown,
            extra,
            metavars,
        )
    )
    taken = {option for action in parser._actions for option in action.option_strings}
    converters.update(add_component_options(parser, taken))
    return converters


def given_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(VAEConfig options, TrainConfig options) the user gave explicitly, converted to field values; components'
    options go into the VAEConfig's ``options``."""
    converters: dict[str, Callable[[Any], Any]] = args._converters
    model_fields = {f.name for f in dataclasses.fields(VAEConfig)}
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name not in converters:
            continue
        value = converters[name](value)
        if name.startswith(f"{_COMPONENT}:"):
            _, kind, option = name.split(":")
            model.setdefault("options", {}).setdefault(kind, {})[option] = value
        else:
            (model if name in model_fields else train)[name] = value
    return model, train
