"""``Registry``: a name -> entry mapping whose unknown names are one-line errors with the choices listed.

Every registry of the project (priors, likelihoods, encoders, decoders, guides, estimators) is one. Names are
matched exactly first, then ignoring case (``--dataset MNIST``, ``--prior Standard``); an unknown name gets a
"did you mean" from ``difflib`` when one is close.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

from pyro_vae.errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice (difflib ratio >= 0.6), or ``""``."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f"; did you mean {original!r}?"


class Registry(MutableMapping[str, T], Generic[T]):
    """Names of one kind (``kind``: "prior", "decoder", ...) mapped to entries.

    ``registry[name]`` raises ``UserError`` (a one-line ``ValueError``) for an unknown name:
    ``unknown prior 'nope'; choose one of: gaussian, mixture, standard, vamp`` (sorted, or in registration
    order with ``sort_choices=False``). ``wrap`` turns whatever is assigned (``registry[name] = value``) into an
    entry, e.g. a plain factory into a ``Component``.
    """

    def __init__(
        self,
        kind: str,
        entries: dict[str, T] | None = None,
        wrap: Callable[[object], T] | None = None,
        sort_choices: bool = True,
    ) -> None:
        self.kind = kind
        self._wrap = wrap
        self._sort = sort_choices
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self[name] = entry

    def canonical(self, name: str) -> str | None:
        """The registered spelling of ``name`` (exact, else case-insensitive), or None."""
        if name in self._entries:
            return name
        folded = [n for n in self._entries if n.lower() == str(name).lower()]
        return folded[0] if len(folded) == 1 else None

    def unknown(self, name: object, what: str | None = None) -> UserError:
        """The one-line error for a name that is not registered (``what``: how to call it, default the kind)."""
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
        self._entries[name] = self._wrap(entry) if self._wrap is not None else entry  # type: ignore[assignment]

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, [{', '.join(self._entries)}])"
