"""One small registry class, reused for every extension kind (architectures, kinds, routers,
training methods, attacks, suites, data sets).

Duplicate names are an error; a missing name raises a ``KeyError`` that names the registry and
lists what it holds, so a typo never turns into a silent default.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map with decorator registration.

    Example::

        ARCHS = Registry("architecture")

        @ARCHS.register("resnet18")
        def resnet18(**kw): ...

        ARCHS.get("resnet18")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used bare it is a decorator."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def deco(o: T) -> T:
            self._add(name, o)
            return o

        return deco

    def _add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names, optionally filtered by a shell-style wildcard."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
