"""One registry pattern for every plug-in kind: metrics, allocators, learners, datasets, models, sparse
backends, checkpoint formats and fitness kinds.

A :class:`Registry` maps names to entries (each a small frozen dataclass with at least ``name`` and
``summary``), in registration order. It reads like a mapping (``name in REG``, ``list(REG)``, ``REG[name]``), and
:meth:`Registry.check` is the one look-up that refuses an unknown name with the parameter, the allowed names and
the closest match. Front ends build their menus and help texts from ``REG.names()`` and ``REG.describe()``, so a
new plug-in appears everywhere once registered.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import WorkbenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Plugin:
    """The least an entry says: its name and a one-line summary for menus and help."""

    name: str
    summary: str = ""


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one plug-in kind; ``parameter`` is the run setting that names them (for errors)."""

    def __init__(self, kind: str, parameter: str | None = None):
        self.kind = kind
        self.parameter = parameter or kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name`` (a second entry of the same name is a programming error)."""
        if name in self._entries:
            raise RuntimeError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, make: Callable[..., T]) -> Callable[..., Callable]:
        """``@REG.decorator(make)(name, **fields)``: register ``make(name, fn, **fields)`` and return ``fn``."""

        def register(name: str, **fields):
            def wrap(fn):
                self.add(name, make(name, fn, **fields))
                return fn
            return wrap
        return register

    def check(self, name: object) -> T:
        """The entry of ``name``, or a WorkbenchError naming the parameter, the allowed names and the closest."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise WorkbenchError(f"{self.parameter}={name!r} is not allowed; allowed: {self.names()}{hint}")

    def names(self) -> list[str]:
        """The registered names, in registration order (the order of every menu)."""
        return list(self._entries)

    def describe(self, width: int = 15) -> str:
        """One help line per entry: name and summary."""
        return "\n".join(f"  {name:<{width}} {getattr(entry, 'summary', '')}" for name, entry in self._entries.items())

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._entries)})"
