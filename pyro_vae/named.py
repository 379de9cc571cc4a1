"""``Registry``: a name -> entry mapping whose unknown names are one-line errors with the choices listed.

Every registry of the project (priors, likelihoods, encoders, decoders, guides, estimators) is one. Names are
matched exactly first, then ignoring case (``--dataset MNIST``, ``--prior Standard``); an unknown name gets a
"did you mean" from ``difflib`` when one is close.

A registry also remembers where each entry added after its built-ins came from (``source(name)``): the plugin being
loaded (``loading(source)``, used by ``pyro_vae.plugins``), else the module that registered it. And it finds the
entries of installed packages: those of its ``entry_points`` group (e.g. ``pyro_vae.priors``), loaded the first
time the registry is used, as pytest and setuptools load their plugins.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator, MutableMapping
from importlib import metadata
from typing import Generic, TypeVar

from pyro_vae.errors import UserError

T = TypeVar("T")

#: The source recorded for an entry point: ``ENTRY_POINT + <distribution name>``.
ENTRY_POINT = "entry-point:"
#: The plugins being loaded now, innermost last (``loading``).
_LOADING: list[str] = []


def did_you_mean(name: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice (difflib ratio >= 0.6), or ``""``."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f"; did you mean {original!r}?"


@contextlib.contextmanager
def loading(source: str) -> Iterator[None]:
    """Entries registered inside this block come from the plugin ``source`` (a module name or a file path)."""
    _LOADING.append(source)
    try:
        yield
    finally:
        _LOADING.pop()


def _registering_module() -> str:
    """The module that called into the registry: the first frame outside pyro_vae and importlib."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "pyro_vae" or name.startswith(("pyro_vae.", "importlib", "contextlib"))):
            return name
        frame = frame.f_back
    return "__main__"


class Registry(MutableMapping[str, T], Generic[T]):
    """Names of one kind (``kind``: "prior", "decoder", ...) mapped to entries.

    ``registry[name]`` raises ``UserError`` (a one-line ``ValueError``) for an unknown name:
    ``unknown prior 'nope'; choose one of: gaussian, mixture, standard, vamp`` (sorted, or in registration
    order with ``sort_choices=False``). ``wrap(value, name)`` turns whatever is assigned (``registry[name] = value``)
    into an entry, e.g. a plain factory into a ``Component``. ``entries`` are the built-ins (no source);
    ``entry_points`` names the group of installed packages' entries.
    """

    def __init__(
        self,
        kind: str,
        entries: dict[str, T] | None = None,
        wrap: Callable[[object, str], T] | None = None,
        sort_choices: bool = True,
        entry_points: str | None = None,
    ) -> None:
        self.kind = kind
        self.entry_points = entry_points
        self._wrap = wrap
        self._sort = sort_choices
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        for name, entry in (entries or {}).items():
            self._entries[name] = self._wrap(entry, name) if self._wrap is not None else entry  # type: ignore
        self._installed_loaded = entry_points is None

    def _load_installed(self) -> None:
        """Register the entries of installed packages (``entry_points`` group), once; one line if one fails."""
        if self._installed_loaded:
            return
        self._installed_loaded = True
        for ep in metadata.entry_points(group=self.entry_points):
            package = ep.dist.name if ep.dist is not None else ep.value.partition(":")[0]
            try:
                with loading(ENTRY_POINT + package):
                    entry = ep.load()
                    if ep.name not in self._entries:  # a module may register its entries itself
                        self[ep.name] = entry
            except Exception as err:  # any failure of a third-party import: one line naming the package
                reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise UserError(
                    f"the installed package {package!r} failed to load its {self.kind} {ep.name!r} ({ep.value}): "
                    f"{type(err).__name__}{': ' + reason if reason else ''}; fix or uninstall it "
                    f"(pip uninstall {package})"
                ) from None

    def canonical(self, name: str) -> str | None:
        """The registered spelling of ``name`` (exact, else case-insensitive), or None."""
        self._load_installed()
        if name in self._entries:
            return name
        folded = [n for n in self._entries if n.lower() == str(name).lower()]
        return folded[0] if len(folded) == 1 else None

    def source(self, name: str) -> str | None:
        """Where the entry ``name`` came from: a plugin module or file, ``entry-point:<package>``, the module that
        registered it (``__main__`` for a script); None for a built-in."""
        found = self.canonical(name)
        return None if found is None else self._sources.get(found)

    def unknown(self, name: object, what: str | None = None) -> UserError:
        """The one-line error for a name that is not registered (``what``: how to call it, default the kind)."""
        self._load_installed()
        names = sorted(self._entries) if self._sort else list(self._entries)
        hint = did_you_mean(str(name), names) if isinstance(name, str) else ""
        return UserError(f"unknown {what or self.kind} {name!r}; choose one of: {', '.join(names)}{hint}")

    def __getitem__(self, name: str) -> T:
        found = self.canonical(name) if isinstance(name, str) else None
        if found is None:
            raise self.unknown(name)
        return self._entries[found]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None

    def __setitem__(self, name: str, entry: object) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        self._entries[name] = self._wrap(entry, name) if self._wrap is not None else entry  # type: ignore
        self._sources[name] = _LOADING[-1] if _LOADING else _registering_module()

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        self._sources.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        self._load_installed()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load_installed()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, [{', '.join(self._entries)}])"
