"""Initial points for a new model: SfM points, or random points in the object's estimated bounds
(from depth maps, the cameras' common view, or a cube around forward-facing cameras), optionally
carved by the object masks (a visual hull). Any method that starts from points uses this."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from splatkit.data.scene import Scene
from splatkit.errors import SplatkitError

# 3DGS / gsplat: scene extent = 1.1 x the largest camera distance from the camera centroid.
SCENE_SCALE_MARGIN = 1.1
# gsplat simple_trainer's random init: a cube of half-size 3 x scene_scale.
RANDOM_INIT_EXTENT = 3.0

def scene_extent(cameras) -> float:
    """gsplat's ``scene_scale``: 1.1 x the largest camera distance from the cameras' centroid."""
    c = cameras.centers
    radius = float(np.max(np.linalg.norm(c - c.mean(axis=0), axis=1))) if len(c) else 0.0
    if radius < 1e-6:
        # One camera (or all at one spot): fall back to its distance to the origin, where
        # readers put the object after normalisation.
        radius = float(np.max(np.linalg.norm(c, axis=1))) if len(c) else 1.0
        radius = radius if radius > 1e-6 else 1.0
    return SCENE_SCALE_MARGIN * radius


def _visibility_and_colors(scene: Scene, points: np.ndarray, chunk: int = 32768
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For each point: whether every mask that sees it marks it as object (True without masks),
    and the mean colour of the pixels it projects to (0.5 grey where no view sees it)."""
    cams = scene.cameras
    inside = np.ones(len(points), dtype=bool)
    colors = np.full((len(points), 3), 0.5, dtype=np.float32)
    for start in range(0, len(points), chunk):
        pts = points[start:start + chunk]
        uv, z = cams.project(pts)
        acc = np.zeros((len(pts), 3))
        cnt = np.zeros(len(pts))
        ok = np.ones(len(pts), dtype=bool)
        for v in range(len(cams)):
            W, H = int(cams.widths[v]), int(cams.heights[v])
            with np.errstate(invalid="ignore"):
                px = np.floor(uv[v, :, 0])
                py = np.floor(uv[v, :, 1])
            seen = (z[v] > 0) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
            ix = px[seen].astype(np.int64)
            iy = py[seen].astype(np.int64)
            if scene.masks is not None:
                in_mask = scene.masks[v][iy, ix] >= 0.5
                bad = np.zeros(len(pts), dtype=bool)
                bad[np.where(seen)[0][~in_mask]] = True
                ok &= ~bad
            acc[seen] += scene.images[v][iy, ix]
            cnt[seen] += 1
        inside[start:start + chunk] = ok
        has = cnt > 0
        colors[start:start + chunk][has] = (acc[has] / cnt[has, None]).astype(np.float32)
    return inside, colors


def _depth_points(scene: Scene, max_points: int = 200_000) -> Optional[np.ndarray]:
    """World points of the valid depth pixels (subsampled), or None without depth maps."""
    if scene.depths is None:
        return None
    valid_total = sum(int((d > 0).sum()) for d in scene.depths)
    if valid_total == 0:
        return None
    stride = max(1, int(math.ceil(math.sqrt(valid_total / max_points))))
    out = []
    for v, depth in enumerate(scene.depths):
        o, d = scene.cameras.pixel_rays(v)
        o, d, z = o[::stride, ::stride], d[::stride, ::stride], depth[::stride, ::stride]
        keep = z > 0
        fwd = scene.cameras.forward[v]
        # z-depth is along the optical axis; the ray parameter is z / cos(angle to the axis).
        t = z[keep] / (d[keep] @ fwd)
        out.append(o[keep] + d[keep] * t[:, None])
    return np.concatenate(out) if out else None


def _radius_inside_all_frustums(cams, center: np.ndarray) -> float:
    """Radius of the largest sphere around ``center`` that lies inside every camera's frustum
    (0 when ``center`` is outside one of them)."""
    p = (cams.worldtocams() @ np.append(center, 1.0))[:, :3]  # [N, 3] camera coordinates
    fx, fy, cx, cy = cams.Ks[:, 0, 0], cams.Ks[:, 1, 1], cams.Ks[:, 0, 2], cams.Ks[:, 1, 2]
    zero = np.zeros_like(fx)
    # Inward normals of the four side planes (through the camera centre): inside <=> n . p >= 0.
    normals = np.stack([np.stack([fx, zero, cx], -1), np.stack([-fx, zero, cams.widths - cx], -1),
                        np.stack([zero, fy, cy], -1), np.stack([zero, -fy, cams.heights - cy], -1)], 1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    dist = np.einsum("npk,nk->np", normals, p)
    return max(float(dist.min()), 0.0)


def random_init_points(scene: Scene, n: int, rng: np.random.Generator, carve: bool = True,
                       scene_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` random points around the object: ``(points, colors, how the bounds were found)``.

    Bounds come from the depth maps (1st-99th percentile box of the unprojected depths) when the
    scene has them, else from the cameras: the largest sphere around their focus point that every
    camera sees whole. Forward-facing captures (no focus point) get gsplat's cube of half-size
    3 x scene_scale around the cameras. With masks (and ``carve``), points outside any mask that
    sees them are rejected: a visual hull. Colours are the mean of the pixels a point projects to.
    """
    from splatkit.data.normalize import focus_point

    cams = scene.cameras
    dpts = _depth_points(scene)
    if dpts is not None and len(dpts) >= 8:
        lo, hi = np.percentile(dpts, 1, axis=0), np.percentile(dpts, 99, axis=0)
        pad = 0.1 * (hi - lo) + 1e-3
        lo, hi = lo - pad, hi + pad
        how = "depth-map bounds"

        def sample(m: int) -> np.ndarray:
            return lo + (hi - lo) * rng.random((m, 3))
    else:
        center = focus_point(cams) if len(cams) >= 2 else None
        radius = _radius_inside_all_frustums(cams, center) if center is not None else 0.0
        if radius > 0:
            how = "sphere seen by every camera"

            def sample(m: int) -> np.ndarray:
                d = rng.normal(size=(m, 3))
                d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
                return center + d * radius * rng.random((m, 1)) ** (1 / 3)
        else:
            center = cams.centers.mean(axis=0)
            half = RANDOM_INIT_EXTENT * scene_scale
            how = "cube around the cameras"

            def sample(m: int) -> np.ndarray:
                return center + half * (2 * rng.random((m, 3)) - 1)

    if carve and scene.masks is not None:
        kept_pts, kept_cols, total = [], [], 0
        for _ in range(50):  # rejection sampling; a thin object may keep only a few % per round
            cand = sample(max(4 * n, 4096))
            ok, cols = _visibility_and_colors(scene, cand)
            kept_pts.append(cand[ok])
            kept_cols.append(cols[ok])
            total += int(ok.sum())
            if total >= n:
                break
        if total > 0:
            return (np.concatenate(kept_pts)[:n], np.concatenate(kept_cols)[:n],
                    how + ", carved by the masks")
        how += " (mask carving kept no point; uncarved)"
    pts = sample(n)
    _, cols = _visibility_and_colors(scene if scene.masks is None else _without_masks(scene), pts)
    return pts, cols, how


def _without_masks(scene: Scene) -> Scene:
    s = scene.subset(range(len(scene)))
    s.masks = None
    return s


def _without_depths(scene: Scene) -> Scene:
    s = scene.subset(range(len(scene)))
    s.depths = None
    return s


# ``init="triangulated"`` falls back to random points below this many triangulated points: a few
# dozen points (what a textureless or dark capture leaves) describe too little of the surface to
# start from, and 3DGS's initial scales (distance to the 3 nearest points) become huge.
MIN_TRIANGULATED_POINTS = 100


def triangulated_points(scene: Scene, seed: int = 0, min_points: Optional[int] = None
                        ) -> tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """Points matched across ``scene``'s views (SIFT, pycolmap) and triangulated with its known
    cameras (:func:`splatkit.data.sfm.triangulate_known_poses`), as Binocular3DGS initialises
    sparse views (from dense matches there): ``(points, colors, description)``, or ``(None, None,
    why)`` when fewer than ``min_points`` (default :data:`MIN_TRIANGULATED_POINTS`) survive or
    triangulation fails."""
    min_points = MIN_TRIANGULATED_POINTS if min_points is None else min_points
    from splatkit.data.sfm import triangulate_known_poses

    if len(scene) < 2:
        return None, None, "triangulation needs at least two views"
    try:
        tp = triangulate_known_poses(scene, seed=seed)
    except SplatkitError as exc:
        return None, None, f"triangulation failed ({exc.message})"
    if len(tp) < min_points:
        return None, None, f"only {len(tp)} points triangulated (fewer than {min_points})"
    pts = np.asarray(tp.xyz, dtype=np.float32)
    cols = np.asarray(tp.rgb, dtype=np.float32) / 255.0
    return pts, cols, f"{len(pts)} points triangulated from {len(scene)} views with their known cameras"


def initial_points(scene: Scene, *, init: str, num_points: int, seed: int, carve: bool,
                   scene_scale: float, depths_are_metric: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(points, colors, description)`` for ``init`` = ``auto`` (SfM points when the scene has
    them, else random), ``sfm``, ``random`` or ``triangulated`` (:func:`triangulated_points`; random
    points, with a warning, when too few survive). Depth maps that are not metric
    (``depths_are_metric=False``: inverse depth) never bound the random points."""
    if init == "triangulated":
        pts, cols, how = triangulated_points(scene, seed=seed)
        if pts is not None:
            return pts, cols, how
        import warnings

        warnings.warn(f"init 'triangulated': {how}; starting from random points instead", stacklevel=2)
        pts, cols, how = initial_points(scene, init="random", num_points=num_points, seed=seed, carve=carve,
                                        scene_scale=scene_scale, depths_are_metric=depths_are_metric)
        return pts, cols, how + " (triangulation fell back to random)"
    if init == "sfm" and (scene.points is None or len(scene.points) == 0):
        raise SplatkitError("init 'sfm' needs SfM points; this dataset has none (use --init random)")
    if init == "auto":
        init = "sfm" if scene.points is not None and len(scene.points) > 0 else "random"
    if init == "sfm":
        pts = np.asarray(scene.points, dtype=np.float32)
        cols = (np.asarray(scene.point_colors, dtype=np.float32) if scene.point_colors is not None
                else np.full_like(pts, 0.5))
        return pts, cols, f"{len(pts)} SfM points"
    rng = np.random.default_rng(seed)
    if not depths_are_metric and scene.depths is not None:
        scene = _without_depths(scene)
    pts, cols, bounds = random_init_points(scene, num_points, rng, carve=carve, scene_scale=scene_scale)
    return pts, cols, f"{len(pts)} random points ({bounds})"
