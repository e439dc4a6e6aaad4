"""COLMAP sparse models: ``sparse/0/`` (or ``sparse/``), binary or text, images in ``images/``.

Read through pycolmap. COLMAP's pixel convention is ours (pixel centres at +0.5), so intrinsics
are taken as they are. Views are sorted by image name; ids are COLMAP image ids. Prebuilt
downsamples ``images_2`` / ``images_4`` / ``images_8`` are used when they match ``downscale``.
Every registered image must exist in the image folder (extra files there are ignored: COLMAP
leaves images it could not register out of the model).

Supported camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV (distortion is
kept in ``Cameras.distortion`` but neither rendered nor undone in the images; non-zero
coefficients give a warning). Other models are an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splatkit.data.readers._common import (
    DEPTH_DIR, MASK_DIRS, ViewSpec, assemble_scene, attach_extras, prebuilt_dir, validate_pose,
)
from splatkit.data.scene import Scene
from splatkit.errors import DataError

NAME = "colmap"


def _model_dir(root: Path) -> Path | None:
    for cand in (root / "sparse" / "0", root / "sparse"):
        if any((cand / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return cand
    return None


def detect(root: Path) -> bool:
    return _model_dir(Path(root)) is not None


def _intrinsics(camera, model_dir: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """K and OpenCV distortion (k1, k2, p1, p2) from a pycolmap camera."""
    model = getattr(camera.model, "name", None) or str(camera.model_name)
    p = [float(x) for x in camera.params]
    dist = None
    if model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif model == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    elif model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        dist = np.array([p[3], 0.0, 0.0, 0.0])
    elif model == "RADIAL":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        dist = np.array([p[3], p[4], 0.0, 0.0])
    elif model == "OPENCV":
        fx, fy, cx, cy = p[:4]
        dist = np.array(p[4:8])
    else:
        raise DataError(f"camera {camera.camera_id} uses COLMAP model {model}, which splatkit does not "
                        "support; undistort first (colmap image_undistorter)", model_dir)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, dist


def _cam_from_world(image) -> np.ndarray:
    """3x4 world-to-camera across pycolmap versions (method in >= 3.12/4.x, property before,
    qvec/tvec in the oldest)."""
    if hasattr(image, "cam_from_world"):
        cfw = image.cam_from_world
        if callable(cfw):
            cfw = cfw()
        mat = cfw.matrix
        return np.asarray(mat() if callable(mat) else mat, dtype=np.float64)
    from scipy.spatial.transform import Rotation

    w, x, y, z = image.qvec
    R = Rotation.from_quat([x, y, z, w]).as_matrix()
    return np.hstack([R, np.asarray(image.tvec, dtype=np.float64).reshape(3, 1)])


def read(root: Path, downscale: int = 1) -> Scene:
    import pycolmap

    root = Path(root)
    model_dir = _model_dir(root)
    if model_dir is None:
        raise DataError("no COLMAP model (sparse/0/cameras.bin or .txt)", root)
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises ValueError/IndexError/RuntimeError on bad files
        raise DataError(f"cannot read COLMAP model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                        model_dir)

    if hasattr(rec, "reg_image_ids"):
        reg = set(int(i) for i in rec.reg_image_ids())
        images = [im for iid, im in rec.images.items() if int(iid) in reg]
    else:
        images = [im for im in rec.images.values() if getattr(im, "registered", True)]
    if not images:
        raise DataError("COLMAP model has no registered images", model_dir)
    images.sort(key=lambda im: im.name)

    image_dir, remaining = prebuilt_dir(root, "images", downscale)
    if not image_dir.is_dir():
        raise DataError("no images/ folder beside sparse/", root)

    intr = {}
    views, missing = [], []
    for im in images:
        path = image_dir / im.name
        if not path.is_file():
            missing.append(path)
            continue
        cid = int(im.camera_id)
        if cid not in intr:
            cam = rec.cameras[cid]
            intr[cid] = (*_intrinsics(cam, model_dir), (int(cam.width), int(cam.height)))
        K, dist, size = intr[cid]
        w2c = np.vstack([_cam_from_world(im), [0.0, 0.0, 0.0, 1.0]])
        if not np.all(np.isfinite(w2c)):
            raise DataError(f"image {im.name}: pose has non-finite values", model_dir)
        c2w = validate_pose(np.linalg.inv(w2c), f"image {im.name}", model_dir)
        views.append(ViewSpec(image_path=path, K=K, c2w=c2w, id=int(im.image_id), size=size, distortion=dist))
    if missing:
        raise DataError(f"image file is missing ({len(missing)} of {len(images)} images registered in the "
                        f"COLMAP model are not in {image_dir.name}/)", missing[0])

    attach_extras(views, [root / d for d in MASK_DIRS], [root / DEPTH_DIR])

    points = colors = None
    if len(rec.points3D):
        pts = list(rec.points3D.values())
        points = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
        colors = (np.array([p.color for p in pts], dtype=np.float32).reshape(-1, 3) / 255.0)
        if not np.all(np.isfinite(points)):
            keep = np.isfinite(points).all(axis=1)
            points, colors = points[keep], colors[keep]
    return assemble_scene(views, downscale=remaining, root=root, points=points, point_colors=colors)
