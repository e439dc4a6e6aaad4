"""``load_scene``: detect a folder's format and hand it to the matching reader.

Each reader module in :mod:`splatkit.data.readers` exposes ``NAME``, ``detect(root) -> bool``
(cheap: looks at file names only) and ``read(root, downscale) -> Scene``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

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
    from splatkit.data.sfm.photos import photo_files

    folder, photos = photo_files(root)
    if len(photos) >= 2:
        raise DataError(f"{len(photos)} photos without camera poses: 'splatkit data poses --images {folder} --out "
                        "SCENE' recovers them by structure from motion ('splatkit train --data' on this folder "
                        "does that first)", root)
    raise DataError(
        "no recognisable dataset here (looked for COLMAP sparse/0, transforms*.json, "
        "cameras.npz/cameras_sphere.npz, Rectified/+Calibration/, poses_bounds.npy)", root)


def parse_size(text: Optional[str], flag: str = "--intrinsics-size") -> Optional[tuple[int, int]]:
    """``"1600x1200"`` -> ``(1600, 1200)``; ``None`` stays ``None``."""
    if text is None:
        return None
    w, sep, h = str(text).lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit() or int(w) < 1 or int(h) < 1:
        raise DataError(f"{flag} takes WIDTHxHEIGHT like 1600x1200, got {text!r}")
    return int(w), int(h)


def load_scene(root: str | Path, downscale: int = 1, format: str | None = None, *,
               intrinsics_size: Optional[str | tuple[int, int]] = None, center_crop: bool = False) -> Scene:
    """Load any supported dataset folder into a normalised :class:`Scene`.

    ``downscale`` is an integer factor; images are block-averaged and intrinsics rescaled to match.
    ``intrinsics_size`` (``"WxH"``) and ``center_crop``: which image size IDR/NeuS cameras
    describe, and whether the images are centre crops of it (:mod:`splatkit.data.readers.dtu_idr`).
    """
    root = Path(root)
    if int(downscale) != downscale or downscale < 1:
        raise DataError(f"downscale must be a positive integer, got {downscale}")
    name = format or detect_format(root)
    if name not in READERS:
        raise DataError(f"unknown format {name!r}; known: {', '.join(READERS)}")
    size = intrinsics_size if isinstance(intrinsics_size, tuple) or intrinsics_size is None else parse_size(intrinsics_size)
    if name == "dtu_idr":
        scene = _reader(name).read(root, downscale=int(downscale), intrinsics_size=size, center_crop=center_crop)
    elif size is not None or center_crop:
        raise DataError(f"--intrinsics-size and --center-crop are for IDR/NeuS cameras.npz datasets; this one is "
                        f"{name} (its cameras say their image size)", root)
    else:
        scene = _reader(name).read(root, downscale=int(downscale))
    scene.source_format = name
    scene.root = root
    return scene
