"""The plugin registry: which plugins exist, their nested config sections, and which a run uses.

A config enables plugins by name (``TrainConfig.regularizers``, ``--regularizers a,b``; ``mask``
too when ``use_masks`` is set) and sets them in ``TrainConfig.plugins``, one JSON object per
plugin (``{"depth_ranking": {"weight": 0.2}}``, ``--plugin.depth-ranking.weight 0.2``). The
settings of a plugin are its ``Config`` dataclass, so unknown keys and wrong types are errors.

Plugins outside this layer (the sparse-view priors in :mod:`splatkit.priors`, third-party
packages) are found through the ``splatkit.plugins`` entry-point group: the loop never imports
them by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from typing import Any, Optional

from splatkit.errors import SplatkitError
from splatkit.methods.base import Plugin
from splatkit.utils.registry import load_entry_points, register
from splatkit.utils.typecheck import coerce_dataclass_values

_PLUGINS: dict[str, type[Plugin]] = {}
ENTRY_POINT_GROUP = "splatkit.plugins"
# Plugins of this layer, imported on the first look-up so that they register.
_BUILTIN_MODULES = ("splatkit.methods.mask_loss", "splatkit.methods.backdrop_prune")
_loaded = False


def register_plugin(cls: type[Plugin]) -> type[Plugin]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    return register(_PLUGINS, cls, "plugin")


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    load_entry_points(ENTRY_POINT_GROUP)  # modules whose @register_plugin classes register on import


def plugin_classes() -> dict[str, type[Plugin]]:
    _load_plugins()
    return dict(_PLUGINS)


def plugin_class(name: str) -> type[Plugin]:
    classes = plugin_classes()
    if name not in classes:
        raise SplatkitError(f"unknown plugin {name!r}; known: {', '.join(sorted(classes)) or 'none'} (plugins "
                            f"register through the {ENTRY_POINT_GROUP!r} entry points of installed packages: "
                            "after changing pyproject.toml, reinstall with pip install -e .)")
    return classes[name]


def legacy_keys() -> dict[str, list[tuple[str, str]]]:
    """Old flat config keys and the ``(plugin, setting)`` pairs each now sets."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, cls in plugin_classes().items():
        for old, setting in cls.legacy_keys.items():
            out.setdefault(old, []).append((name, setting))
    return out


def check_plugin_settings(sections: dict[str, Any], source: str = "config") -> dict[str, dict]:
    """``{plugin: {setting: value}}`` with every name, key and type checked."""
    if not isinstance(sections, dict):
        raise SplatkitError(f"{source}: plugins must be a JSON object of plugin sections")
    out = {}
    for name, values in sections.items():
        key = name.replace("-", "_")
        cls = plugin_class(key)
        if not isinstance(values, dict):
            raise SplatkitError(f"{source}: plugins.{key} must be a JSON object, got {values!r}")
        out[key] = coerce_dataclass_values(cls.Config, values, source, f"plugins.{key}")
    return out


def in_range(default, lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
    """A plugin setting whose value must lie between ``lo`` and ``hi`` (checked when a config is
    resolved): ``weight: float = in_range(0.2)`` is a weight >= 0."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


def plugin_settings(cls: type[Plugin], sections: dict[str, dict]):
    """The ``Config`` instance of plugin ``cls`` from the config's sections (defaults elsewhere),
    every :func:`in_range` setting checked."""
    values = sections.get(cls.name, {})
    try:
        settings = cls.Config(**values)
    except TypeError as exc:
        raise SplatkitError(f"plugins.{cls.name}: {exc}") from None
    for f in dataclasses.fields(settings):
        if "range" not in f.metadata:
            continue
        lo, hi, lo_open, hi_open = f.metadata["range"]
        v = getattr(settings, f.name)
        if not ((lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)):
            raise SplatkitError(f"plugins.{cls.name}.{f.name} must be in {'(' if lo_open else '['}{lo}, {hi}"
                                f"{')' if hi_open or hi == math.inf else ']'}, got {v}")
    return settings


def enabled_plugin_names(config) -> list[str]:
    """The plugins the config asks for, ``mask`` first when ``use_masks`` is set, and
    ``backdrop_prune`` when ``prune_backdrop`` is.

    Presets choose the losses and ``depth_prior`` the data they use: plugins that need a depth
    prior are left out with a warning when none is given (so a sparse preset still trains where
    no prior exists), and a prior that no plugin uses is reported too."""
    names = list(dict.fromkeys((["mask"] if config.use_masks else []) + list(config.regularizers)
                               + (["backdrop_prune"] if getattr(config, "prune_backdrop", None) else [])))
    classes = plugin_classes()
    unknown = [n for n in names if n not in classes]
    if unknown:
        plugin_class(unknown[0])  # raises, naming the known ones
    depth = [n for n in names if classes[n].needs_depth_prior]
    prior = getattr(config, "depth_prior", "none")
    if depth and prior == "none":
        warnings.warn(f"no depth prior given, so the depth losses {', '.join(depth)} are off; pass "
                      "--depth-prior files (depth/ beside the images) or a depth model", stacklevel=2)
        names = [n for n in names if not classes[n].needs_depth_prior]
    elif prior != "none" and not depth:
        warnings.warn(f"depth prior {prior!r} is not used: no depth loss is enabled (--regularizers "
                      "depth_ranking,depth_continuity, or --preset sparse)", stacklevel=2)
    return names


def build_plugins(config, method_name: Optional[str] = None) -> list[Plugin]:
    out = []
    for name in enabled_plugin_names(config):
        cls = plugin_class(name)
        if method_name is not None and cls.applies_to is not None and method_name not in cls.applies_to:
            raise SplatkitError(f"plugin {name!r} works with method(s) {', '.join(cls.applies_to)}, "
                                f"not {method_name!r}")
        out.append(cls(config, plugin_settings(cls, config.plugins)))
    return out
