"""What every reader shares: view specs, image/mask/depth loading, resizing, pose checks.

A reader turns its format into a list of :class:`ViewSpec` (intrinsics in our pixel convention for
a stated image size, camera-to-world in OpenCV axes, in the user's world frame) and hands them to
:func:`assemble_scene`, which loads the pixels, reconciles the stored image size with the camera,
applies the block-average downscale, attaches masks and depth maps and normalises the world.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from splatkit.data.cameras import Cameras
from splatkit.data.imageio_utils import IMAGE_SUFFIXES, downscale_image, read_image_raw, read_mask, to_float01
from splatkit.data.normalize import normalization_from_cameras
from splatkit.data.scene import Normalization, Scene
from splatkit.errors import DataError

MASK_DIRS = ("mask", "masks")
DEPTH_DIR = "depth"
DISTORTION_NAMES = ("k1", "k2", "p1", "p2", "k3")  # OpenCV order, as in ViewSpec.distortion
# Same tolerance as splatkit.data.cameras.check_rigid, so a pose accepted here is accepted there.
RIGID_TOL = 1e-3


@dataclass
class ViewSpec:
    """One view as a reader found it, before any pixels are read."""

    image_path: Path
    K: np.ndarray  # 3x3, our pixel convention, for an image of ``size``
    c2w: np.ndarray  # 4x4 camera-to-world, OpenCV axes, user's world frame
    id: int
    size: Optional[tuple[int, int]] = None  # (W, H) that K describes; None = the stored image's size
    distortion: Optional[np.ndarray] = None  # OpenCV k1, k2, p1, p2[, k3]
    mask_path: Optional[Path] = None
    depth_path: Optional[Path] = None
    background: Optional[tuple[float, float, float]] = None  # RGBA is composited on this


# -- files --------------------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in IMAGE_SUFFIXES and not p.name.startswith("."))


def prebuilt_dir(root: Path, base: str, downscale: int) -> tuple[Path, int]:
    """The image folder to read and the block-average factor still to apply to it.

    ``root/base_{d}`` when the user asked for downscale ``d`` and that prebuilt folder exists (the
    COLMAP/LLFF/nerfstudio habit), else ``root/base``. A download often holds only the prebuilt
    folders (LLFF's ``images_8/`` without ``images/``): then the largest prebuilt factor that
    divides ``d`` is read and the rest block-averaged, and when none divides it the error says
    which ``--downscale`` values work."""
    if downscale > 1:
        pre = root / f"{base}_{downscale}"
        if pre.is_dir() and list_images(pre):
            return pre, 1
    full = root / base
    if list_images(full):
        return full, downscale
    prebuilt = {}
    for folder in root.glob(f"{base}_*"):
        factor = folder.name[len(base) + 1:]
        if factor.isdigit() and int(factor) > 1 and folder.is_dir() and list_images(folder):
            prebuilt[int(factor)] = folder
    if not prebuilt:
        return full, downscale  # the reader says what is missing
    usable = [f for f in prebuilt if downscale % f == 0]
    if usable:
        factor = max(usable)
        return prebuilt[factor], downscale // factor
    have = ", ".join(f"{prebuilt[f].name}/" for f in sorted(prebuilt))
    raise DataError(f"{base}/ holds no images, only the prebuilt {have}: pass --downscale "
                    f"{' or '.join(str(f) for f in sorted(prebuilt))} (or a multiple), or add the full-size "
                    f"images to {base}/", root)


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image file from its header; a :class:`DataError` naming the file otherwise."""
    from PIL import Image

    if not path.is_file():
        raise DataError("image file is missing", path)
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as exc:  # PIL raises several types for unreadable files
        raise DataError(f"cannot decode image ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", path)


def read_rgb_alpha(path: Path, background) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """float32 RGB [H,W,3] in [0,1] (composited on ``background`` when there is alpha and a
    background is given, else alpha dropped) and the alpha channel [H,W] or None."""
    img = to_float01(read_image_raw(path))
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[-1]
    if c not in (1, 2, 3, 4):
        raise DataError(f"expected 1-4 channels, found {c}", path)
    alpha = img[..., -1] if c in (2, 4) else None
    rgb = img[..., :3] if c >= 3 else np.repeat(img[..., :1], 3, axis=-1)
    if alpha is not None and background is not None:
        rgb = rgb * alpha[..., None] + np.asarray(background, np.float32) * (1.0 - alpha[..., None])
    rgb = np.ascontiguousarray(np.clip(rgb, 0.0, 1.0), dtype=np.float32)
    return rgb, None if alpha is None else np.ascontiguousarray(np.clip(alpha, 0, 1), dtype=np.float32)


def unique_names(paths: Sequence[Path], root: Path) -> list[str]:
    """File stems; when stems collide (Blender's train/r_0 vs test/r_0) the path below ``root``
    with separators replaced, so outputs written per view name never overwrite each other."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    out = []
    for p in paths:
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = Path(p.parent.name) / p.name
        out.append(str(rel.with_suffix("")).replace("/", "_").replace("\\", "_"))
    return out


# -- geometry -----------------------------------------------------------------------------------
def validate_pose(c2w: np.ndarray, label: str, path: Path) -> np.ndarray:
    """A finite rigid 4x4 camera-to-world, or a :class:`DataError` naming ``label`` and ``path``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
    if c2w.shape != (4, 4):
        raise DataError(f"{label}: expected a 4x4 (or 3x4) pose matrix, got shape {c2w.shape}", path)
    if not np.all(np.isfinite(c2w)):
        raise DataError(f"{label}: pose has non-finite values", path)
    R = c2w[:3, :3]
    orth = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if orth > RIGID_TOL or abs(det - 1.0) > RIGID_TOL or np.abs(c2w[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise DataError(f"{label}: pose is not a rigid transform (|R R^T - I| = {orth:.3g}, "
                        f"det R = {det:.4g}; scaled or sheared rotation?)", path)
    return c2w


def decompose_projection(P: np.ndarray, label: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 projection ``P ~ K [R | t]`` whose pixel centres are on integers (OpenCV
    calibration, DTU ``pos_*.txt``, IDR ``world_mat``) into our intrinsics (centres at +0.5) and an
    OpenCV camera-to-world matrix."""
    from scipy.linalg import rq

    from splatkit.data.cameras import shift_principal_point_to_corner_origin

    P = np.asarray(P, dtype=np.float64)
    if P.shape[0] == 4:
        P = P[:3]
    if P.shape != (3, 4):
        raise DataError(f"{label}: expected a 3x4 projection matrix, got shape {P.shape}", path)
    if not np.all(np.isfinite(P)):
        raise DataError(f"{label}: projection matrix has non-finite values", path)
    M = P[:, :3]
    d = np.linalg.det(M)
    if abs(d) < 1e-12 * max(1.0, np.abs(M).max()) ** 3:
        raise DataError(f"{label}: projection matrix is singular", path)
    # P is defined up to scale, sign included: with det(M) > 0, M = K R has det R = +1 once K's
    # diagonal is made positive.
    P = P * np.sign(d)
    K, R = rq(P[:, :3])
    D = np.diag(np.sign(np.diag(K)))
    K, R = K @ D, D @ R  # D @ D = I, so K @ R is unchanged
    t = np.linalg.solve(K, P[:, 3])
    K = K / K[2, 2]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return shift_principal_point_to_corner_origin(K), c2w


def fit_intrinsics(K: np.ndarray, size: tuple[int, int], stored: tuple[int, int], path: Path) -> np.ndarray:
    """Intrinsics for ``K`` (which describes an image of ``size``) applied to the stored image.

    A stored image of another size is taken as the whole frame resized (prebuilt ``images_4``,
    DTU at 400x300): with corner-origin pixel coordinates the x row scales by ``w'/W`` and the y
    row by ``h'/H``, exact for block averaging and for full-frame resampling alike. Sizes whose
    aspect ratios differ by more than rounding are an error.
    """
    W, H = size
    w, h = stored
    if (w, h) == (W, H):
        return np.asarray(K, dtype=np.float64)
    sx, sy = w / W, h / H
    # Rounding a resized size to whole pixels moves the ratio by at most one pixel's worth.
    if abs(sx - sy) * max(W, H) > 1.0 + 1e-9 * max(W, H):
        raise DataError(f"image is {w}x{h} but its camera describes a {W}x{H} image "
                        f"(not a resized copy: aspect ratios differ)", path)
    K = np.array(K, dtype=np.float64, copy=True)
    K[0] *= sx
    K[1] *= sy
    return K


# -- extras -------------------------------------------------------------------------------------
def _first_existing(candidates) -> Optional[Path]:
    for c in candidates:
        if c.is_file():
            return c
    return None


def attach_extras(views: Sequence[ViewSpec], mask_dirs: Sequence[Path], depth_dirs: Sequence[Path],
                  by_id: bool = False) -> None:
    """Fill ``mask_path`` / ``depth_path`` of views that have none from the shared folder layout:
    ``mask/`` or ``masks/`` holding ``<stem>.<image ext>``, ``<image name>.png`` (COLMAP's mask
    naming) or, for numeric stems, DTU's 3-digit ``000.png``; ``depth/<stem>.npy``. With ``by_id``
    the 3-digit name is the view id (DTU rectified: masks by 0-based view index)."""
    mdirs = [d for d in mask_dirs if d.is_dir()]
    ddirs = [d for d in depth_dirs if d.is_dir()]
    for v in views:
        stem, name = v.image_path.stem, v.image_path.name
        if v.mask_path is None and mdirs:
            cands = []
            for d in mdirs:
                cands += [d / (stem + ext) for ext in IMAGE_SUFFIXES] + [d / (name + ".png")]
                if by_id:
                    cands.append(d / f"{v.id:03d}.png")
                elif stem.isdigit():
                    cands.append(d / f"{int(stem):03d}.png")
            v.mask_path = _first_existing(cands)
        if v.depth_path is None and ddirs:
            v.depth_path = _first_existing([c for d in ddirs for c in (d / f"{stem}.npy", d / f"{name}.npy")])


def _warn_partial(kind: str, views: Sequence[ViewSpec], have: list[bool], fill: str) -> None:
    missing = [v.image_path.name for v, h in zip(views, have) if not h]
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    warnings.warn(f"{kind} missing for {len(missing)} of {len(views)} views ({shown}); "
                  f"using {fill} for those", stacklevel=3)


def _warn_distortion(views: Sequence[ViewSpec], dist: np.ndarray) -> None:
    """Rendering is pinhole and images are not undistorted, so distorted cameras fit worse: say so."""
    has = np.any(dist != 0, axis=1)
    if not has.any():
        return
    i = int(np.argmax(has))
    coeffs = ", ".join(f"{k}={c:.4g}" for k, c in zip(DISTORTION_NAMES, dist[i]) if c != 0)
    warnings.warn(f"{int(has.sum())} of {len(views)} cameras have lens distortion ({views[i].image_path.name}: "
                  f"{coeffs}) that splatkit does not apply; undistort the images first "
                  "(e.g. colmap image_undistorter)", stacklevel=3)


def _to_stored_size(arr: np.ndarray, stored: tuple[int, int], what: str, path: Path, reduce) -> np.ndarray:
    """Bring a mask/depth map to the stored image's size: equal, or an integer multiple of it
    (a full-resolution mask beside downsampled images), reduced by ``reduce``."""
    w, h = stored
    H, W = arr.shape[:2]
    if (W, H) == (w, h):
        return arr
    f = W // w
    if f >= 2 and H // h == f and W // f == w and H // f == h:
        return reduce(arr, f)
    raise DataError(f"{what} is {W}x{H} but its image is {w}x{h}", path)


def downscale_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """Block-average only the known (> 0) depths, so unknown pixels do not drag averages to 0."""
    if factor == 1:
        return depth
    valid = (depth > 0).astype(np.float32)
    num = downscale_image(depth * valid, factor)
    den = downscale_image(valid, factor)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out.astype(np.float32)


def read_depth(path: Path) -> np.ndarray:
    """z-depth float32 [H, W] with 0 = unknown (the Scene convention); any format that
    :func:`splatkit.data.depth_io.read_depth_file` reads, errors naming the file."""
    from splatkit.data.depth_io import read_depth_file

    return np.nan_to_num(read_depth_file(path), nan=0.0)


# -- the scene ----------------------------------------------------------------------------------
def assemble_scene(views: Sequence[ViewSpec], *, downscale: int, root: Path,
                   normalization: Optional[Normalization] = None,
                   points: Optional[np.ndarray] = None, point_colors: Optional[np.ndarray] = None,
                   splits: Optional[dict[str, list[int]]] = None,
                   masks_from_alpha: bool = False) -> Scene:
    """Load pixels for ``views`` and build the normalised :class:`Scene`.

    ``downscale`` is the block-average factor still to apply to the stored images (1 when a
    prebuilt downsampled folder was chosen). ``normalization`` defaults to
    :func:`normalization_from_cameras`. With ``masks_from_alpha``, RGBA images give the masks
    when no mask files exist.
    """
    if not views:
        raise DataError("no views to load", root)
    d = int(downscale)
    Ks, sizes, images, alphas, masks, depths = [], [], [], [], [], []
    for v in views:
        rgb, alpha = read_rgb_alpha(v.image_path, v.background)
        h, w = rgb.shape[:2]
        K = fit_intrinsics(v.K, v.size if v.size is not None else (w, h), (w, h), v.image_path)
        m = None
        if v.mask_path is not None:
            m = _to_stored_size(read_mask(v.mask_path), (w, h), "mask", v.mask_path, downscale_image)
        dep = None
        if v.depth_path is not None:
            dep = _to_stored_size(read_depth(v.depth_path), (w, h), "depth map", v.depth_path, downscale_depth)
        if d > 1:
            rgb = downscale_image(rgb, d)
            alpha = None if alpha is None else downscale_image(alpha, d)
            m = None if m is None else downscale_image(m, d)
            dep = None if dep is None else downscale_depth(dep, d)
        Ks.append(K)
        sizes.append((w, h))
        images.append(rgb)
        alphas.append(alpha)
        masks.append(m)
        depths.append(dep)

    dist = None
    if any(v.distortion is not None for v in views):
        dist = np.zeros((len(views), 5))
        for i, v in enumerate(views):
            if v.distortion is not None:
                dv = np.asarray(v.distortion, dtype=np.float64).ravel()
                dist[i, : len(dv)] = dv
        _warn_distortion(views, dist)
    try:
        cams = Cameras(Ks=np.stack(Ks), camtoworlds=np.stack([v.c2w for v in views]),
                       widths=[s[0] for s in sizes], heights=[s[1] for s in sizes], distortion=dist)
        if d > 1:
            cams = cams.rescaled(1.0 / d)
            # Block averaging crops sizes that do not divide; K is unchanged by a right/bottom crop.
            cams.widths = np.array([img.shape[1] for img in images], dtype=np.int64)
            cams.heights = np.array([img.shape[0] for img in images], dtype=np.int64)
    except DataError as exc:
        if exc.path is None:
            raise DataError(exc.message, root) from exc
        raise

    norm = normalization if normalization is not None else normalization_from_cameras(cams)
    cams = cams.transformed(norm.matrix)

    mask_list = None
    have = [m is not None for m in masks]
    if any(have):
        if not all(have):
            _warn_partial("mask", views, have, "all-ones masks")
        mask_list = [m if m is not None else np.ones(img.shape[:2], np.float32) for m, img in zip(masks, images)]
    elif masks_from_alpha and all(a is not None for a in alphas):
        mask_list = alphas

    depth_list, depth_kind = None, None
    have = [x is not None for x in depths]
    if any(have):
        if not all(have):
            _warn_partial("depth map", views, have, "zeros (unknown)")
        # Depths are in the user's units; the normalised world is scaled by norm.scale.
        depth_list = [(x * np.float32(norm.scale)).astype(np.float32) if x is not None
                      else np.zeros(img.shape[:2], np.float32) for x, img in zip(depths, images)]
        from splatkit.data.depth_io import declared_depth_kind

        depth_kind = declared_depth_kind(Path(next(v.depth_path for v in views if v.depth_path is not None)).parent)

    pts = None if points is None else norm.from_original(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    return Scene(
        cameras=cams,
        images=images,
        names=unique_names([v.image_path for v in views], root),
        ids=[int(v.id) for v in views],
        masks=mask_list,
        depths=depth_list,
        points=pts,
        point_colors=point_colors,
        normalization=norm,
        splits=dict(splits or {}),
        root=root,
        depth_kind=depth_kind,
    )
