"""Plugins: a user's own components from a module or a file, and the record a run keeps of them.

``load_plugin("my_priors")`` (a module on ``sys.path``) or ``load_plugin("path/to/my_prior.py")`` (a file) imports
it; what it registers (``register_prior``, ..., ``register_estimator``) is then usable by name. On the command line
that is ``--plugin MODULE_OR_FILE.py``, on every command. Installed packages need nothing: the registries load
their entry points (``pyro_vae.named``).

A training run records, for each of its components that is not built in, where it came from
(``TrainConfig.plugins``: ``{"prior:student-t": "/home/me/my_prior.py"}``), so that ``load_run``, ``evaluate``,
``plot`` and ``--resume`` import it again. A recorded plugin is imported only if this user has loaded that very
file before (``--plugin``, ``load_plugin`` or a training run that used it: the file's path is kept in
``trusted_plugins_file()``): a run directory from elsewhere can name a file, but never makes pyro-vae run code
that you did not run yourself. Anything missing is a one-line ``UserError`` naming the module, file or package.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pyro_vae.atomic import atomic_write_text
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.named import ENTRY_POINT, Registry, loading
from pyro_vae.registry import COMPONENTS

#: Every registry a plugin can add to, by kind.
REGISTRIES: dict[str, Registry] = {**COMPONENTS, "estimator": ESTIMATORS}
#: The source recorded for a component registered by a script run as ``python script.py`` (not importable).
SCRIPT = "__main__"

_loaded: dict[str, str] = {}  # resolved file -> module name, for files imported by path


def trusted_plugins_file() -> Path:
    """``$XDG_CONFIG_HOME/pyro-vae/trusted-plugins.json`` (default ``~/.config/...``): the files you loaded."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "pyro-vae" / "trusted-plugins.json"


def _trusted() -> set[str]:
    try:
        return set(json.loads(trusted_plugins_file().read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return set()


def _trust(origin: Path) -> None:
    files = _trusted()
    if str(origin) in files:
        return
    try:
        path = trusted_plugins_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"files": sorted(files | {str(origin)})}, indent=1) + "\n")
    except OSError:
        pass  # not remembered: loading the run later asks for --plugin again, which is safe


def is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def origin_of(spec: str) -> Path | None:
    """The file that decides whether ``spec`` is trusted, found without running any code: the file itself, or the
    top-level package of a module (``a`` of ``a.b.c``: its ``__init__.py``); None when there is none."""
    if is_file_spec(spec):
        path = Path(spec).expanduser()
        return path.resolve() if path.is_file() else None
    top = spec.partition(".")[0]
    if top in sys.modules and getattr(sys.modules[top], "__file__", None):
        return Path(sys.modules[top].__file__).resolve()
    try:
        found = importlib.util.find_spec(top)  # a top-level name: finds it without importing anything
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    if found.origin and found.origin not in ("built-in", "frozen"):
        return Path(found.origin).resolve()
    locations = list(found.submodule_search_locations or [])
    return Path(locations[0]).resolve() if locations else None


def load_plugin(spec: str) -> None:
    """Import the plugin ``spec``, a module name (``my_package.priors``) or a ``.py`` file, and trust it from now on
    (see the module docstring); the components it registers are recorded as coming from it. One-line ``UserError``
    if it cannot be found or fails to import."""
    spec = str(spec)
    if is_file_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"plugin file {spec} does not exist; give a .py file or an importable module name")
        path = path.resolve()
        if str(path) not in _loaded:
            name = "pyro_vae_plugin_" + re.sub(r"\W", "_", path.stem) + f"_{len(_loaded)}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            sys.modules[name] = module  # dataclasses and typing look the module up by name
            try:
                with loading(str(path)):
                    _run_plugin(spec, lambda: module_spec.loader.exec_module(module))  # type: ignore[union-attr]
            except UserError:
                del sys.modules[name]
                raise
            _loaded[str(path)] = name
        _trust(path)
        return
    if origin_of(spec) is None:
        raise UserError(f"plugin module {spec!r} is not importable; install it, or give the path of its .py file")
    if spec not in sys.modules:
        with loading(spec):
            _run_plugin(spec, lambda: importlib.import_module(spec))
    _trust(origin_of(spec))  # type: ignore[arg-type]


def _run_plugin(spec: str, run: Callable[[], object]) -> None:
    try:
        run()
    except UserError:
        raise
    except Exception as err:  # the user's code: any error, as one line naming the plugin
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(
            f"plugin {spec} failed to import: {type(err).__name__}{': ' + reason if reason else ''}"
        ) from None


def required_plugins(components: Mapping[str, str]) -> dict[str, str]:
    """``{"kind:name": source}`` for the components (kind -> name, e.g. ``{"prior": "student-t"}``) that are not
    built in; the importable ones are trusted (this process ran them)."""
    needed: dict[str, str] = {}
    for kind, name in components.items():
        source = REGISTRIES[kind].source(name)
        if source is None:
            continue
        needed[f"{kind}:{REGISTRIES[kind].canonical(name)}"] = source
        if source != SCRIPT and not source.startswith(ENTRY_POINT):
            origin = origin_of(source)
            if origin is not None:
                _trust(origin)
    return needed


def require_plugins(recorded: Mapping[str, str]) -> None:
    """Make every component in ``recorded`` (a run's ``TrainConfig.plugins``) available: already registered, or
    imported from its trusted plugin; otherwise a one-line ``UserError`` saying what to install or pass."""
    for key, source in recorded.items():
        kind, _, name = key.partition(":")
        registry = REGISTRIES.get(kind)
        if registry is None or name in registry:
            continue
        what = f"the run's {kind} {name!r}"
        if source.startswith(ENTRY_POINT):
            package = source[len(ENTRY_POINT) :]
            raise UserError(f"{what} comes from the package {package}, which is not installed; pip install {package}")
        if source == SCRIPT:
            raise UserError(
                f"{what} was registered by the script that trained it; register it again before loading the run, "
                "or move it into a module or file and pass --plugin"
            )
        origin = origin_of(source)
        if origin is None:
            raise UserError(f"{what} comes from the plugin {source}, which is not there; pass --plugin with its place")
        if str(origin) not in _trusted():
            raise UserError(
                f"{what} comes from the plugin {source}, which you have not loaded on this machine; pass "
                f"--plugin {source} if you trust it (a run never imports code by itself)"
            )
        load_plugin(source)
        if name not in registry:
            raise UserError(
                f"{what} is not registered by the plugin {source} any more; pass --plugin with the one that does"
            )


__all__ = ["load_plugin", "require_plugins", "required_plugins", "trusted_plugins_file"]
