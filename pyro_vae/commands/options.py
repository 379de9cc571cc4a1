"""The dataclass -> argparse layer: one ``--option`` per field of ``VAEConfig`` and ``TrainConfig`` and per option
of every registered component, so that a new field, component or estimator appears on the command line with no
edit here.

``z_dim`` -> ``--z-dim``, ``jit`` -> ``--jit/--no-jit``, ``hidden`` -> ``--hidden 256 128``; a component's option
``channels`` of kind ``decoder`` -> ``--decoder-channels`` (into ``VAEConfig.options``), an estimator's option
``alpha`` -> ``--elbo-alpha`` (into ``TrainConfig.elbo_options``). Each kind's options have their own namespace
(``--prior-*``, ``--likelihood-*``, ``--encoder-*``, ``--decoder-*``, ``--guide-*``, ``--elbo-*``) that no other
flag uses, and are read with the type of the component chosen, so no component's option can clash with a flag.
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
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.presets import presets
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
    aliases: dict[str, list[str]] | None = None,
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
        flags = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, [])]
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=help_text, **kwargs)
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
    "labels": "none",
    "clip_norm": "no clipping",
    "image_size": "keep their size, the same for all",
    "preset": "none",
}
#: Metavars of the fields whose type (str) says nothing.
METAVARS = {
    "dataset": "{digits,mnist,fashion-mnist,static-mnist,FILE,DIR}",
    "data_dir": "DIR",
    "labels": "FILE",
    "device": "{auto,cpu,cuda,cuda:N}",
    "preset": "{" + ",".join([*presets(), "help"]) + "}",
}


#: VAEConfig fields that are not options: the data give x_shape; components' options have their own flags.
_NOT_OPTIONS = ("x_shape", "x_dim", "options")
#: TrainConfig fields that are not flags of their own: the estimator's options are --elbo-FIELD.
_NOT_TRAIN_OPTIONS = ("model", "plugins", "elbo_options")
#: The namespace key of a component option: "component:decoder:channels" (kind "elbo": the estimator's).
_COMPONENT = "component"
#: The kinds whose options are flags, and the field of the config that names the chosen one.
OPTION_KINDS = (*COMPONENTS, "elbo")
#: Old spellings of component options, kept as aliases: alias -> (kind, option).
ALIASES = {
    "--learn-prior": ("prior", "learn"),
    "--mixture-components": ("prior", "components"),
    "--vamp-learn-weights": ("prior", "learn_weights"),
    "--sigma": ("likelihood", "sigma"),
    "--sigma-per-pixel": ("likelihood", "per_pixel"),
    "--min-sigma": ("likelihood", "min_sigma"),
    "--alpha": ("elbo", "alpha"),
    "--layers": ("model", "layers"),
    "--labelled": ("model", "labelled"),
}
#: Old spellings of TrainConfig flags: alias -> field.
TRAIN_ALIASES = {"--num-particles": "particles"}


def option_registry(kind: str) -> Any:
    """The registry of ``kind``: a component kind's, or the estimators' for "elbo"."""
    return ESTIMATORS if kind == "elbo" else COMPONENTS[kind]


@dataclasses.dataclass
class ComponentOption:
    """The one flag ``--KIND-NAME`` of every component of ``kind`` that declares an option ``name``, and each one's
    type: the value is read with the type of the component chosen (``convert``), so two components may declare
    one name with different types without clashing."""

    kind: str
    name: str
    types: dict[str, Any]  # component name -> field type
    flag: str = ""

    @property
    def typed(self) -> bool:
        """argparse reads the value itself (every declaration has one type); else strings, read by ``convert``."""
        return len({repr(t) for t in self.types.values()}) == 1

    def argparse_kwargs(self) -> dict[str, Any]:
        if self.typed:
            return _argument(next(iter(self.types.values())))[0]
        if all(t is bool for t in self.types.values()):
            return {"action": argparse.BooleanOptionalAction}
        return {"nargs": "*", "metavar": "VALUE"}

    def convert(self, value: Any, component: str) -> Any:
        """The value for ``component`` (its declared type); one-line ``UserError`` if it is not one."""
        if self.typed:
            return _argument(next(iter(self.types.values())))[1](value)
        tp = self.types.get(component)
        if tp is None:  # not an option of the chosen component: its options dataclass says so, in one line
            return value
        return _read_as(tp, value if isinstance(value, list) else [value], self.flag)


def _read_as(tp: Any, texts: list[Any], flag: str) -> Any:
    """``texts`` (the strings after ``flag``) read as a value of type ``tp``."""
    kwargs, convert = _argument(tp)
    if kwargs.get("action") is argparse.BooleanOptionalAction:
        if len(texts) == 1 and str(texts[0]).lower() in ("true", "false", "on", "off", "1", "0"):
            return str(texts[0]).lower() in ("true", "on", "1")
        raise UserError(f"{flag} takes true or false here, got {' '.join(map(str, texts)) or 'nothing'}")
    parse = kwargs.get("type", str)
    try:
        values = [parse(t) for t in texts]
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise UserError(f"{flag}: invalid {kwargs.get('metavar', 'value')} value(s) {' '.join(texts)}") from None
    if "choices" in kwargs and any(v not in kwargs["choices"] for v in values):
        raise UserError(f"{flag} takes one of {', '.join(map(str, kwargs['choices']))}, got {' '.join(texts)}")
    if kwargs.get("nargs") is None:
        if len(values) != 1:
            raise UserError(f"{flag} takes one value here, got {len(values)}")
        return convert(values[0])
    if kwargs["nargs"] == "+" and not values:
        raise UserError(f"{flag} needs at least one value")
    return convert(values)


def _declarations(kind: str) -> dict[str, list[tuple[str, dataclasses.Field, Any, str]]]:
    """Option name -> [(component, field, type, help text)] of every registered component of ``kind``."""
    found: dict[str, list[tuple[str, dataclasses.Field, Any, str]]] = {}
    for name, component in option_registry(kind).items():
        if component.options is None:
            continue
        hints = typing.get_type_hints(component.options)
        docs = field_docs(component.options)
        for f in dataclasses.fields(component.options):
            found.setdefault(f.name, []).append((name, f, hints[f.name], docs.get(f.name, "")))
    return found


def _option_help(entries: list[tuple[str, dataclasses.Field, Any, str]], kind: str) -> str:
    parts = []
    for component, f, _, doc in entries:
        text = doc.rstrip(".") or f"the {component} {kind}'s option {f.name}"
        unset = re.search(r"\((?:None|none)\s*[:=]\s*([^()]*)\)", doc)
        if f.default is not dataclasses.MISSING:
            default = unset.group(1) if f.default is None and unset else _default_text(f.default)
            text += f" (default: {default})"
        parts.append(text if len(entries) == 1 else f"{component}: {text}")
    return plain("; ".join(parts))


def add_component_options(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """One ``--KIND-FIELD`` per option name of the components of each kind (``--prior-scale``) and of the estimators
    (``--elbo-alpha``), in help groups by component; old spellings as aliases (``ALIASES``). Every such flag
    begins with its kind, and no other flag does, so no component can clash with a built-in flag."""
    converters: dict[str, Any] = {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for kind in OPTION_KINDS:
        for name, entries in _declarations(kind).items():
            flag = f"--{kind}-{name}".replace("_", "-")
            option = ComponentOption(kind, name, {c: tp for c, _, tp, _ in entries}, flag)
            owner = entries[0][0]
            title = f"{kind} {owner!r} options" + (f" (with --{kind} {owner})" if kind != "elbo" else "")
            group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
            aliases = [a for a, target in ALIASES.items() if target == (kind, name)]
            dest = f"{_COMPONENT}:{kind}:{name}"
            group.add_argument(
                flag,
                *aliases,
                dest=dest,
                default=argparse.SUPPRESS,
                help=_option_help(entries, kind),
                **option.argparse_kwargs(),
            )
            converters[dest] = option
    return converters


def add_config_options(
    parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The VAEConfig (model), component, estimator and TrainConfig (training) options, in help groups."""
    extra, metavars = registry_help()
    metavars.update(METAVARS)
    shown = {**UNSET, "data_dir": str(default_data_dir()), **(defaults or {})}
    converters: dict[str, Any] = add_dataclass_options(
        parser.add_argument_group("model (VAEConfig)"), VAEConfig, (*_NOT_OPTIONS, *skip), shown, extra, metavars
    )
    converters.update(
        add_dataclass_options(
            parser.add_argument_group("training (TrainConfig)"),
            TrainConfig,
            (*_NOT_TRAIN_OPTIONS, *skip),
            shown,
            extra,
            metavars,
            aliases={field: [a for a, f in TRAIN_ALIASES.items() if f == field] for field in TRAIN_ALIASES.values()},
        )
    )
    converters.update(add_component_options(parser))
    return converters


def chosen(args: argparse.Namespace, kind: str, default: str | None = None) -> str:
    """The name of the component of ``kind`` (or estimator, "elbo") the command line chose, else ``default``, else
    the config's default."""
    value = getattr(args, kind, None)
    if value is None:
        value = default
    if value is None:
        cls = TrainConfig if kind == "elbo" else VAEConfig
        value = next(f.default for f in dataclasses.fields(cls) if f.name == kind)
    return option_registry(kind).canonical(value) or value


def given_options(
    args: argparse.Namespace, components: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(VAEConfig options, TrainConfig options) the user gave explicitly, converted to field values; components'
    options go into the VAEConfig's ``options``, the estimator's into ``elbo_options``. Each is read with the type
    of the component chosen on the command line (else ``components[kind]``, e.g. a resumed run's; else the
    default)."""
    converters: dict[str, Any] = args._converters
    model_fields = {f.name for f in dataclasses.fields(VAEConfig)}
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name not in converters:
            continue
        convert = converters[name]
        if isinstance(convert, ComponentOption):
            value = convert.convert(value, chosen(args, convert.kind, (components or {}).get(convert.kind)))
            if convert.kind == "elbo":
                train.setdefault("elbo_options", {})[convert.name] = value
            else:
                model.setdefault("options", {}).setdefault(convert.kind, {})[convert.name] = value
        else:
            (model if name in model_fields else train)[name] = convert(value)
    return model, train
