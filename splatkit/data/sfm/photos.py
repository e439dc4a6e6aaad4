"""Recognising a folder of plain photos (no poses) and the intrinsics a user gives for them.

Kept free of pycolmap so that the loader can use it cheaply."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from splatkit.errors import DataError

# The file name the sceaux/OpenMVG habit uses for a camera matrix beside the photos.
K_FILE_NAMES = ("K.txt", "k.txt", "intrinsics.txt")


def photo_files(root: Path) -> tuple[Path, list[Path]]:
    """``(folder, photos)`` for a folder of plain photos: the images directly in ``root``, else in
    ``root/images`` (with no ``sparse/`` beside it). ``photos`` is empty when there are none."""
    from splatkit.data.readers._common import list_images

    root = Path(root)
    direct = list_images(root)
    if direct:
        return root, direct
    sub = root / "images"
    if sub.is_dir() and not (root / "sparse").exists():
        return sub, list_images(sub)
    return root, []


def is_photo_folder(root: Path) -> bool:
    """At least two photos and no other dataset layout (the caller checks the latter first)."""
    return len(photo_files(Path(root))[1]) >= 2


def find_k_file(image_dir: Path) -> Optional[Path]:
    """A ``K.txt`` in the photo folder or the folder above it."""
    for folder in (Path(image_dir), Path(image_dir).parent):
        for name in K_FILE_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def read_k_file(path: Path) -> np.ndarray:
    """A 3x3 camera matrix written as 9 numbers (rows), COLMAP's pixel convention assumed."""
    try:
        vals = np.array([float(t) for t in Path(path).read_text().replace(",", " ").split()], dtype=np.float64)
    except ValueError:
        raise DataError("expected 9 numbers (a 3x3 camera matrix)", path) from None
    if vals.size != 9 or not np.all(np.isfinite(vals)):
        raise DataError(f"expected 9 numbers (a 3x3 camera matrix), found {vals.size}", path)
    K = vals.reshape(3, 3)
    if not (K[0, 0] > 0 and K[1, 1] > 0) or abs(K[2, 2] - 1) > 1e-6 or np.any(K[2, :2] != 0) or K[1, 0] != 0:
        raise DataError("not a camera matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0", path)
    if abs(K[0, 1]) > 1e-9 * K[0, 0]:
        raise DataError("camera matrices with skew are not supported", path)
    return K


def parse_intrinsics(text: str) -> list[float]:
    """``"fx,fy,cx,cy[,k1,k2,p1,p2]"`` (or a K file's path) -> the numbers, checked.

    Returns ``[fx, fy, cx, cy, *distortion]`` with OpenCV's distortion order k1, k2, p1, p2 (k3)."""
    path = Path(text)
    if path.is_file():
        K = read_k_file(path)
        return [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
    try:
        vals = [float(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise DataError(f"--intrinsics takes fx,fy,cx,cy[,k1,k2,p1,p2[,k3]] or a K.txt file, got {text!r}") from None
    if len(vals) not in (4, 5, 6, 8, 9) or not all(np.isfinite(vals)) or not (vals[0] > 0 and vals[1] > 0):
        raise DataError(f"--intrinsics takes fx,fy,cx,cy[,k1[,k2[,p1,p2[,k3]]]] with fx, fy > 0, got {text!r}")
    return vals


def colmap_camera(params: list[float]) -> tuple[str, list[float]]:
    """COLMAP camera model and parameter list for :func:`parse_intrinsics`' numbers."""
    fx, fy, cx, cy, *dist = params
    if not any(dist):
        return "PINHOLE", [fx, fy, cx, cy]
    d = list(dist) + [0.0] * (5 - len(dist))
    if d[4] == 0.0:
        return "OPENCV", [fx, fy, cx, cy, *d[:4]]
    return "FULL_OPENCV", [fx, fy, cx, cy, *d[:5], 0.0, 0.0, 0.0]
