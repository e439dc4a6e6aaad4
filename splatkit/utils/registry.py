"""Name -> class registries filled at import time and from installed packages' entry points (how
methods and plugins outside splatkit make themselves known)."""

from __future__ import annotations

import warnings
from typing import Callable


def register(registry: dict, cls: type, kind: str) -> type:
    """Add ``cls`` under ``cls.name``; a different class under a taken name is an error (the same
    class re-imported, e.g. a reloaded module, replaces itself)."""
    old = registry.get(cls.name)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"{kind} name {cls.name!r} is already taken by {old.__name__}")
    registry[cls.name] = cls
    return cls


def load_entry_points(group: str, on_load: Callable[[object], None] = lambda obj: None) -> None:
    """Load every entry point of ``group``; ``on_load(obj)`` sees what each one names. A broken
    third-party package gets a warning, not a crash of splatkit."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as exc:
            warnings.warn(f"{group} entry point {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=3)
            continue
        on_load(obj)
