"""Relative depth made metric: a scale and shift per view, fitted to triangulated 3D points.

Monocular depth estimates are relative: depth (larger = farther) or disparity (inverse depth), each
up to an unknown scale and shift per image (MiDaS, Ranftl et al. TPAMI 2022, trains for exactly
this invariance). Where a metric map is wanted (the initial points' depth bounds), each view's map
is fitted to the camera-space depths of points triangulated with the scene's known cameras
(:func:`splatkit.data.sfm.triangulate_known_poses`): ``z = s * d + t`` for relative depth, and
``1 / z = s * d + t`` for disparity, which is where the estimators' affine invariance holds. The
fit is a trimmed least squares (triangulated points include wrong matches); its residual is
reported so a user can see whether the map deserved the trust.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from splatkit.errors import DataError

MIN_POINTS = 8  # fewer matched points than this: no fit for the view
# Trimmed least squares: refit on the points whose residual is within INLIER_MADS robust standard
# deviations (1.4826 x the median absolute residual) of the fit, TRIM_ROUNDS times.
INLIER_MADS = 3.0
TRIM_ROUNDS = 4


@dataclass(frozen=True)
class DepthFit:
    """One view's fit: ``metric = scale * d + shift`` (``kind="depth"``), or ``1 / (scale * d +
    shift)`` (``kind="inverse"``). Errors are relative to the points' depths, over the inliers."""

    kind: str
    scale: float
    shift: float
    points: int  # matched points with a valid depth-map value
    inliers: int
    median_rel_error: float
    rms_rel_error: float

    def to_dict(self) -> dict:
        return asdict(self)


def _design(d: np.ndarray, z: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    target = z if kind == "depth" else 1.0 / z
    return np.stack([d, np.ones_like(d)], axis=1), target


def apply_fit(depth_map: np.ndarray, fit: DepthFit) -> np.ndarray:
    """The metric z-depth map from a relative one; 0 (unknown) where the map was unknown (0 or not
    finite) or the fitted model gives no positive depth."""
    d = np.asarray(depth_map, dtype=np.float64)
    valid = np.isfinite(d) & (d != 0)
    lin = fit.scale * np.where(valid, d, 0.0) + fit.shift
    with np.errstate(divide="ignore", invalid="ignore"):
        metric = lin if fit.kind == "depth" else 1.0 / lin
    ok = valid & np.isfinite(metric) & (metric > 0)
    return np.where(ok, metric, 0.0).astype(np.float32)


def fit_depth_to_points(depth_map: np.ndarray, kind: str, pixels: np.ndarray, z: np.ndarray) -> Optional[DepthFit]:
    """Fit one relative map to points seen at ``pixels`` ([M, 2], corner-origin pixel coordinates)
    with camera-space depths ``z`` ([M] > 0). None when fewer than MIN_POINTS usable points."""
    if kind not in ("depth", "inverse"):
        raise DataError(f"only relative depth ('depth' or 'inverse') is aligned, got {kind!r}")
    H, W = depth_map.shape[:2]
    cols = np.floor(pixels[:, 0]).astype(np.int64)
    rows = np.floor(pixels[:, 1]).astype(np.int64)
    inside = (cols >= 0) & (cols < W) & (rows >= 0) & (rows < H) & np.isfinite(z) & (z > 0)
    d = np.full(len(z), np.nan)
    d[inside] = depth_map[rows[inside], cols[inside]]
    use = inside & np.isfinite(d) & (d != 0)
    d, z = d[use].astype(np.float64), z[use].astype(np.float64)
    if len(d) < MIN_POINTS:
        return None
    A, b = _design(d, z, kind)
    keep = np.ones(len(d), bool)
    coef = np.zeros(2)
    for _ in range(TRIM_ROUNDS):
        coef, *_ = np.linalg.lstsq(A[keep], b[keep], rcond=None)
        residual = np.abs(A @ coef - b)
        sigma = 1.4826 * np.median(residual[keep])
        new_keep = residual <= max(INLIER_MADS * sigma, 1e-12 * np.abs(b).max())
        if new_keep.sum() < MIN_POINTS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    fit = DepthFit(kind, float(coef[0]), float(coef[1]), int(len(d)), int(keep.sum()), 0.0, 0.0)
    lin = A[keep] @ coef
    with np.errstate(divide="ignore", invalid="ignore"):
        pred = lin if kind == "depth" else 1.0 / lin
    rel = np.abs(pred - z[keep]) / z[keep]
    rel = np.where(np.isfinite(rel), rel, 1.0)
    return DepthFit(fit.kind, fit.scale, fit.shift, fit.points, fit.inliers, float(np.median(rel)),
                    float(np.sqrt(np.mean(rel ** 2))))


def align_scene_depths(scene, points, kind: str) -> dict:
    """Make ``scene.depths`` (relative, of ``kind``) metric in place, view by view, from
    ``points`` (:class:`~splatkit.data.sfm.TriangulatedPoints` of this scene's views). Views
    without a fit get an all-unknown map (a warning names them). Returns the report: per view
    its fit (or None), and the median relative error over the aligned views."""
    if scene.depths is None:
        raise DataError("the scene has no depth maps to align")
    w2c = scene.cameras.worldtocams()
    fits: dict[str, Optional[dict]] = {}
    missing = []
    for v in range(len(scene)):
        ids, pix = points.observations.get(v, (np.zeros(0, np.int64), np.zeros((0, 2))))
        fit = None
        if len(ids):
            cam = points.xyz[ids] @ w2c[v, :3, :3].T + w2c[v, :3, 3]
            fit = fit_depth_to_points(scene.depths[v], kind, pix, cam[:, 2])
        if fit is None:
            missing.append(scene.names[v])
            scene.depths[v] = np.zeros_like(scene.depths[v], dtype=np.float32)
        else:
            scene.depths[v] = apply_fit(scene.depths[v], fit)
        fits[scene.names[v]] = None if fit is None else fit.to_dict()
    scene.depth_kind = "metric"
    scene.depth_aligned = True
    if missing:
        warnings.warn(f"depth alignment: too few triangulated points (< {MIN_POINTS}) in view(s) "
                      f"{', '.join(missing)}; their depth is left unknown", stacklevel=2)
    errors = [f["median_rel_error"] for f in fits.values() if f is not None]
    return {"kind": kind, "points": int(len(points)), "views": fits,
            "median_rel_error": float(np.median(errors)) if errors else None,
            "aligned_views": len(errors), "unaligned_views": missing}
