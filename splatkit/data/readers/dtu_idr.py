"""DTU in the IDR / NeuS layout: ``cameras_sphere.npz`` (or ``cameras.npz``), ``image/``, ``mask/``.

For view ``i``, ``world_mat_i`` is a 4x4 whose top 3x4 is the projection ``K [R | t]`` with pixel
centres on integers, in the user's world frame; ``scale_mat_i`` maps the unit sphere around the
object into that frame, and the scene is normalised so that sphere becomes the unit sphere. As in
IDR, the i-th image in sorted order belongs to ``world_mat_i`` and has id ``i``; the number of
images must equal the number of cameras.

The npz does not store the image size its intrinsics describe. IDR's ``camera_mat_i`` encodes it
(``[[2/W, 0, -1], [0, 2/H, -1], ...]``) and is used when present, or the user says it
(``intrinsics_size``, ``--intrinsics-size WxH``). Otherwise the principal point decides, and only
where it leaves no doubt: within 25% of the stored image's centre (any real camera) the intrinsics
are the stored image's; ``(2 cx, 2 cy)`` within 5% of the stored size times an integer ``f`` means
the original downsampled ``f`` times (DTU at 400x300 with 1600x1200 cameras: 3% off). Anything
else is a one-line error naming the sizes and the options: a silent guess once loaded MonoSDF's
384x384 centre crops with a focal length 22% short. ``center_crop``: the images are centre crops
of the ``intrinsics_size`` frame resized to cover them (MonoSDF's DTU release: 1600x1200 resized
x0.32, then the middle 384x384), and the intrinsics are moved to the crop.
Masks (``mask/000.png``) and depth maps (``depth/<stem>.npy``, world units) are optional.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from splatkit.data.normalize import normalization_from_sphere
from splatkit.data.readers._common import (
    DEPTH_DIR, MASK_DIRS, ViewSpec, assemble_scene, attach_extras, decompose_projection, image_size,
    list_images,
)
from splatkit.data.scene import Scene
from splatkit.errors import DataError

NAME = "dtu_idr"
CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")
IMAGE_DIRS = ("image", "images")


def detect(root: Path) -> bool:
    return any((Path(root) / f).is_file() for f in CAMERA_FILES)


# A principal point this far from the image centre (fraction of the size) is normal for a real camera.
OWN_SIZE_TOLERANCE = 0.25
# ... and this close to a multiple of the stored size means a downsampled copy (DTU: 3%).
DOWNSAMPLED_TOLERANCE = 0.05


def _native_size(K: np.ndarray, camera_mat: np.ndarray | None, stored: tuple[int, int], path: Path,
                 intrinsics_size: Optional[tuple[int, int]] = None) -> tuple[int, int]:
    """The image size that ``K`` (ours, corner origin) describes (see the module docstring)."""
    if camera_mat is not None:
        cm = np.asarray(camera_mat, dtype=np.float64)
        if cm.shape[0] >= 2 and cm[0, 0] > 0 and cm[1, 1] > 0 and abs(cm[0, 2] + 1) < 1e-6 \
                and abs(cm[1, 2] + 1) < 1e-6:
            return int(round(2.0 / cm[0, 0])), int(round(2.0 / cm[1, 1]))
    if intrinsics_size is not None:
        return intrinsics_size
    w, h = stored
    centre = np.array([2 * K[0, 2], 2 * K[1, 2]])

    def misfit(f: int) -> float:
        return float(np.max(np.abs(centre - [w * f, h * f]) / [w * f, h * f]))

    if misfit(1) < OWN_SIZE_TOLERANCE:
        return w, h
    best = min(range(2, 17), key=misfit)
    if misfit(best) < DOWNSAMPLED_TOLERANCE:
        return w * best, h * best
    raise DataError(f"cannot tell which image size the intrinsics describe: principal point ({K[0, 2]:.1f}, "
                    f"{K[1, 2]:.1f}) fits neither the {w}x{h} images nor a whole multiple of them; give the size "
                    f"with --intrinsics-size WxH (about {centre[0]:.0f}x{centre[1]:.0f} here) and add --center-crop "
                    "if the images are centre crops of that frame (MonoSDF's DTU release)", path)


def crop_intrinsics(K: np.ndarray, size: tuple[int, int], stored: tuple[int, int]) -> np.ndarray:
    """``K`` of a ``size`` frame moved to its centre crop of ``stored`` size, the frame resized by
    ``s = max(w / W, h / H)`` first (so it covers the crop): ``x' = s x - (s W - w) / 2``."""
    (W, H), (w, h) = size, stored
    s = max(w / W, h / H)
    K = np.array(K, dtype=np.float64, copy=True)
    K[:2] *= s
    K[0, 2] -= (s * W - w) / 2.0
    K[1, 2] -= (s * H - h) / 2.0
    return K


def read(root: Path, downscale: int = 1, intrinsics_size: Optional[tuple[int, int]] = None,
         center_crop: bool = False) -> Scene:
    root = Path(root)
    if center_crop and intrinsics_size is None:
        raise DataError("--center-crop needs --intrinsics-size WxH: the size of the frame the images were cut "
                        "from (1600x1200 for DTU)", root)
    npz_path = next((root / f for f in CAMERA_FILES if (root / f).is_file()), None)
    if npz_path is None:
        raise DataError("no cameras_sphere.npz or cameras.npz", root)
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            cams = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:
        raise DataError(f"cannot read camera file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                        npz_path)
    ids = sorted(int(m.group(1)) for k in cams if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    if not ids:
        raise DataError("no world_mat_<i> entries", npz_path)
    if ids != list(range(len(ids))):
        gap = next(i for i in range(len(ids) + 1) if i not in set(ids))
        raise DataError(f"world_mat_{gap} is missing (cameras must be numbered 0..N-1)", npz_path)

    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise DataError("no image/ folder beside the camera file", root)
    images = list_images(image_dir)
    n, m = len(ids), len(images)
    if n != m:
        which = "more cameras than images" if n > m else "more images than cameras"
        raise DataError(f"{npz_path.name} has {n} cameras but {image_dir.name}/ has {m} images ({which})", root)

    normalization = None
    if "scale_mat_0" in cams:
        S = np.asarray(cams["scale_mat_0"], dtype=np.float64)
        if S.shape != (4, 4) or not np.all(np.isfinite(S)) or not S[0, 0] > 0:
            raise DataError("scale_mat_0 is not a finite 4x4 with a positive scale", npz_path)
        normalization = normalization_from_sphere(center=S[:3, 3], radius=S[0, 0])

    views = []
    stored = image_size(images[0])
    for i, path in zip(ids, images):
        K, c2w = decompose_projection(cams[f"world_mat_{i}"], f"world_mat_{i}", npz_path)
        if center_crop:
            K, size = crop_intrinsics(K, intrinsics_size, stored), stored
        else:
            size = _native_size(K, cams.get(f"camera_mat_{i}"), stored, npz_path, intrinsics_size)
        views.append(ViewSpec(image_path=path, K=K, c2w=c2w, id=i, size=size))
    attach_extras(views, [root / d for d in MASK_DIRS], [root / DEPTH_DIR])
    # Without a scale_mat there is no object sphere: fall back to the camera-based frame.
    return assemble_scene(views, downscale=downscale, root=root, normalization=normalization)
