"""Initial points for a new model: SfM points, random points in the object's estimated bounds
(from depth maps, the cameras' common view, or a cube around forward-facing cameras) optionally
carved by the object masks, points triangulated across the views, or points filling the masks'
visual hull (GaussianObject's voxel carving). Any method that starts from points uses this."""

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


def _mask_votes(scene: Scene, points: np.ndarray, chunk: int = 32768, colors: bool = True,
                min_views: int = 0) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The per-point mask test every carving shares: for each point, whether every mask that sees
    it marks it as object (mask >= 0.5 at the pixel it falls in; True without masks) and at least
    ``min_views`` views see it (in front of the camera, inside the image); how many views see it;
    and with ``colors`` the mean colour of the pixels it projects to (0.5 grey where no view sees
    it; None without ``colors``). With ``min_views`` > 0 a point is dropped from the later views
    as soon as it fails (the visual hull's millions of voxels: most fail in the first view or
    two), so its count of views is then only a lower bound, and so is its colour's support."""
    cams = scene.cameras
    n_views = len(cams)
    w2c = cams.worldtocams()
    inside = np.ones(len(points), dtype=bool)
    n_seen = np.zeros(len(points), dtype=np.int32)
    out_colors = np.full((len(points), 3), 0.5, dtype=np.float32) if colors else None
    for start in range(0, len(points), chunk):
        pts = np.asarray(points[start:start + chunk], dtype=np.float64)
        acc = np.zeros((len(pts), 3)) if colors else None
        cnt = np.zeros(len(pts), dtype=np.int32)
        ok = np.ones(len(pts), dtype=bool)
        alive = np.arange(len(pts))  # the points still tested
        for v in range(n_views):
            W, H = int(cams.widths[v]), int(cams.heights[v])
            p = pts[alive]
            # Cameras.project's pinhole maths, one view at a time and written out per coordinate:
            # its einsum over all views, or a BLAS product on 2 busy cores, was 7-40x slower for
            # the visual hull's millions of voxels.
            cam = [_affine_row(w2c[v, k], p) for k in range(3)]
            hom = [cams.Ks[v, k, 0] * cam[0] + cams.Ks[v, k, 1] * cam[1] + cams.Ks[v, k, 2] * cam[2]
                   for k in range(3)]
            with np.errstate(divide="ignore", invalid="ignore"):
                px = np.floor(hom[0] / hom[2])
                py = np.floor(hom[1] / hom[2])
            seen = (cam[2] > 0) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
            ix = px[seen].astype(np.int64)
            iy = py[seen].astype(np.int64)
            seen_ids = alive[seen]
            if scene.masks is not None:
                ok[seen_ids[scene.masks[v][iy, ix] < 0.5]] = False
            if colors:
                acc[seen_ids] += scene.images[v][iy, ix, :3]
            cnt[seen_ids] += 1
            if min_views > 0:  # still inside, and not yet unseen by more views than may miss it
                alive = alive[ok[alive] & (v + 1 - cnt[alive] <= n_views - min_views)]
        inside[start:start + chunk] = ok & (cnt >= min_views)
        n_seen[start:start + chunk] = cnt
        if colors:
            has = cnt > 0
            out_colors[start:start + chunk][has] = (acc[has] / cnt[has, None]).astype(np.float32)
    return inside, n_seen, out_colors


def _affine_row(row: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``row[:3] . p + row[3]`` for every point ``p`` of ``pts [P, 3]``."""
    return row[0] * pts[:, 0] + row[1] * pts[:, 1] + row[2] * pts[:, 2] + row[3]


def _visibility_and_colors(scene: Scene, points: np.ndarray, chunk: int = 32768
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For each point: whether every mask that sees it marks it as object (True without masks),
    and the mean colour of the pixels it projects to (0.5 grey where no view sees it)."""
    inside, _, colors = _mask_votes(scene, points, chunk)
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


# GaussianObject (Yang et al., SIGGRAPH Asia 2024), ``visual_hull.py``: a first carving at
# ``--voxel_num 200`` voxels a side over a big cube (``--cube_size 4`` around the camera centroid of
# its COLMAP frame) only finds the hull's bounding box; that box, enlarged 2x about its centre
# (``scale_factor = 2``), is carved again at 64 voxels a side, and the surviving voxels are the
# initial points (``visual_hull_<n>.ply``, loaded by ``train_gs.py --init_pcd_name``).
# GaussianObject keeps a voxel inside the masks of N - 1 of the N views (a point outside an image
# counts as outside its mask); splatkit asks all N by default: with 3 views on a DTU-like arc
# (synthetic views 22, 25, 28), N - 1 left lobes where two views' silhouette cones meet outside
# the third's frame: the hull's longest side grew from 2.1 to 4.4 object radii.
VISUAL_HULL_COARSE_RESOLUTION = 200
VISUAL_HULL_BOX_SCALE = 2.0
VISUAL_HULL_RESOLUTION = 64


def _carve_grid(scene: Scene, lo: np.ndarray, hi: np.ndarray, resolution: int, min_views: int,
                chunk: int = 1 << 18) -> np.ndarray:
    """Flat indices (x fastest) of the voxels of a ``resolution``^3 grid over the box ``lo``..``hi``
    whose centres pass the shared mask test (:func:`_mask_votes`) and are seen by ``min_views``."""
    size = (hi - lo) / resolution
    keep = []
    total = resolution ** 3
    for start in range(0, total, chunk):
        flat = np.arange(start, min(start + chunk, total), dtype=np.int64)
        centres = _voxel_centres(flat, lo, size, resolution)
        inside, _, _ = _mask_votes(scene, centres, chunk=chunk, colors=False, min_views=min_views)
        keep.append(flat[inside])
    return np.concatenate(keep)


def _voxel_centres(flat: np.ndarray, lo: np.ndarray, size: np.ndarray, resolution: int) -> np.ndarray:
    ijk = np.stack([flat % resolution, (flat // resolution) % resolution, flat // resolution ** 2], axis=1)
    return lo + (ijk + 0.5) * size


def visual_hull_grid(scene: Scene, *, resolution: int = VISUAL_HULL_RESOLUTION,
                     coarse_resolution: int = VISUAL_HULL_COARSE_RESOLUTION, min_views: Optional[int] = None,
                     scene_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The visual hull of the scene's object masks carved on a voxel grid: ``(flat, lo, hi)``, the
    flat indices (x fastest) of the surviving voxels of a ``resolution``^3 grid over the box
    ``lo``..``hi``.

    A voxel survives when every view that sees its centre has mask >= 0.5 there (the test
    :func:`random_init_points` carves with) and at least ``min_views`` views (default: all) see it.
    A coarse grid over a cube around the cameras' focus point (half-size: the farthest camera's
    distance to it; forward-facing captures: gsplat's random-init cube) finds the hull's box; the
    box enlarged 2x is carved at ``resolution`` voxels a side. The masks are used whether or not
    the run trains with them (``use_masks``: the DTU protocol trains without)."""
    from splatkit.data.normalize import focus_point

    if scene.masks is None:
        raise SplatkitError("init 'visual_hull' needs object masks (mask/ beside the images); "
                            "this dataset has none (use --init random)")
    if resolution < 2 or coarse_resolution < 2:
        raise SplatkitError(f"visual hull resolutions must be >= 2, got {resolution} / {coarse_resolution}")
    cams = scene.cameras
    min_views = len(cams) if min_views is None else min_views
    if not 1 <= min_views <= len(cams):
        raise SplatkitError(f"visual hull: min_views must be in 1..{len(cams)} (the views), got {min_views}")
    center = focus_point(cams) if len(cams) >= 2 else None
    if center is not None:
        half = float(np.max(np.linalg.norm(cams.centers - center, axis=1)))
    else:
        center, half = cams.centers.mean(axis=0), RANDOM_INIT_EXTENT * scene_scale
    lo, hi = center - half, center + half
    coarse = _carve_grid(scene, lo, hi, coarse_resolution, min_views)
    if len(coarse) == 0:
        raise SplatkitError(f"init 'visual_hull': no point of the {2 * half:.3g}-wide box around the cameras' "
                            f"focus lies inside the masks of {min_views} of the {len(cams)} views")
    size = (hi - lo) / coarse_resolution
    c = _voxel_centres(coarse, lo, size, coarse_resolution)
    b_lo, b_hi = c.min(axis=0) - size / 2, c.max(axis=0) + size / 2
    mid, ext = (b_lo + b_hi) / 2, (b_hi - b_lo) * VISUAL_HULL_BOX_SCALE / 2
    lo, hi = mid - ext, mid + ext
    fine = _carve_grid(scene, lo, hi, resolution, min_views)
    if len(fine) == 0:  # only a hull thinner than a fine voxel, whose centres all miss it
        raise SplatkitError(f"init 'visual_hull': the hull is thinner than a voxel at resolution {resolution}")
    return fine, lo, hi


def visual_hull_points(scene: Scene, n: int, rng: np.random.Generator, *,
                       resolution: int = VISUAL_HULL_RESOLUTION,
                       coarse_resolution: int = VISUAL_HULL_COARSE_RESOLUTION,
                       min_views: Optional[int] = None, scene_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` points in the visual hull of the scene's object masks (:func:`visual_hull_grid`),
    GaussianObject's structure prior: ``(points, colors, description)``.

    The points are spread evenly over the surviving voxels (each gets ``n // V`` or one more),
    jittered uniformly within their voxel; a jittered point that leaves the hull falls back to its
    voxel's centre, so every point passes the mask test. Colours: the mean of the pixels a point
    projects to."""
    min_views = len(scene.cameras) if min_views is None else min_views
    fine, lo, hi = visual_hull_grid(scene, resolution=resolution, coarse_resolution=coarse_resolution,
                                    min_views=min_views, scene_scale=scene_scale)
    size = (hi - lo) / resolution
    centres = _voxel_centres(fine, lo, size, resolution)
    V = len(centres)
    which = np.concatenate([np.repeat(np.arange(V), n // V), rng.choice(V, n % V, replace=False)])
    pts = centres[which] + (rng.random((n, 3)) - 0.5) * size
    inside, _, _ = _mask_votes(scene, pts, colors=False, min_views=min_views)
    pts[~inside] = centres[which[~inside]]
    _, _, cols = _mask_votes(scene, pts)
    return (pts.astype(np.float32), cols,
            f"{V} of {resolution}^3 voxels in the visual hull of {len(scene.cameras)} masks")


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


def stereo_init_points(scene: Scene, max_points: int, seed: int = 0, min_points: Optional[int] = None
                       ) -> tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """Dense points from plane-sweep stereo between ``scene``'s views with their known cameras
    (:func:`splatkit.data.mvs.stereo_points`), the network-free stand-in for the dense-match /
    MVS initialisations of sparse-view 3DGS (Binocular3DGS, CoR-GS's baseline). ``(None, None,
    why)`` when fewer than ``min_points`` (default :data:`MIN_TRIANGULATED_POINTS`) survive or no
    depth range can be found."""
    from splatkit.data.mvs import stereo_points

    min_points = MIN_TRIANGULATED_POINTS if min_points is None else min_points
    if len(scene) < 2:
        return None, None, "stereo needs at least two views"
    try:
        pts, cols, how = stereo_points(scene, max_points=max_points, seed=seed)
    except SplatkitError as exc:
        return None, None, f"stereo failed ({exc.message})"
    if len(pts) < min_points:
        return None, None, f"only {len(pts)} stereo points (fewer than {min_points})"
    return pts, cols, how


def initial_points(scene: Scene, *, init: str, num_points: int, seed: int, carve: bool,
                   scene_scale: float, depths_are_metric: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(points, colors, description)`` for ``init`` = ``auto`` (SfM points when the scene has
    them, else random), ``sfm``, ``random``, ``triangulated`` (:func:`triangulated_points`), ``mvs``
    (:func:`stereo_init_points`) (these two fall back to random points, with a warning, when too
    few survive) or ``visual_hull`` (:func:`visual_hull_points`, from the object masks whatever
    ``carve`` says). Depth maps that are not metric
    (``depths_are_metric=False``: inverse depth) never bound the random points."""
    if init == "visual_hull":
        pts, cols, how = visual_hull_points(scene, num_points, np.random.default_rng(seed), scene_scale=scene_scale)
        return pts, cols, f"{len(pts)} points ({how})"
    if init in ("triangulated", "mvs"):
        if init == "triangulated":
            pts, cols, how = triangulated_points(scene, seed=seed)
        else:
            pts, cols, how = stereo_init_points(scene, num_points, seed=seed)
        if pts is not None:
            return pts, cols, how
        import warnings

        warnings.warn(f"init '{init}': {how}; starting from random points instead", stacklevel=2)
        pts, cols, how = initial_points(scene, init="random", num_points=num_points, seed=seed, carve=carve,
                                        scene_scale=scene_scale, depths_are_metric=depths_are_metric)
        return pts, cols, how + f" ({init} init fell back to random)"
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
