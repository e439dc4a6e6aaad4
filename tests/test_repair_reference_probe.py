"""scripts/repair_reference_probe.py: a photo warped through the depth of an analytic plane lands
where the other camera sees the same surface point, and occluded or outside pixels are not valid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import repair_reference_probe as probe  # noqa: E402
from splatkit.data.cameras import Cameras  # noqa: E402

W, H, F, Z0 = 64, 48, 60.0, 4.0


def plane_views(baseline: float = 0.5):
    """Two cameras looking down +z at the plane z = Z0 (world), the second moved by ``baseline``
    along x; each photo is the plane's texture, a smooth function of the world point it sees."""
    K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1.0]])
    poses = np.stack([np.eye(4), np.eye(4)])
    poses[1, 0, 3] = baseline
    cams = Cameras(np.stack([K, K]), poses, W, H)
    photos, depths = [], []
    for i in range(2):
        origins, dirs = cams.pixel_rays(i)
        t = (Z0 - origins[..., 2]) / dirs[..., 2]
        X = origins + dirs * t[..., None]
        photos.append(np.stack([0.5 + 0.4 * np.sin(X[..., 0] * 3.0), 0.5 + 0.4 * np.cos(X[..., 1] * 2.0),
                                np.full(X.shape[:2], 0.3)], axis=-1).astype(np.float32))
        depths.append(np.full((H, W), Z0, dtype=np.float32))  # camera z of the plane: Z0 for both
    return cams, photos, depths


def test_warp_matches_the_other_camera_on_an_analytic_plane():
    cams, photos, depths = plane_views()
    warped, valid = probe.warp_photo(cams, 0, 1, depths[0], photos[1], depths[1], tol=0.01)
    # The second camera sees x in [baseline - W/2 Z0/F, ...]: the first camera's left columns lie
    # outside it (disparity F * b / Z0 = 7.5 px), the rest are valid.
    shift = F * 0.5 / Z0
    assert not valid[:, : int(shift) - 1].any()
    assert valid[1:-1, int(np.ceil(shift)) + 1:-1].all()
    err = np.abs(warped - photos[0])[valid]
    assert err.max() < 0.01  # bilinear sampling of a smooth texture
    # Warped into itself, a view is its own photo.
    same, ok = probe.warp_photo(cams, 0, 0, depths[0], photos[0], depths[0], tol=0.01)
    assert ok.all() and np.allclose(same, photos[0], atol=1e-5)


def test_warp_rejects_pixels_the_source_sees_at_another_depth():
    cams, photos, depths = plane_views()
    occluder = depths[1].copy()
    occluder[:, : W // 2] = Z0 * 0.5  # something in front of the plane in the source's left half
    _, valid = probe.warp_photo(cams, 0, 1, depths[0], photos[1], occluder, tol=0.01)
    _, free = probe.warp_photo(cams, 0, 1, depths[0], photos[1], depths[1], tol=0.01)
    assert free.sum() > valid.sum() > 0
    opaque = np.zeros((H, W), bool)
    _, none = probe.warp_photo(cams, 0, 1, depths[0], photos[1], depths[1], tol=0.01, opaque=opaque)
    assert not none.any()
