"""LLFF: ``poses_bounds.npy`` + ``images/`` (prebuilt ``images_4`` / ``images_8`` when they match
``downscale``).

Each row of ``poses_bounds.npy`` is a 3x5 matrix ``[R | t | hwf]`` stored row-major, then the
near and far depth bounds. R's columns are the camera's [down, right, backwards] axes in world
coordinates (LLFF's imgs2poses convention); hwf is (height, width, focal) at the original
resolution. The i-th image in sorted order belongs to row i. The principal point is the image
centre (w/2, h/2) in corner-origin pixel coordinates: LLFF keeps only COLMAP's focal length, and
COLMAP puts the principal point there in that convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splatkit.data.readers._common import (
    DEPTH_DIR, MASK_DIRS, ViewSpec, assemble_scene, attach_extras, list_images, prebuilt_dir, validate_pose,
)
from splatkit.data.scene import Scene
from splatkit.errors import DataError

NAME = "llff"


def detect(root: Path) -> bool:
    return (Path(root) / "poses_bounds.npy").is_file()


def llff_to_opencv_rotation(R_llff: np.ndarray) -> np.ndarray:
    """Columns [down, right, backwards] -> OpenCV [right, down, forward]."""
    R_llff = np.asarray(R_llff, dtype=np.float64)
    return np.stack([R_llff[..., :, 1], R_llff[..., :, 0], -R_llff[..., :, 2]], axis=-1)


def read(root: Path, downscale: int = 1) -> Scene:
    root = Path(root)
    npy = root / "poses_bounds.npy"
    try:
        arr = np.load(npy, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", npy)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 17 or len(arr) == 0:
        raise DataError(f"expected an [N, 17] array, got shape {arr.shape}", npy)
    poses = arr[:, :15].reshape(-1, 3, 5)

    image_dir, remaining = prebuilt_dir(root, "images", downscale)
    images = list_images(image_dir)
    n, m = len(poses), len(images)
    if n != m:
        which = "more cameras than images" if n > m else "more images than cameras"
        raise DataError(f"poses_bounds.npy has {n} poses but {image_dir.name}/ has {m} images ({which})", root)

    views = []
    for i, (pose, path) in enumerate(zip(poses, images)):
        c2w = np.eye(4)
        c2w[:3, :3] = llff_to_opencv_rotation(pose[:, :3])
        c2w[:3, 3] = pose[:, 3]
        c2w = validate_pose(c2w, f"pose {i} (image {path.name})", npy)
        h, w, f = pose[:, 4]
        if not (np.isfinite([h, w, f]).all() and h > 0 and w > 0 and f > 0):
            raise DataError(f"pose {i}: height/width/focal must be positive, got {h}, {w}, {f}", npy)
        K = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
        views.append(ViewSpec(image_path=path, K=K, c2w=c2w, id=i, size=(int(round(w)), int(round(h)))))
    attach_extras(views, [root / d for d in MASK_DIRS], [root / DEPTH_DIR])
    return assemble_scene(views, downscale=remaining, root=root)
