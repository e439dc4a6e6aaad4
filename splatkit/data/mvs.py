"""Plane-sweep multi-view stereo with known cameras: a depth map per view from photo-consistency
(zero-mean NCC over a window) against its nearest views, sub-plane refinement, a geometric
consistency check between the views' depth maps, and the surviving pixels fused into a coloured
point cloud.

This is the network-free counterpart of the dense-match initialisations sparse-view 3DGS papers
use (Binocular3DGS: LoFTR matches triangulated with the known cameras; CoR-GS's plain-3DGS
baseline: MVS points) and of COLMAP's dense reconstruction. Why our own: pycolmap's PatchMatch
stereo is built only with CUDA, open3d has no multi-view stereo, and 3 to 9 views at a few hundred
pixels need nothing more than a plane sweep (Collins 1996) with Gallup et al.'s inverse-depth
plane spacing, evaluated as batched ``grid_sample`` + box filters in PyTorch (seconds on a CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from splatkit.data.scene import Scene
from splatkit.errors import DataError

# Photo-consistency window (pixels, odd). 7x7 is the usual NCC window at DTU's 400x300 (COLMAP's
# PatchMatch default window radius 5 is for full-resolution photos).
DEFAULT_WINDOW = 7
# Planes per sweep: spaced evenly in inverse depth (Gallup et al. 2007) so that a plane step moves
# the reprojection by about the same number of pixels at every depth.
DEFAULT_NUM_PLANES = 160
# A pixel's best NCC must reach this (COLMAP's filter_min_ncc is 0.1 for PatchMatch's smoothed
# costs; a raw plane-sweep NCC over 2-4 views needs a stricter bar against repetitive texture).
DEFAULT_MIN_NCC = 0.6
# Textureless windows (grey-level std below this, in [0, 1] units) give no reliable match: DTU's
# dark backdrop, sky, blown-out highlights.
DEFAULT_MIN_TEXTURE = 0.01
# Geometric consistency (COLMAP's stereo fusion: max reprojection error 2 px, max relative depth
# error 1%); a pixel is kept when at least ``min_consistent`` other views agree.
DEFAULT_MAX_REPROJ_PX = 1.5
DEFAULT_MAX_REL_DEPTH = 0.01
# Source views per reference view (nearest camera centres), and how many of their NCC curves are
# averaged per plane (the best ones: a point occluded in one source still matches in the others).
DEFAULT_NEIGHBOURS = 4


@dataclass
class StereoDepths:
    """Per-view results of :func:`plane_sweep`: ``depths[i]`` [H, W] z-depth along view ``i``'s
    axis in the scene's frame (0 where no depth passed the filters), ``ncc[i]`` [H, W] the best
    aggregated NCC, and the sweep's ``depth_range`` (near, far)."""

    depths: list[np.ndarray]
    ncc: list[np.ndarray]
    depth_range: tuple[float, float]


def _gray(img: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(img[..., :3].mean(axis=-1), dtype=np.float32))


def _box(x, window: int):
    """Mean over a ``window`` x ``window`` neighbourhood, same size (edges replicate)."""
    import torch.nn.functional as F

    r = window // 2
    x = F.pad(x[:, None], (r, r, r, r), mode="replicate")
    return F.avg_pool2d(x, window, stride=1)[:, 0]


def _pixel_grid(W: int, H: int):
    import torch

    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                          indexing="ij")
    return torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)  # pixel centres, homogeneous


def nearest_views(scene: Scene, count: int) -> list[list[int]]:
    """For each view, the ``count`` other views whose camera centres are nearest (the usual choice
    of stereo partners for small-baseline captures such as DTU's and LLFF's)."""
    c = scene.cameras.centers
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return [list(np.argsort(row, kind="stable")[:min(count, len(c) - 1)]) for row in d]


def estimate_depth_range(scene: Scene, points: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(near, far) z-depths to sweep: the 2nd-98th percentile of ``points``' depths over every
    view (SfM or triangulated points), widened x0.7 / x1.4; without enough points, a range around
    the cameras' focus point (0.4 to 2.5 times its distance: object-centred captures)."""
    from splatkit.data.normalize import focus_point

    cams = scene.cameras
    if points is not None and len(points) >= 10:
        _, z = cams.project(np.asarray(points, dtype=np.float64))
        z = z[z > 0]
        if len(z) >= 10:
            lo, hi = np.percentile(z, 2), np.percentile(z, 98)
            return float(0.7 * lo), float(1.4 * hi)
    center = focus_point(cams) if len(cams) >= 2 else None
    if center is None:
        raise DataError("plane-sweep stereo needs a depth range: give SfM points, or cameras that look at a "
                        "common point")
    _, z = cams.project(center[None])
    dist = float(np.median(z[:, 0]))
    if not dist > 0:
        raise DataError("plane-sweep stereo: the cameras' focus point lies behind them")
    return 0.4 * dist, 2.5 * dist


def plane_sweep(scene: Scene, depth_range: tuple[float, float], *, num_planes: int = DEFAULT_NUM_PLANES,
                window: int = DEFAULT_WINDOW, neighbours: int = DEFAULT_NEIGHBOURS, min_ncc: float = DEFAULT_MIN_NCC,
                min_texture: float = DEFAULT_MIN_TEXTURE, views: Optional[Sequence[int]] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> StereoDepths:
    """A depth map per view (``views``: positions, all by default) by sweeping ``num_planes``
    fronto-parallel planes between ``depth_range`` (evenly in inverse depth) and keeping, per
    pixel, the plane whose mean NCC over the best half of its ``neighbours`` source views is
    highest, refined by a parabola through the NCC of the planes either side. Pixels whose best
    NCC is below ``min_ncc``, whose window is textureless, or whose best plane is the first or
    last (the true depth may lie outside the range) get depth 0."""
    import torch

    if len(scene) < 2:
        raise DataError("plane-sweep stereo needs at least two views")
    if window < 3 or window % 2 == 0:
        raise DataError(f"NCC window must be odd and >= 3, got {window}")
    near, far = float(depth_range[0]), float(depth_range[1])
    if not (0 < near < far and math.isfinite(far)):
        raise DataError(f"depth range must satisfy 0 < near < far, got ({near}, {far})")
    if num_planes < 3:
        raise DataError(f"plane sweep needs at least 3 planes, got {num_planes}")
    cams = scene.cameras
    w2c = cams.worldtocams()
    grays = [_gray(img) for img in scene.images]
    partners = nearest_views(scene, neighbours)
    inv = torch.linspace(1.0 / near, 1.0 / far, num_planes, dtype=torch.float64)
    views = list(range(len(scene))) if views is None else [int(v) for v in views]
    depths = [np.zeros((int(h), int(w)), np.float32) for w, h in zip(cams.widths, cams.heights)]
    nccs = [np.zeros_like(d) for d in depths]
    eps = 1e-6
    for n, r in enumerate(views):
        W, H = int(cams.widths[r]), int(cams.heights[r])
        ref = grays[r][None]
        mu_r = _box(ref, window)
        var_r = (_box(ref * ref, window) - mu_r ** 2).clamp_min(0)
        rays = (torch.from_numpy(np.linalg.inv(cams.Ks[r])) @ _pixel_grid(W, H).T).T  # z = 1
        c2w_r = torch.from_numpy(cams.camtoworlds[r])
        srcs = partners[r]
        warps = []
        for s in srcs:
            # Reference camera frame -> source pixels: x_s ~ K_s (R x + t), x = d * ray.
            rel = torch.from_numpy(w2c[s]) @ c2w_r
            Ks = torch.from_numpy(cams.Ks[s])
            warps.append(((Ks @ rel[:3, :3] @ rays.T).T, Ks @ rel[:3, 3], grays[s][None, None],
                          int(cams.widths[s]), int(cams.heights[s])))
        top = max(1, (len(srcs) + 1) // 2)
        # Planes one at a time, keeping per pixel the best aggregated NCC, its plane and the NCC of
        # the planes either side (for the parabola): memory does not grow with the plane count.
        best = torch.full((H, W), -math.inf)
        idx = torch.zeros((H, W), dtype=torch.long)
        c_m = torch.full((H, W), -1.0)
        c_p = torch.full((H, W), -1.0)
        prev = torch.full((H, W), -1.0)
        for k in range(num_planes):
            scores = torch.empty(len(srcs), H, W)
            for j, (a, b, src, Ws, Hs) in enumerate(warps):
                p = a / inv[k] + b
                z = p[:, 2]
                uv = p[:, :2] / z.clamp_min(1e-9)[:, None]
                grid = torch.stack([uv[:, 0] / Ws * 2 - 1, uv[:, 1] / Hs * 2 - 1], -1).float()
                warped = torch.nn.functional.grid_sample(src, grid.view(1, H, W, 2), mode="bilinear",
                                                         padding_mode="zeros", align_corners=False)[0]
                valid = ((grid.abs() <= 1).all(-1) & (z > 0)).view(1, H, W).float()
                mu_s = _box(warped, window)
                var_s = (_box(warped * warped, window) - mu_s ** 2).clamp_min(0)
                cov = _box(warped * ref, window) - mu_s * mu_r
                ncc = cov / torch.sqrt(var_r * var_s + eps)
                # A window partly outside the source image scores -1 (no evidence).
                full = _box(valid, window) > 0.999
                scores[j] = torch.where(full, ncc, torch.full_like(ncc, -1.0))[0]
            agg = scores.topk(top, dim=0).values.mean(0) if len(srcs) > 1 else scores[0]
            c_p = torch.where(idx == k - 1, agg, c_p)  # the plane after the best so far
            better = agg > best
            best = torch.where(better, agg, best)
            idx = torch.where(better, torch.full_like(idx, k), idx)
            c_m = torch.where(better, prev, c_m)
            prev = agg
        # Parabola through the best plane and its neighbours, in plane-index units.
        denom = c_m - 2 * best + c_p
        offset = torch.where(denom < -1e-6, 0.5 * (c_m - c_p) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
        step = (inv[-1] - inv[0]) / (num_planes - 1)
        inv_depth = inv[0] + (idx.double() + offset.double()) * step
        depth = (1.0 / inv_depth).float()
        texture = torch.sqrt(var_r[0]) >= min_texture
        keep = (best >= min_ncc) & texture & (idx > 0) & (idx < num_planes - 1)
        depths[r] = torch.where(keep, depth, torch.zeros_like(depth)).numpy()
        nccs[r] = best.numpy()
        if progress is not None:
            progress(n + 1, len(views))
    return StereoDepths(depths=depths, ncc=nccs, depth_range=(near, far))


def consistent_points(scene: Scene, depths: Sequence[np.ndarray], *, min_consistent: int = 1,
                      max_reproj_px: float = DEFAULT_MAX_REPROJ_PX, max_rel_depth: float = DEFAULT_MAX_REL_DEPTH,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse per-view depth maps into points: a pixel of view ``r`` with a depth survives when, in
    at least ``min_consistent`` other views, the point lands where that view's own depth
    (unprojected and projected back into ``r``) comes within ``max_reproj_px`` pixels and
    ``max_rel_depth`` relative depth of it (COLMAP's fusion test, forward-backward). Returns
    ``(points [P, 3], colors [P, 3] in [0, 1], view [P])``, each point coloured by its pixel."""
    out_pts, out_cols, out_view = [], [], []
    for r in range(len(scene)):
        found = _consistent_pixels(scene, depths, r, min_consistent, max_reproj_px, max_rel_depth)
        if found is None:
            continue
        ys, xs, world, keep = found
        out_pts.append(world[keep])
        out_cols.append(scene.images[r][ys[keep], xs[keep], :3])
        out_view.append(np.full(int(keep.sum()), r, dtype=np.int32))
    if not out_pts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.float32), np.zeros(0, np.int32)
    return (np.concatenate(out_pts), np.concatenate(out_cols).astype(np.float32), np.concatenate(out_view))


def consistent_depth_maps(scene: Scene, depths: Sequence[np.ndarray], *, min_consistent: int = 1,
                          max_reproj_px: float = DEFAULT_MAX_REPROJ_PX, max_rel_depth: float = DEFAULT_MAX_REL_DEPTH,
                          ) -> list[np.ndarray]:
    """``depths`` with every pixel that fails :func:`consistent_points`' test set to 0."""
    out = []
    for r in range(len(scene)):
        d = np.zeros_like(np.asarray(depths[r], dtype=np.float32))
        found = _consistent_pixels(scene, depths, r, min_consistent, max_reproj_px, max_rel_depth)
        if found is not None:
            ys, xs, _, keep = found
            d[ys[keep], xs[keep]] = np.asarray(depths[r])[ys[keep], xs[keep]]
        out.append(d)
    return out


def _consistent_pixels(scene: Scene, depths: Sequence[np.ndarray], r: int, min_consistent: int,
                       max_reproj_px: float, max_rel_depth: float):
    """View ``r``'s pixels with a depth: ``(rows, cols, world points, passes the test)``, or None."""
    cams = scene.cameras
    w2c = cams.worldtocams()
    d = np.asarray(depths[r], dtype=np.float64)
    ys, xs = np.nonzero(d > 0)
    if len(ys) == 0:
        return None
    z = d[ys, xs]
    pix = np.stack([xs + 0.5, ys + 0.5, np.ones_like(z)], -1)
    cam = (np.linalg.inv(cams.Ks[r]) @ pix.T).T * z[:, None]
    world = cam @ cams.camtoworlds[r, :3, :3].T + cams.camtoworlds[r, :3, 3]
    votes = np.zeros(len(z), dtype=np.int32)
    for s in range(len(scene)):
        if s == r:
            continue
        ds = np.asarray(depths[s], dtype=np.float64)
        Hs, Ws = ds.shape
        ps = world @ w2c[s, :3, :3].T + w2c[s, :3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (ps @ cams.Ks[s].T)[:, :2] / ps[:, 2:3]
        ui, vi = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (ps[:, 2] > 0) & (ui >= 0) & (ui < Ws) & (vi >= 0) & (vi < Hs)
        zs = np.zeros(len(z))
        zs[inside] = ds[vi[inside], ui[inside]]
        ok = inside & (zs > 0)
        # The source's own point at that pixel, back into the reference view.
        pix_s = np.stack([ui + 0.5, vi + 0.5, np.ones_like(zs)], -1)
        cam_s = (np.linalg.inv(cams.Ks[s]) @ pix_s.T).T * zs[:, None]
        world_s = cam_s @ cams.camtoworlds[s, :3, :3].T + cams.camtoworlds[s, :3, 3]
        back = world_s @ w2c[r, :3, :3].T + w2c[r, :3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv_r = (back @ cams.Ks[r].T)[:, :2] / back[:, 2:3]
            reproj = np.linalg.norm(uv_r - pix[:, :2], axis=1)
            rel = np.abs(back[:, 2] - z) / z
        votes += (ok & (reproj <= max_reproj_px) & (rel <= max_rel_depth)).astype(np.int32)
    return ys, xs, world, votes >= min_consistent


def depth_anchors(scene: Scene, seed: int = 0) -> Optional[np.ndarray]:
    """Points that set the sweep's depth range (:func:`estimate_depth_range`): the scene's SfM
    points; none when the cameras look at a common point (its distance sets the range); else
    points triangulated across the views by SIFT (forward-facing captures). Raises
    :class:`~splatkit.errors.DataError` when none of these exists."""
    from splatkit.data.normalize import focus_point
    from splatkit.data.sfm import triangulate_known_poses

    if scene.points is not None and len(scene.points):
        return np.asarray(scene.points, dtype=np.float64)
    if focus_point(scene.cameras) is not None:
        return None
    tri = triangulate_known_poses(scene, seed=seed)
    if len(tri) < 10:
        raise DataError(f"no depth range for the stereo sweep: only {len(tri)} points triangulated across the views")
    return np.asarray(tri.xyz, dtype=np.float64)


# The last scene's consistent depth maps: the initialisation and the depth prior of one run ask
# for the same sweep (seconds to minutes on a CPU).
_LAST_SWEEP: dict = {}


def stereo_depths(scene: Scene, *, num_planes: int = DEFAULT_NUM_PLANES, window: int = DEFAULT_WINDOW,
                  progress: Optional[Callable[[int, int], None]] = None) -> tuple[list[np.ndarray], tuple[float, float]]:
    """Every view's plane-sweep depth (:func:`plane_sweep`, range from :func:`depth_anchors`) kept
    where another view agrees (:func:`consistent_depth_maps`; 0 elsewhere), and the range swept.
    The last scene's result is remembered (same cameras, images and settings: same maps)."""
    import hashlib

    h = hashlib.sha1()
    for arr in (scene.cameras.Ks, scene.cameras.camtoworlds, *scene.images):
        h.update(np.ascontiguousarray(arr).tobytes())
    key = (h.hexdigest(), num_planes, window)
    if _LAST_SWEEP.get("key") != key:
        near_far = estimate_depth_range(scene, depth_anchors(scene))
        stereo = plane_sweep(scene, near_far, num_planes=num_planes, window=window, progress=progress)
        _LAST_SWEEP.clear()
        _LAST_SWEEP.update(key=key, maps=consistent_depth_maps(scene, stereo.depths), near_far=near_far)
    return [m.copy() for m in _LAST_SWEEP["maps"]], _LAST_SWEEP["near_far"]


def stereo_points(scene: Scene, *, max_points: int = 100_000, seed: int = 0,
                  num_planes: int = DEFAULT_NUM_PLANES, window: int = DEFAULT_WINDOW,
                  progress: Optional[Callable[[int, int], None]] = None
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """Dense points for a model's initialisation: every pixel of :func:`stereo_depths` unprojected
    and coloured by its image, at most ``max_points`` of them (a random subset with ``seed``).
    Returns ``(points, colors, description)``."""
    maps, near_far = stereo_depths(scene, num_planes=num_planes, window=window, progress=progress)
    cams = scene.cameras
    pts, cols = [], []
    for r, d in enumerate(maps):
        ys, xs = np.nonzero(d > 0)
        z = d[ys, xs].astype(np.float64)
        pix = np.stack([xs + 0.5, ys + 0.5, np.ones_like(z)], -1)
        cam = (np.linalg.inv(cams.Ks[r]) @ pix.T).T * z[:, None]
        pts.append(cam @ cams.camtoworlds[r, :3, :3].T + cams.camtoworlds[r, :3, 3])
        cols.append(scene.images[r][ys, xs, :3])
    pts, cols = np.concatenate(pts), np.concatenate(cols).astype(np.float32)
    found = len(pts)
    if found > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(found, max_points, replace=False))
        pts, cols = pts[pick], cols[pick]
    how = (f"{len(pts)} points from plane-sweep stereo over {len(scene)} views ({found} consistent pixels, "
           f"depths {near_far[0]:.3g}-{near_far[1]:.3g})")
    return pts.astype(np.float32), cols, how
