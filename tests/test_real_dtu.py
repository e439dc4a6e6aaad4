"""The DTU IDR reader on the real scan 65 (400x300 images, cameras for the 1600x1200 originals).

Pixel-convention bookkeeping, checked here to a hundredth of a pixel:

* ``world_mat_i`` projects to full-resolution coordinates with pixel centres on integers:
  ``u_int = (P X)_0 / (P X)_2``.
* Ours puts pixel centres at +0.5, so at full resolution ``u_full = u_int + 0.5``.
* The 400x300 images average 4x4 blocks: low-res pixel k covers full-res corner coordinates
  [4k, 4k + 4], so ``u_ours = u_full / 4 = u_int / 4 + 0.125`` (same for v).
* The naive rescale ``P' = diag(1/4, 1/4, 1) P`` gives ``u_int / 4``: off by exactly 0.125 px in
  each coordinate (0.177 px in distance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splatkit.data import load_scene
from splatkit.errors import SplatkitError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCAN = DATA / "dtu_scan65"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (SCAN / "cameras_sphere.npz").is_file(),
                       reason=f"real DTU scan not available at {SCAN} (it lives in ../shared/data beside the repo)"),
]


@pytest.fixture(scope="module")
def scene_and_cams():
    scene = load_scene(SCAN)
    with np.load(SCAN / "cameras_sphere.npz") as z:
        cams = {k: np.asarray(z[k], dtype=np.float64) for k in z.files}
    return scene, cams


def unit_sphere_points(n: int = 300) -> np.ndarray:
    """A Fibonacci lattice on the unit sphere plus its centre."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    pts = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
    return np.vstack([pts, np.zeros((1, 3))])


def test_loads_49_views_at_400x300(scene_and_cams):
    scene, _ = scene_and_cams
    assert scene.source_format == "dtu_idr"
    assert len(scene) == 49 and scene.ids == list(range(49))
    assert all(img.shape == (300, 400, 3) and img.dtype == np.float32 for img in scene.images)
    assert list(scene.cameras.widths) == [400] * 49 and list(scene.cameras.heights) == [300] * 49
    assert scene.masks is not None and all(m.shape == (300, 400) for m in scene.masks)
    assert 0.0 <= min(float(img.min()) for img in scene.images)
    assert max(float(img.max()) for img in scene.images) <= 1.0


def test_reprojection_matches_raw_world_mat(scene_and_cams):
    scene, cams = scene_and_cams
    unit = unit_sphere_points()
    S = cams["scale_mat_0"]
    world = unit @ S[:3, :3].T + S[:3, 3]  # the scale_mat sphere in DTU world coordinates
    ours_pts = scene.normalization.from_original(world)
    np.testing.assert_allclose(ours_pts, unit, atol=1e-6)  # the sphere is our unit sphere
    uv, z = scene.cameras.project(ours_pts)
    assert np.all(z > 0)
    world_h = np.hstack([world, np.ones((len(world), 1))])
    for i in range(49):
        P = np.diag([0.25, 0.25, 1.0]) @ cams[f"world_mat_{i}"][:3, :4]
        q = world_h @ P.T
        naive = q[:, :2] / q[:, 2:]
        assert np.max(np.linalg.norm(uv[i] - naive, axis=1)) < 0.2, f"view {i}"
        assert np.max(np.abs(uv[i] - (naive + 0.125))) < 0.01, f"view {i}"


def test_object_centre_inside_every_mask(scene_and_cams):
    scene, cams = scene_and_cams
    centre = scene.normalization.from_original(cams["scale_mat_0"][:3, 3][None])
    uv, z = scene.cameras.project(centre)
    for i in range(49):
        assert z[i, 0] > 0
        col, row = np.floor(uv[i, 0]).astype(int)
        assert 0 <= col < 400 and 0 <= row < 300, f"view {i}: centre projects outside the image"
        assert scene.masks[i][row, col] > 0.5, f"view {i}: object centre falls outside the mask"


def test_centre_crops_of_a_real_scan_need_their_frame_size_and_then_match_it(tmp_path):
    """MonoSDF's layout on scan 65: square centre crops with the originals' intrinsics, no camera_mat.
    The reader must refuse to guess, and with --intrinsics-size 1600x1200 --center-crop give the
    full frame's intrinsics shifted by the crop offset."""
    import imageio.v3 as iio

    full = load_scene(SCAN)
    with np.load(SCAN / "cameras_sphere.npz") as z:
        kept = {k: np.asarray(z[k]) for k in z.files if not k.startswith("camera_mat")}
    np.savez(tmp_path / "cameras_sphere.npz", **kept)
    (tmp_path / "image").mkdir()
    for path in sorted((SCAN / "image").glob("*.png")):
        iio.imwrite(tmp_path / "image" / path.name, iio.imread(path)[:, 50:350])  # 400x300 -> middle 300x300
    with pytest.raises(SplatkitError, match="--intrinsics-size"):
        load_scene(tmp_path)
    crop = load_scene(tmp_path, intrinsics_size="1600x1200", center_crop=True)
    want = full.cameras.Ks.copy()
    want[:, 0, 2] -= 50.0  # 1600x1200 resized x0.25 = 400x300, then the middle 300 columns
    np.testing.assert_allclose(crop.cameras.Ks, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(crop.cameras.camtoworlds, full.cameras.camtoworlds, atol=1e-9)
    np.testing.assert_allclose(crop.images[0], full.images[0][:, 50:350], atol=1e-6)
