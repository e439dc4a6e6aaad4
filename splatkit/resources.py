"""Where the files that ship with splatkit live: presets, protocol split files, C++ sources.

They are kept (and reviewed) in the checkout's top-level ``configs/``, ``data/splits/`` and
``cuda/cpu/``. A wheel (``pip install .``) ships them inside the package as ``splatkit/_configs``,
``splatkit/_splits`` and ``splatkit/_cpu_sources`` (the ``package-dir`` mappings in
pyproject.toml); a checkout or an editable install has no such folders, so the checkout's own
are used. Every function returns a real filesystem path (splatkit is never imported from a zip).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The checkout root, when splatkit is imported from one (a source tree or an editable install).
_CHECKOUT = Path(__file__).resolve().parents[1]


def _data_dir(packaged: str, *in_checkout: str) -> Path:
    installed = Path(str(resources.files("splatkit").joinpath(packaged)))
    if installed.is_dir():
        return installed
    return _CHECKOUT.joinpath(*in_checkout)


def configs_dir() -> Path:
    """The presets folder (``configs/NAME.json``)."""
    return _data_dir("_configs", "configs")


def splits_dir() -> Path:
    """The published protocols' split files (``data/splits/dtu.json``, ``llff.json``)."""
    return _data_dir("_splits", "data", "splits")


def cpu_sources_dir() -> Path:
    """The C++ sources of the ``cpu`` rasterizer backend (``cuda/cpu/*.cpp``)."""
    return _data_dir("_cpu_sources", "cuda", "cpu")
