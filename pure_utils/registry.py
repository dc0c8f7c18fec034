"""Registries: names that profiles and notebooks can write, mapped to what they build.

One idiom for every kind of named thing (datasets, embedders), as zennit names its composites:
``REGISTRY.register(name, target)`` with a callable, or with a ``"module:attribute"`` path that is
imported on first use, so that the engine can name a builder of the controlled benchmark
(``pure_utils.shapes``) without importing it.
"""
from __future__ import annotations

import importlib

__all__ = ["Registry", "lazy_submodules"]


class Registry:
    """A mapping ``name -> builder`` with lazily imported entries and helpful errors.

    Parameters
    ----------
    kind : str
        What the names stand for ("dataset", "embedder"); used in error messages.

    Examples
    --------
    >>> DATASETS = Registry("dataset")
    >>> DATASETS.register("generated", "pure_utils.data:GeneratedImages")
    >>> DATASETS.get("generated")  # doctest: +ELLIPSIS
    <class 'pure_utils.data.GeneratedImages'>
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict = {}

    def register(self, name: str, target=None):
        """Register ``target`` (a callable or ``"module:attribute"``) under ``name``.

        Without ``target``, returns a decorator. Names are case-insensitive; registering a name
        twice replaces the first entry.
        """
        if target is None:
            def decorator(obj):
                self._entries[name.lower()] = obj
                return obj
            return decorator
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"a lazy {self.kind} entry is 'module:attribute', got {target!r}")
        self._entries[name.lower()] = target
        return target

    def get(self, name: str):
        """The builder registered as ``name``; ``ValueError`` naming the known names otherwise."""
        key = str(name).lower()
        if key not in self._entries:
            raise ValueError(f"{self.kind} {name!r} not known; {self.kind}s: {', '.join(self)}")
        target = self._entries[key]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[key] = target
        return target

    def __contains__(self, name) -> bool:
        return str(name).lower() in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


def lazy_submodules(package: str):
    """A module ``__getattr__`` for ``package`` that imports its modules on first use.

    ``pu.study.tables`` then works after ``import pure_utils as pu`` alone; an unknown name is an
    ``AttributeError`` as usual.
    """
    def __getattr__(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
