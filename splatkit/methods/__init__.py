"""Methods (what is trained), strategies and plugins: the package's three extension points.

A method registers under the name that ``--method`` selects and that its checkpoints carry
(``payload["splatkit"]["method"]``), so ``Run.load_model``, ``eval``, ``render``, ``export`` and
``benchmark`` load any run without naming a model class. Methods outside the package register by
calling :func:`register_method` at import, or through the ``splatkit.methods`` entry-point group
(``name = "package.module:Class"``), which is read on the first look-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, Method, Plugin, RenderOutputs, TrainState
from splatkit.utils.registry import load_entry_points, register

__all__ = ["Batch", "Method", "Plugin", "RenderOutputs", "TrainState", "register_method", "method_class",
           "available_methods", "load_checkpoint", "method_of_payload"]

_METHODS: dict[str, type[Method]] = {}
_ENTRY_POINT_GROUP = "splatkit.methods"
_loaded_entry_points = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if not cls.name or not cls.checkpoint_format:
        raise TypeError(f"{cls.__name__} needs a name and a checkpoint_format")
    return register(_METHODS, cls, "method")


def _load_builtin_and_entry_points() -> None:
    global _loaded_entry_points
    from splatkit.methods import gaussian_splatting  # noqa: F401  (registers "3dgs")
    from splatkit.methods import nerf  # noqa: F401  (registers "nerf")

    if _loaded_entry_points:
        return
    _loaded_entry_points = True

    def add(obj) -> None:
        if isinstance(obj, type) and issubclass(obj, Method) and obj.name not in _METHODS:
            register_method(obj)

    load_entry_points(_ENTRY_POINT_GROUP, add)


def available_methods() -> list[str]:
    _load_builtin_and_entry_points()
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    _load_builtin_and_entry_points()
    if name not in _METHODS:
        raise SplatkitError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_of_payload(payload: dict) -> type[Method]:
    """The registered method a checkpoint payload belongs to (by its ``method`` tag; checkpoints
    written before methods existed are 3DGS's by their format name)."""
    _load_builtin_and_entry_points()
    meta = payload.get("splatkit") or {}
    name = meta.get("method")
    if name is None:
        name = next((n for n, c in _METHODS.items() if c.checkpoint_format == meta.get("format")), None)
    if name is None or name not in _METHODS:
        raise SplatkitError(f"checkpoint of an unknown method ({name or meta.get('format')!r}); known: "
                            f"{', '.join(sorted(_METHODS))}")
    cls = _METHODS[name]
    if meta.get("format") != cls.checkpoint_format:
        raise SplatkitError(f"checkpoint format {meta.get('format')!r} is not method {name!r}'s")
    if meta.get("version") != cls.checkpoint_version:
        raise SplatkitError(f"checkpoint format version {meta.get('version')} is not supported by this splatkit "
                            f"(reads version {cls.checkpoint_version})")
    return cls


def load_checkpoint(path: Union[str, Path], map_location="cpu", raw: bool = False):
    """``(model, payload)`` from any method's checkpoint file; clear errors for missing, corrupt or
    foreign files. ``raw``: the model as trained (for resuming), else as evaluation sees it."""
    from splatkit.utils.checkpoint import read_payload

    payload = read_payload(path, map_location)
    try:
        cls = method_of_payload(payload)
    except SplatkitError as exc:
        raise SplatkitError(exc.message, path) from None
    return cls.load_model(payload, map_location=map_location, raw=raw), payload
