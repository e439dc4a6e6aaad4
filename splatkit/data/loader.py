"""``load_scene``: detect a folder's format and hand it to the matching reader.

Each reader module in :mod:`splatkit.data.readers` exposes ``NAME``, ``detect(root) -> bool``
(cheap: looks at file names only) and ``read(root, downscale) -> Scene``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from splatkit.data.scene import Scene
from splatkit.errors import DataError

# Order matters: the more specific layouts are tried first.
READERS = ("dtu_idr", "dtu_rectified", "transforms", "colmap", "llff")


def _reader(name: str):
    return importlib.import_module(f"splatkit.data.readers.{name}")


def detect_format(root: str | Path) -> str:
    root = Path(root)
    if not root.exists():
        raise DataError("no such folder", root)
    if not root.is_dir():
        raise DataError("expected a dataset folder, got a file", root)
    for name in READERS:
        if _reader(name).detect(root):
            return name
    raise DataError(
        "no recognisable dataset here (looked for COLMAP sparse/0, transforms*.json, "
        "cameras.npz/cameras_sphere.npz, Rectified/+Calibration/, poses_bounds.npy)", root)


def load_scene(root: str | Path, downscale: int = 1, format: str | None = None) -> Scene:
    """Load any supported dataset folder into a normalised :class:`Scene`.

    ``downscale`` is an integer factor; images are block-averaged and intrinsics rescaled to match.
    """
    root = Path(root)
    if int(downscale) != downscale or downscale < 1:
        raise DataError(f"downscale must be a positive integer, got {downscale}")
    name = format or detect_format(root)
    if name not in READERS:
        raise DataError(f"unknown format {name!r}; known: {', '.join(READERS)}")
    scene = _reader(name).read(root, downscale=int(downscale))
    scene.source_format = name
    scene.root = root
    return scene
