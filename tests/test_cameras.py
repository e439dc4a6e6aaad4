"""Tests for the shared camera model (splatkit.data.cameras) and the scene normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splatkit.data.cameras import (
    Cameras, check_rigid, opencv_to_opengl, opengl_to_opencv, shift_principal_point_to_corner_origin,
)
from splatkit.data.scene import Normalization
from splatkit.errors import DataError


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))  # unique QR -> uniformly random orthogonal matrix
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _rigid(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        out[i, :3, :3] = _rotation(rng)
        out[i, :3, 3] = rng.uniform(-3, 3, 3)
    return out


def _K(fx, fy, cx, cy, skew=0.0) -> np.ndarray:
    return np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _cameras(seed: int = 0, n: int = 3, skew: float = 0.0) -> Cameras:
    rng = np.random.default_rng(seed)
    Ks = np.stack([_K(100 + 10 * i, 110 + 5 * i, 31.7 + i, 23.2 - i, skew) for i in range(n)])
    return Cameras(Ks=Ks, camtoworlds=_rigid(rng, n), widths=64, heights=48)


# -- axis conventions -------------------------------------------------------------------------
def test_opencv_opengl_round_trip_and_axis_flip():
    c2w = _rigid(np.random.default_rng(1), 4)
    gl = opencv_to_opengl(c2w)
    np.testing.assert_allclose(opengl_to_opencv(gl), c2w, atol=1e-15)
    np.testing.assert_allclose(opencv_to_opengl(opengl_to_opencv(c2w)), c2w, atol=1e-15)
    # The camera's own y and z axes (columns 1, 2) flip; x axis and centre stay.
    np.testing.assert_array_equal(gl[:, :3, 0], c2w[:, :3, 0])
    np.testing.assert_array_equal(gl[:, :3, 1], -c2w[:, :3, 1])
    np.testing.assert_array_equal(gl[:, :3, 2], -c2w[:, :3, 2])
    np.testing.assert_array_equal(gl[:, :, 3], c2w[:, :, 3])
    cams = Cameras.from_opengl(_K(50, 50, 16, 12)[None].repeat(4, 0), gl, 32, 24)
    np.testing.assert_allclose(cams.camtoworlds, c2w, atol=1e-15)
    np.testing.assert_allclose(cams.camtoworlds_opengl(), gl, atol=1e-15)


def test_opengl_camera_semantics():
    """An OpenGL camera at the origin looks down -z with +y up: a point ahead and above must land
    in front of the converted camera (positive depth) and above the principal point (smaller v)."""
    cams = Cameras.from_opengl(_K(50, 50, 16, 12)[None], np.eye(4)[None], 32, 24)
    uv, depth = cams.project(np.array([[0.0, 0.0, -2.0], [0.0, 0.5, -2.0], [0.5, 0.0, -2.0]]))
    np.testing.assert_allclose(depth[0], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(uv[0, 0], [16, 12])
    np.testing.assert_allclose(uv[0, 1], [16, 12 - 50 * 0.25])  # up in the world = up in the image
    np.testing.assert_allclose(uv[0, 2], [16 + 50 * 0.25, 12])  # right stays right


# -- world-to-camera ----------------------------------------------------------------------------
def test_viewmats_invert_camtoworlds():
    cams = _cameras(2, n=5)
    w2c = cams.worldtocams()
    np.testing.assert_allclose(w2c @ cams.camtoworlds, np.tile(np.eye(4), (5, 1, 1)), atol=1e-12)
    vm = cams.viewmats()
    assert isinstance(vm, torch.Tensor) and vm.dtype == torch.float32 and vm.shape == (5, 4, 4)
    prod = vm.double() @ torch.from_numpy(cams.camtoworlds)
    torch.testing.assert_close(prod, torch.eye(4, dtype=torch.float64).expand(5, 4, 4), atol=1e-5, rtol=0)
    Ks = cams.intrinsics()
    assert Ks.dtype == torch.float32
    np.testing.assert_allclose(Ks.numpy(), cams.Ks, rtol=1e-6)


# -- projection and pixel convention ------------------------------------------------------------
def test_point_on_optical_axis_hits_principal_point():
    cams = _cameras(3, n=4)
    dist = np.array([0.5, 2.0, 7.25])
    for i in range(len(cams)):
        pts = cams.centers[i] + dist[:, None] * cams.forward[i]
        uv, z = cams[i].project(pts)
        np.testing.assert_allclose(uv[0], np.tile(cams.Ks[i, :2, 2], (3, 1)), atol=1e-9)
        np.testing.assert_allclose(z[0], dist, atol=1e-12)
    uv, z = cams.project(np.zeros((6, 3)))
    assert uv.shape == (4, 6, 2) and z.shape == (4, 6)


@pytest.mark.parametrize("skew", [0.0, 3.5])
def test_pixel_rays_pass_through_pixel_centres(skew):
    cams = _cameras(4, n=2, skew=skew)
    for idx in range(2):
        o, d = cams.pixel_rays(idx)
        H, W = int(cams.heights[idx]), int(cams.widths[idx])
        assert o.shape == d.shape == (H, W, 3)
        np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-12)
        np.testing.assert_allclose(o, np.broadcast_to(cams.centers[idx], o.shape))
        uv, z = cams[idx].project((o + 2.5 * d).reshape(-1, 3))
        assert np.all(z > 0)
        j, i = np.mgrid[0:H, 0:W]  # row j, column i
        expected = np.stack([i + 0.5, j + 0.5], axis=-1).reshape(-1, 2)
        np.testing.assert_allclose(uv[0], expected, atol=1e-9)


def test_shift_principal_point_to_corner_origin():
    K = _K(80, 90, 15.0, 11.0)
    out = shift_principal_point_to_corner_origin(K)
    np.testing.assert_array_equal(out[:2, 2], [15.5, 11.5])
    np.testing.assert_array_equal(K[:2, 2], [15.0, 11.0])  # input untouched


# -- rescaling --------------------------------------------------------------------------------
def test_rescaled_scales_projections_and_sizes():
    cams = _cameras(5, n=3, skew=1.25)
    pts = cams.centers[0] + np.array([[0.1, -0.2, 0.0]]) + 3.0 * cams.forward[0]
    uv, z = cams.project(pts)
    for factor in (0.5, 0.25):
        small = cams.rescaled(factor)
        uv_s, z_s = small.project(pts)
        np.testing.assert_allclose(uv_s, uv * factor, atol=1e-9)
        np.testing.assert_allclose(z_s, z)
        np.testing.assert_array_equal(small.widths, np.round(cams.widths * factor))
        np.testing.assert_array_equal(small.heights, np.round(cams.heights * factor))
        np.testing.assert_array_equal(small.camtoworlds, cams.camtoworlds)
    with pytest.raises(DataError):
        cams.rescaled(0.0)


def _render_fronto_parallel_plane(cams: Cameras, idx: int, ref: Cameras) -> np.ndarray:
    """Image of a textured plane facing camera ``ref[0]`` at depth 4, sampled at the pixel centres
    of ``cams[idx]``. The texture is affine in the plane's coordinates, hence affine in pixel
    coordinates (a fronto-parallel plane maps to the image by a scaling and a shift)."""
    o, d = cams.pixel_rays(idx)
    R, c = ref.camtoworlds[0, :3, :3], ref.camtoworlds[0, :3, 3]
    t = (4.0 - (o - c) @ R[:, 2]) / (d @ R[:, 2])  # ray parameter where it meets the plane
    local = (o + t[..., None] * d - c) @ R  # hit points in the reference camera's frame
    return 0.3 + 0.11 * local[..., 0] + 0.07 * local[..., 1]


def test_rescaled_matches_block_averaged_render():
    """Block-averaging a 2x render must equal rendering with rescaled(0.5). For an affine pattern,
    the mean of the four 2x2 pixel-centre samples is the value at the block's centre, so the test
    is exact; it fails for any other pixel-centre convention (a quarter-pixel shift)."""
    rng = np.random.default_rng(6)
    full = Cameras(_K(120.0, 118.0, 40.3, 29.9)[None], _rigid(rng, 1), 80, 60)
    half = full.rescaled(0.5)
    img_full = _render_fronto_parallel_plane(full, 0, full)
    block_avg = img_full.reshape(30, 2, 40, 2).mean(axis=(1, 3))
    img_half = _render_fronto_parallel_plane(half, 0, full)
    assert img_half.shape == (30, 40)
    np.testing.assert_allclose(img_half, block_avg, atol=1e-12)
    # Sensitivity: the classic mistake of scaling intrinsics in the integer-centre convention,
    # cx_int' = f * cx_int, is cx' = (cx - 0.5) / 2 + 0.5 here: a quarter-pixel shift that this
    # pattern detects (by ~0.003, against the 1e-12 agreement of the right convention).
    wrong_K = half.Ks.copy()
    wrong_K[0, :2, 2] = (full.Ks[0, :2, 2] - 0.5) * 0.5 + 0.5
    wrong = Cameras(wrong_K, half.camtoworlds, half.widths, half.heights)
    assert np.abs(_render_fronto_parallel_plane(wrong, 0, full) - block_avg).min() > 1e-3


# -- batching ---------------------------------------------------------------------------------
def test_subset_and_concatenate():
    cams = _cameras(7, n=4)
    sub = cams[[2, 0]]
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.Ks, cams.Ks[[2, 0]])
    np.testing.assert_array_equal(sub.camtoworlds, cams.camtoworlds[[2, 0]])
    assert len(cams[1]) == 1 and len(cams[-1]) == 1 and len(cams[1:3]) == 2
    np.testing.assert_array_equal(cams[-1].Ks, cams.Ks[3:])
    whole = Cameras.concatenate([cams[:1], cams[1:3], cams[3:]])
    for name in ("Ks", "camtoworlds", "widths", "heights"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(cams, name))
    assert whole.distortion is None


def test_concatenate_pads_distortion():
    a = _cameras(8, n=2)
    b = Cameras(a.Ks, a.camtoworlds, a.widths, a.heights, distortion=[[0.1, -0.01, 0.0, 0.0]] * 2)
    c = Cameras(a.Ks[:1], a.camtoworlds[:1], 64, 48, distortion=[[0.2, 0.0, 0.001, 0.0, 0.003]])
    cat = Cameras.concatenate([a, b, c])
    assert cat.distortion.shape == (5, 5)
    np.testing.assert_array_equal(cat.distortion[:2], 0.0)
    np.testing.assert_array_equal(cat.distortion[2:4], [[0.1, -0.01, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(cat.distortion[4], [0.2, 0.0, 0.001, 0.0, 0.003])
    np.testing.assert_array_equal(cat[[2]].distortion, [[0.1, -0.01, 0, 0, 0]])


# -- validation -------------------------------------------------------------------------------
def test_check_rigid_rejects_bad_poses():
    good = _rigid(np.random.default_rng(9), 3)
    check_rigid(good)
    check_rigid(good[0])
    nan = good.copy()
    nan[1, 0, 3] = np.nan
    with pytest.raises(DataError, match="pose 1 has non-finite"):
        check_rigid(nan)
    inf = good.copy()
    inf[2, 2, 2] = np.inf
    with pytest.raises(DataError, match="pose 2 has non-finite"):
        check_rigid(inf)
    scaled = good.copy()
    scaled[0, :3, :3] *= 1.5
    mirrored = good.copy()
    mirrored[2, :3, 0] *= -1  # orthogonal but det -1: a left-handed frame
    sheared = good.copy()
    sheared[1, :3, 1] += 0.1 * sheared[1, :3, 0]
    bottom = good.copy()
    bottom[1, 3, 0] = 0.5
    for bad, i in ((scaled, 0), (mirrored, 2), (sheared, 1), (bottom, 1)):
        with pytest.raises(DataError, match=f"pose {i} is not a rigid"):
            check_rigid(bad)
    with pytest.raises(DataError, match="not a rigid"):
        Cameras(_K(10, 10, 5, 5)[None], scaled[:1], 10, 10)
    with pytest.raises(DataError, match="non-finite"):
        Cameras(_K(10, np.nan, 5, 5)[None], good[:1], 10, 10)
    with pytest.raises(DataError, match="intrinsics"):
        Cameras(np.stack([_K(10, 10, 5, 5)] * 2), good, 10, 10)


# -- similarity transforms ----------------------------------------------------------------------
def test_transformed_similarity():
    rng = np.random.default_rng(10)
    cams = _cameras(11, n=4)
    s, R, t = 2.7, _rotation(rng), np.array([0.3, -1.2, 4.0])
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = t
    moved = cams.transformed(T)  # its constructor runs check_rigid
    check_rigid(moved.camtoworlds, tol=1e-9)
    np.testing.assert_allclose(moved.centers, s * cams.centers @ R.T + t, atol=1e-12)
    np.testing.assert_allclose(moved.forward, cams.forward @ R.T, atol=1e-12)
    # Pixels are invariant under a similarity of the whole world; depths scale by s.
    pts = cams.centers[0] + rng.uniform(-0.5, 0.5, (7, 3)) + 3 * cams.forward[0]
    uv, z = cams.project(pts)
    uv2, z2 = moved.project(s * pts @ R.T + t)
    np.testing.assert_allclose(uv2, uv, atol=1e-9)
    np.testing.assert_allclose(z2, s * z, atol=1e-12)
    np.testing.assert_array_equal(moved.Ks, cams.Ks)


def test_normalization_round_trip_and_matrices():
    rng = np.random.default_rng(12)
    norm = Normalization(center=np.array([1.5, -2.0, 0.25]), scale=0.37, rotation=_rotation(rng))
    x = rng.uniform(-10, 10, (9, 3))
    np.testing.assert_allclose(norm.to_original(norm.from_original(x)), x, atol=1e-12)
    np.testing.assert_allclose(norm.from_original(norm.to_original(x)), x, atol=1e-12)
    np.testing.assert_allclose(norm.matrix @ norm.inverse_matrix, np.eye(4), atol=1e-12)
    # matrix is ours_from_user, the same map as from_original, and it drives Cameras.transformed.
    xh = np.concatenate([x, np.ones((9, 1))], axis=1)
    np.testing.assert_allclose((xh @ norm.matrix.T)[:, :3], norm.from_original(x), atol=1e-12)
    np.testing.assert_allclose(xh @ norm.inverse_matrix.T, np.c_[norm.to_original(x), np.ones(9)],
                               atol=1e-12)
    cams = _cameras(13, n=3)
    np.testing.assert_allclose(cams.transformed(norm.matrix).centers, norm.from_original(cams.centers),
                               atol=1e-12)
    back = Normalization.from_dict(norm.to_dict())
    np.testing.assert_allclose(back.matrix, norm.matrix, atol=0)
