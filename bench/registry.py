"""Name -> object registries for methods, data sets and metrics, with uniqueness checks."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection; registering a taken name is an error, looking up an unknown one lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._pending: list[str] = []  # modules that register entries, imported on the first lookup

    def load_from(self, *modules: str) -> None:
        """Import ``modules`` (which register entries here) only when the registry is first read, so that
        importing the package that declares them stays cheap (metrics pull in scipy and POT)."""
        self._pending.extend(modules)

    def _load(self) -> None:
        while self._pending:
            importlib.import_module(self._pending.pop(0))

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '-' and '_'")

        def add(o: T) -> T:
            if name in self._items and not replace and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        if name not in self._items:
            self._load()
        try:
            return self._items[name]
        except KeyError:
            raise BenchError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}") from None

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)


METHODS: Registry = Registry("method")
DATASETS: Registry = Registry("dataset")
METRICS: Registry = Registry("metric")


def register_method(name: str) -> Callable[[T], T]:
    return METHODS.register(name)


def register_dataset(name: str) -> Callable[[T], T]:
    return DATASETS.register(name)


def register_metric(name: str) -> Callable[[T], T]:
    return METRICS.register(name)


# The built-in providers, imported by name when the registries are first needed (the same discovery as the
# ``bench.methods`` entry points of installed packages): this module, the plugin API's base, imports none of them.
BUILTIN_PACKAGES = ("bench.datasets", "bench.eval.metrics", "bench.methods")
_loaded = False


def load_builtins() -> None:
    """Import the built-in registrations and the ``bench.methods`` entry points of installed packages."""
    from importlib import metadata

    global _loaded
    if _loaded:
        return
    for name in BUILTIN_PACKAGES:
        importlib.import_module(name)
    for ep in metadata.entry_points(group="bench.methods"):
        if ep.name in METHODS:
            continue
        try:
            METHODS.register(ep.name, ep.load())
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the suite
            raise BenchError(f"entry point bench.methods:{ep.name} ({ep.value}) failed to load: {e}") from None
    _loaded = True
