"""Every dataset reader against fixtures built from known cameras.

Each fixture draws, in view k, one bright pixel at a view-specific location (i_k, j_k) and records
the 3D point X_k whose projection is that pixel's centre. A reader is right when (a) arbitrary
3D points project, through the loaded cameras and normalisation, to the same pixels as through
the ground-truth cameras, (b) X_k lands on (i_k + 0.5, j_k + 0.5) and the loaded image k has its
bright pixel at (i_k, j_k) (so images are paired with the right cameras), and (c) with
downscale=2 every projection halves while the bright pixel moves to block (i_k // 2, j_k // 2).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from splatkit.data import load_scene
from splatkit.data.readers import colmap, dtu_idr, dtu_rectified, llff, transforms
from splatkit.data.readers.llff import llff_to_opencv_rotation
from splatkit.errors import DataError

# The COLMAP and nerfstudio fixtures have lens distortion; its warning is tested in test_distortion.py.
pytestmark = pytest.mark.filterwarnings("ignore:.*cameras have lens distortion:UserWarning")

W, H = 32, 24
N_VIEWS = 4
# Distinct bright-pixel locations per view (i = column, j = row), so swapped images are caught.
DOTS = [(9, 7), (20, 5), (13, 16), (24, 18)]
DOT_DEPTHS = [2.3, 2.6, 2.9, 2.5]
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes


# -- ground truth -------------------------------------------------------------------------------
def look_at(eye, target, roll=0.0) -> np.ndarray:
    """OpenCV camera-to-world looking from ``eye`` at ``target`` (world z up), rolled about its axis."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll), math.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def gt_poses(n=N_VIEWS, radius=3.0, center=(0.4, -0.2, 0.3)) -> list[np.ndarray]:
    center = np.asarray(center)
    out = []
    for k in range(n):
        az = 2 * math.pi * k / n + 0.3
        eye = center + radius * np.array([math.cos(az), math.sin(az), 0.35 + 0.1 * k])
        out.append(look_at(eye, center + [0.05, -0.03, 0.02], roll=0.2 * k - 0.3))
    return out


def K_of(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def gt_project(K, c2w, pts) -> tuple[np.ndarray, np.ndarray]:
    w2c = np.linalg.inv(c2w)
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def dot_point(K, c2w, k) -> np.ndarray:
    """The world point that projects to the centre of view k's bright pixel at depth DOT_DEPTHS[k]."""
    i, j = DOTS[k]
    ray = np.linalg.solve(K, [i + 0.5, j + 0.5, 1.0])
    return c2w[:3, :3] @ (ray * DOT_DEPTHS[k]) + c2w[:3, 3]


def probe_points(c2ws, n=20, seed=0) -> np.ndarray:
    """Points near the common look-at point, in front of every camera."""
    rng = np.random.default_rng(seed)
    centre = np.mean([c[:3, 3] + 3.0 * c[:3, 2] for c in c2ws], axis=0)
    return centre + rng.uniform(-0.4, 0.4, size=(n, 3))


def dot_image(k, w=W, h=H, color=(255, 255, 255)) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    i, j = DOTS[k]
    img[j, i] = color
    return img


def write_png(path: Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, img)


# -- checks shared by every reader ---------------------------------------------------------------
def check_geometry(scene, Ks, c2ws, d=1, atol=1e-6):
    """Projections through the loaded scene equal the ground truth (divided by the downscale)."""
    assert len(scene) == len(Ks)
    pts = probe_points(c2ws)
    uv, z = scene.cameras.project(scene.normalization.from_original(pts))
    for k, (K, c2w) in enumerate(zip(Ks, c2ws)):
        uv_gt, z_gt = gt_project(K, c2w, pts)
        assert np.all(z_gt > 0)
        np.testing.assert_allclose(uv[k], uv_gt / d, atol=atol, rtol=0)
        # Depth along the axis scales with the normalisation, never changes sign.
        np.testing.assert_allclose(z[k], z_gt * scene.normalization.scale, rtol=1e-6)


def check_dots(scene, Ks, c2ws, d=1, atol=1e-6, views=None):
    """X_k hits the centre of view k's bright pixel, and the loaded image has it there."""
    for pos, k in enumerate(views if views is not None else range(len(scene))):
        X = dot_point(Ks[k], c2ws[k], k)
        uv, _ = scene.cameras[pos].project(scene.normalization.from_original(X[None]))
        i, j = DOTS[k]
        np.testing.assert_allclose(uv[0, 0], [(i + 0.5) / d, (j + 0.5) / d], atol=atol)
        img = scene.images[pos]
        assert img.dtype == np.float32 and img.shape == (H // d, W // d, 3)
        assert np.unravel_index(np.argmax(img.sum(-1)), img.shape[:2]) == (j // d, i // d)


# -- COLMAP ---------------------------------------------------------------------------------------
COLMAP_IDS = [7, 3, 12, 5]  # not in name order: ids must follow the images, views the names
COLMAP_NAMES = ["a.png", "b.png", "c.png", "d.png"]
COLMAP_KS = [K_of(30.0, 29.0, 15.7, 12.2)] * 2 + [K_of(27.5, 27.5, 16.3, 11.6)] * 2


def write_colmap(root: Path, binary: bool, points: np.ndarray, colors: np.ndarray) -> list[np.ndarray]:
    import pycolmap

    c2ws = gt_poses()
    rec = pycolmap.Reconstruction()
    cam1 = pycolmap.Camera.create_from_model_name(1, "PINHOLE", 30.0, W, H)
    cam1.params = [30.0, 29.0, 15.7, 12.2]
    cam2 = pycolmap.Camera.create_from_model_name(2, "SIMPLE_RADIAL", 27.5, W, H)
    cam2.params = [27.5, 16.3, 11.6, 0.01]
    rec.add_camera_with_trivial_rig(cam1)
    rec.add_camera_with_trivial_rig(cam2)
    for k, (iid, name) in enumerate(zip(COLMAP_IDS, COLMAP_NAMES)):
        img = pycolmap.Image(name=name, camera_id=1 if k < 2 else 2, image_id=iid)
        w2c = np.linalg.inv(c2ws[k])
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(w2c[:3, :4]))
        write_png(root / "images" / name, dot_image(k))
    for p, c in zip(points, colors):
        rec.add_point3D(p, pycolmap.Track(), c)
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (rec.write_binary if binary else rec.write_text)(str(model))
    return c2ws


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_colmap(tmp_path, binary):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(6, 3))
    colors = rng.integers(0, 256, size=(6, 3)).astype(np.uint8)
    c2ws = write_colmap(tmp_path, binary, points, colors)
    assert colmap.detect(tmp_path) and not llff.detect(tmp_path)
    scene = load_scene(tmp_path)
    assert scene.source_format == "colmap"
    assert scene.ids == COLMAP_IDS and scene.names == ["a", "b", "c", "d"]
    check_geometry(scene, COLMAP_KS, c2ws)
    check_dots(scene, COLMAP_KS, c2ws)
    # SIMPLE_RADIAL's k becomes OpenCV k1; the PINHOLE views have none.
    np.testing.assert_allclose(scene.cameras.distortion[:, 0], [0, 0, 0.01, 0.01])
    order = np.lexsort(points.T[::-1])
    got = np.lexsort(scene.normalization.to_original(scene.points).T[::-1])
    np.testing.assert_allclose(scene.points[got], scene.normalization.from_original(points[order]), atol=1e-9)
    np.testing.assert_allclose(scene.point_colors[got], colors[order] / 255.0, atol=1e-6)

    half = load_scene(tmp_path, downscale=2)
    check_geometry(half, COLMAP_KS, c2ws, d=2)
    check_dots(half, COLMAP_KS, c2ws, d=2)
    # Block averaging: the lone white pixel is a quarter of its 2x2 block.
    i, j = DOTS[0]
    np.testing.assert_allclose(half.images[0][j // 2, i // 2], 0.25, atol=1e-6)


def test_colmap_prebuilt_downsample_and_masks(tmp_path):
    c2ws = write_colmap(tmp_path, True, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    for k, name in enumerate(COLMAP_NAMES):
        small = np.zeros((H // 2, W // 2, 3), np.uint8)
        i, j = DOTS[k]
        small[j // 2, i // 2] = (0, 255, 0)  # green: proves images_2 was read, not block-averaged
        write_png(tmp_path / "images_2" / name, small)
        mask = np.zeros((H, W), np.uint8)
        mask[: H // 2] = 255
        write_png(tmp_path / "masks" / f"{Path(name).stem}.png", mask)
    scene = load_scene(tmp_path, downscale=2)
    check_geometry(scene, COLMAP_KS, c2ws, d=2)
    i, j = DOTS[1]
    np.testing.assert_array_equal(scene.images[1][j // 2, i // 2], [0, 1, 0])
    # Full-resolution masks beside a prebuilt downsample are block-averaged to match.
    assert scene.masks is not None and scene.masks[0].shape == (H // 2, W // 2)
    assert scene.masks[0][: H // 4].min() == 1.0 and scene.masks[0][H // 4:].max() == 0.0
    assert scene.points is None


def test_colmap_missing_image_is_an_error(tmp_path):
    write_colmap(tmp_path, True, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    (tmp_path / "images" / "c.png").unlink()
    with pytest.raises(DataError, match=r"c\.png.*1 of 4 images"):
        load_scene(tmp_path)


# -- transforms.json --------------------------------------------------------------------------------
def _frame(path: str, c2w_cv: np.ndarray, **extra) -> dict:
    return {"file_path": path, "transform_matrix": (c2w_cv @ FLIP_YZ).tolist(), **extra}


def test_instant_ngp_with_override_and_missing_frame(tmp_path):
    c2ws = gt_poses()
    K0 = K_of(30.0, 28.5, 15.2, 12.6)
    K2 = K_of(33.0, 28.5, 16.9, 12.6)  # frame 2 overrides fl_x and cx
    frames = []
    for k in range(N_VIEWS):
        write_png(tmp_path / "images" / f"{k:03d}.png", dot_image(k))
        extra = {"fl_x": 33.0, "cx": 16.9} if k == 2 else {}
        frames.append(_frame(f"./images/{k:03d}.png", c2ws[k], sharpness=50.0, **extra))
    frames.insert(3, _frame("./images/gone.png", c2ws[0]))  # no such file: skipped, id 3 unused
    meta = {"fl_x": 30.0, "fl_y": 28.5, "cx": 15.2, "cy": 12.6, "w": W, "h": H, "aabb_scale": 4,
            "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"skipping 1 frame.*gone\.png"):
        scene = load_scene(tmp_path)
    assert scene.source_format == "transforms"
    assert scene.ids == [0, 1, 2, 4] and scene.names == ["000", "001", "002", "003"]
    Ks = [K0, K0, K2, K0]
    check_geometry(scene, Ks, c2ws)
    check_dots(scene, Ks, c2ws)
    with pytest.warns(UserWarning):
        half = load_scene(tmp_path, downscale=2)
    check_geometry(half, Ks, c2ws, d=2)
    check_dots(half, Ks, c2ws, d=2)


def test_nerfstudio_per_frame_intrinsics_masks_splits(tmp_path):
    c2ws = gt_poses()
    Ks = [K_of(29.0 + k, 29.5 + k, 15.5 + 0.2 * k, 12.1 - 0.1 * k) for k in range(N_VIEWS)]
    frames = []
    for k, K in enumerate(Ks):
        write_png(tmp_path / "images" / f"frame_{k + 1:05d}.png", dot_image(k))
        mask = np.zeros((H, W), np.uint8)
        mask[:, : W // 2] = 255
        write_png(tmp_path / "masks" / f"frame_{k + 1:05d}.png", mask)
        frames.append(_frame(f"images/frame_{k + 1:05d}.png", c2ws[k], fl_x=K[0, 0], fl_y=K[1, 1],
                             cx=K[0, 2], cy=K[1, 2], w=W, h=H, mask_path=f"masks/frame_{k + 1:05d}.png"))
    meta = {"camera_model": "OPENCV", "k1": 0.02, "k2": -0.01, "p1": 0.001, "p2": 0.0, "frames": frames,
            "train_filenames": [f"images/frame_{k + 1:05d}.png" for k in (0, 1, 3)],
            "test_filenames": ["images/frame_00003.png"]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "4 of 4 cameras have lens distortion")  # tests/test_distortion.py
        scene = load_scene(tmp_path)
    check_geometry(scene, Ks, c2ws)
    check_dots(scene, Ks, c2ws)
    np.testing.assert_allclose(scene.cameras.distortion[0], [0.02, -0.01, 0.001, 0.0, 0.0])
    assert scene.splits == {"train": [0, 1, 3], "test": [2]}
    assert scene.train_test_ids() == ([0, 1, 3], [2])
    assert scene.masks[2][:, : W // 2].min() == 1.0 and scene.masks[2][:, W // 2:].max() == 0.0
    half = load_scene(tmp_path, downscale=2)
    check_geometry(half, Ks, c2ws, d=2)
    check_dots(half, Ks, c2ws, d=2)
    assert half.masks[0].shape == (H // 2, W // 2)


def test_blender_rgba_white_background_and_splits(tmp_path):
    c2ws = gt_poses()
    angle = 0.9
    fx = 0.5 * W / math.tan(0.5 * angle)
    K = K_of(fx, fx, W / 2, H / 2)
    layout = {"train": [0, 1], "val": [2], "test": [3]}
    for split, ks in layout.items():
        frames = []
        for n, k in enumerate(ks):
            rgba = np.zeros((H, W, 4), np.uint8)  # transparent black background
            i, j = DOTS[k]
            rgba[j, i] = (255, 0, 0, 255)  # opaque red dot
            rgba[0, 0] = (0, 0, 255, 128)  # half-transparent blue
            write_png(tmp_path / split / f"r_{n}.png", rgba)
            frames.append(_frame(f"./{split}/r_{n}", c2ws[k], rotation=0.0))
        meta = {"camera_angle_x": angle, "frames": frames}
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path)
    Ks = [K] * N_VIEWS
    check_geometry(scene, Ks, c2ws)
    assert scene.ids == [0, 1, 2, 3]
    assert scene.splits == {"train": [0, 1], "val": [2], "test": [3]}
    assert scene.train_test_ids() == ([0, 1], [3])
    # train/r_0 and test/r_0 share a stem: names keep them apart.
    assert scene.names == ["train_r_0", "train_r_1", "val_r_0", "test_r_0"]
    for k, img in enumerate(scene.images):
        i, j = DOTS[k]
        np.testing.assert_allclose(img[j, i], [1, 0, 0])
        np.testing.assert_allclose(img[H - 1, W - 1], [1, 1, 1])  # transparent -> white
        np.testing.assert_allclose(img[0, 0], [1 - 128 / 255, 1 - 128 / 255, 1.0], atol=1e-6)
        X = dot_point(K, c2ws[k], k)
        uv, _ = scene.cameras[k].project(scene.normalization.from_original(X[None]))
        np.testing.assert_allclose(uv[0, 0], [i + 0.5, j + 0.5], atol=1e-6)
    # Alpha doubles as the object mask when there are no mask files.
    assert scene.masks is not None
    np.testing.assert_allclose(scene.masks[0][0, 0], 128 / 255, atol=1e-6)
    assert scene.masks[0][DOTS[0][1], DOTS[0][0]] == 1.0 and scene.masks[0][H - 1, W - 1] == 0.0
    half = load_scene(tmp_path, downscale=2)
    check_geometry(half, Ks, c2ws, d=2)


def test_transforms_all_frames_missing(tmp_path):
    meta = {"fl_x": 30.0, "w": W, "h": H, "frames": [_frame("images/x.png", gt_poses()[0])]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 1 frames"):
        load_scene(tmp_path)


# -- DTU IDR / NeuS ---------------------------------------------------------------------------------
IDR_K = K_of(35.0, 34.0, 16.4, 11.8)  # ours (corner origin)
SPHERE_CENTER = np.array([0.4, -0.2, 0.3])
SPHERE_RADIUS = 0.8


def write_idr(root: Path, stored_factor: int = 1, camera_mat: bool = False, extras: bool = True):
    """IDR layout for W x H cameras; images stored ``stored_factor`` times smaller."""
    c2ws = gt_poses(center=SPHERE_CENTER)
    K_int = IDR_K.copy()
    K_int[:2, 2] -= 0.5  # world_mat puts pixel centres on integers
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= SPHERE_RADIUS
    scale_mat[:3, 3] = SPHERE_CENTER
    arrays = {}
    w, h = W // stored_factor, H // stored_factor
    Ks_stored = []
    for k, c2w in enumerate(c2ws):
        P = np.eye(4)
        P[:3, :4] = K_int @ np.linalg.inv(c2w)[:3, :4]
        # A projection is defined up to scale, sign included; IDR files carry arbitrary ones.
        P[:3] *= (-2.5 if k % 2 else 4.0)
        arrays[f"world_mat_{k}"] = P
        arrays[f"scale_mat_{k}"] = scale_mat
        if camera_mat:
            arrays[f"camera_mat_{k}"] = np.array([[2 / W, 0, -1, 0], [0, 2 / H, -1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        Ks_stored.append(np.diag([1 / stored_factor, 1 / stored_factor, 1.0]) @ IDR_K)
        if stored_factor == 1:
            write_png(root / "image" / f"{k:06d}.png", dot_image(k))
        else:
            write_png(root / "image" / f"{k:06d}.png", np.full((h, w, 3), 40 * k, np.uint8))
        if extras:
            mask = np.zeros((h, w), np.uint8)
            mask[h // 3:, :] = 255
            write_png(root / "mask" / f"{k:03d}.png", mask)
            depth = np.zeros((h, w), np.float32)
            i, j = DOTS[k]
            depth[j, i] = DOT_DEPTHS[k]
            (root / "depth").mkdir(exist_ok=True)
            np.save(root / "depth" / f"{k:06d}.npy", depth)
    np.savez(root / "cameras_sphere.npz", **arrays)
    return c2ws, Ks_stored


def test_dtu_idr(tmp_path):
    c2ws, Ks = write_idr(tmp_path)
    assert dtu_idr.detect(tmp_path)
    scene = load_scene(tmp_path)
    assert scene.source_format == "dtu_idr" and scene.ids == [0, 1, 2, 3]
    check_geometry(scene, Ks, c2ws)
    check_dots(scene, Ks, c2ws)
    # The scale_mat sphere is the unit sphere of the normalised frame.
    np.testing.assert_allclose(scene.normalization.from_original(SPHERE_CENTER[None]), [[0, 0, 0]], atol=1e-12)
    assert scene.normalization.scale == pytest.approx(1 / SPHERE_RADIUS)
    assert scene.masks is not None and scene.masks[0][H // 3:].min() == 1 and scene.masks[0][: H // 3].max() == 0
    for d in (1, 2):
        sc = scene if d == 1 else load_scene(tmp_path, downscale=2)
        for k in range(N_VIEWS):
            i, j = DOTS[k]
            X = sc.normalization.from_original(dot_point(Ks[k], c2ws[k], k)[None])
            _, z = sc.cameras[k].project(X)
            depth = sc.depths[k]
            assert depth.shape == (H // d, W // d)
            # Depth is stored in world units and comes back in the normalised frame; the valid-only
            # block average keeps the lone known depth instead of diluting it with zeros.
            assert depth[j // d, i // d] == pytest.approx(DOT_DEPTHS[k] / SPHERE_RADIUS, rel=1e-6)
            assert depth[j // d, i // d] == pytest.approx(z[0, 0], rel=1e-6)
            assert np.count_nonzero(depth) == 1
    half = load_scene(tmp_path, downscale=2)
    check_geometry(half, Ks, c2ws, d=2)
    check_dots(half, Ks, c2ws, d=2)


@pytest.mark.parametrize("camera_mat", [True, False], ids=["camera_mat", "principal_point"])
def test_dtu_idr_images_stored_downsampled(tmp_path, camera_mat):
    # The DTU release pairs 1600x1200 world_mats with 400x300 images; here 32x24 cameras, 8x6 images.
    c2ws, Ks = write_idr(tmp_path, stored_factor=4, camera_mat=camera_mat, extras=False)
    scene = load_scene(tmp_path)
    assert scene.image_size == (W // 4, H // 4)
    check_geometry(scene, Ks, c2ws)


def test_dtu_idr_count_mismatch(tmp_path):
    write_idr(tmp_path, extras=False)
    (tmp_path / "image" / "000003.png").unlink()
    with pytest.raises(DataError, match="4 cameras but image/ has 3 images.*more cameras than images"):
        load_scene(tmp_path)



def _crop_idr(root: Path, crop: tuple[int, int]) -> None:
    """The fixture's IDR cameras (32x24, no camera_mat) with images that are centre crops."""
    write_idr(root, extras=False)
    for path in sorted((root / "image").glob("*.png")):
        write_png(path, np.full((crop[1], crop[0], 3), 90, np.uint8))


def test_dtu_idr_refuses_to_guess_the_intrinsics_size_of_crops(tmp_path):
    # MonoSDF-like: square centre crops of a resized frame; no integer factor fits the principal point.
    _crop_idr(tmp_path, (12, 12))
    with pytest.raises(DataError) as info:
        load_scene(tmp_path)
    msg = str(info.value)
    assert "12x12" in msg and "--intrinsics-size WxH" in msg and "--center-crop" in msg and "\n" not in msg
    # Saying the size alone: a crop is not a resized copy, and that is an error too.
    with pytest.raises(DataError, match="aspect ratios differ"):
        load_scene(tmp_path, intrinsics_size="32x24")
    with pytest.raises(DataError, match="--center-crop needs --intrinsics-size"):
        load_scene(tmp_path, center_crop=True)


def test_dtu_idr_center_crop_moves_the_intrinsics(tmp_path):
    _crop_idr(tmp_path, (12, 12))
    scene = load_scene(tmp_path, intrinsics_size="32x24", center_crop=True)
    # The 32x24 frame resized by max(12/32, 12/24) = 0.5 to 16x12, then its middle 12x12: x - 2.
    want = IDR_K.copy()
    want[:2] *= 0.5
    want[0, 2] -= 2.0
    assert scene.image_size == (12, 12)
    np.testing.assert_allclose(scene.cameras.Ks[0], want, atol=1e-9)
    np.testing.assert_allclose(dtu_idr.crop_intrinsics(IDR_K, (32, 24), (32, 24)), IDR_K)  # no crop: unchanged


def test_intrinsics_options_are_for_idr_datasets_only(tmp_path):
    write_llff(tmp_path, focal_full=60.0)
    with pytest.raises(DataError, match="for IDR/NeuS cameras.npz datasets"):
        load_scene(tmp_path, intrinsics_size="32x24")
    with pytest.raises(DataError, match="WIDTHxHEIGHT"):
        load_scene(tmp_path, intrinsics_size="32by24")


def test_data_info_cli_says_what_to_do_with_crops(tmp_path, capsys):
    from splatkit.cli.main import main

    _crop_idr(tmp_path, (12, 12))
    assert main(["data", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--intrinsics-size" in err
    assert main(["data", "info", str(tmp_path), "--intrinsics-size", "32x24", "--center-crop"]) == 0
    assert "12x12" in capsys.readouterr().out

# -- DTU rectified ----------------------------------------------------------------------------------
FULL = 50  # the fixture's 32x24 images stand for 1600x1200 ones downsampled 50 times
RECT_K_FULL = K_of(1500.0, 1490.0, 810.3, 603.1)  # ours, at 1600x1200


def write_rectified(base: Path, scan: int = 8, views=(0, 1, 2), masks: bool = True,
                    spare_names: bool = False):
    c2ws = gt_poses()  # one calibration shared by every scan, as in DTU
    calib = base / "Calibration" / "cal18"
    calib.mkdir(parents=True, exist_ok=True)
    K_int = RECT_K_FULL.copy()
    K_int[:2, 2] -= 0.5
    for k in views:
        np.savetxt(calib / f"pos_{k + 1:03d}.txt", 7.0 * K_int @ np.linalg.inv(c2ws[k])[:3, :4])
        name = f"cam_{k + 1:03d}_3_0000.png" if spare_names else f"rect_{k + 1:03d}_3_r5000.png"
        write_png(base / "Rectified" / f"scan{scan}" / name, dot_image(k))
        # Another lighting of the same view, differently drawn: must not be picked.
        write_png(base / "Rectified" / f"scan{scan}" / f"rect_{k + 1:03d}_0_r5000.png",
                  np.full((H, W, 3), 200, np.uint8))
        if masks:
            mask = np.zeros((H, W), np.uint8)
            mask[:, k:] = 255
            write_png(base / "idrmasks" / f"scan{scan}" / "mask" / f"{k:03d}.png", mask)
    return c2ws, [RECT_K_FULL / FULL * np.array([[1], [1], [FULL]])] * len(c2ws)


@pytest.mark.parametrize("spare_names", [False, True], ids=["rect", "spare"])
def test_dtu_rectified(tmp_path, spare_names):
    c2ws, Ks = write_rectified(tmp_path, spare_names=spare_names)
    assert dtu_rectified.detect(tmp_path) and not dtu_idr.detect(tmp_path)
    scene = load_scene(tmp_path)
    assert scene.source_format == "dtu_rectified" and scene.ids == [0, 1, 2]
    check_geometry(scene, Ks[:3], c2ws[:3])
    check_dots(scene, Ks, c2ws)
    for k in range(3):
        assert scene.masks[k][:, k:].min() == 1 and scene.masks[k][:, :k].sum() == 0
    half = load_scene(tmp_path, downscale=2)
    check_geometry(half, Ks[:3], c2ws[:3], d=2)
    check_dots(half, Ks, c2ws, d=2)


def test_dtu_rectified_several_scans(tmp_path):
    c2ws, Ks = write_rectified(tmp_path, scan=8, masks=False)
    write_rectified(tmp_path, scan=21, views=(0, 1, 2, 3), masks=False)
    with pytest.raises(DataError, match="2 scans.*scan8, scan21.*one scan"):
        load_scene(tmp_path)
    assert len(dtu_rectified.read(tmp_path, scan=21)) == 4
    # Pointing at one scan folder finds Calibration/ two levels up.
    scene = load_scene(tmp_path / "Rectified" / "scan8")
    assert scene.source_format == "dtu_rectified" and scene.ids == [0, 1, 2]
    check_geometry(scene, Ks[:3], c2ws[:3])
    with pytest.raises(DataError, match="no images with lighting 5"):
        dtu_rectified.read(tmp_path, scan=8, light=5)


# -- LLFF -------------------------------------------------------------------------------------------
def write_llff(root: Path, focal_full: float, full_size=(2 * W, 2 * H), size=(W, H), dots=True):
    """poses_bounds.npy whose hwf describes ``full_size``; images stored at ``size``."""
    c2ws = gt_poses()
    rows = []
    for c2w in c2ws:
        R = c2w[:3, :3]
        R_llff = np.stack([R[:, 1], R[:, 0], -R[:, 2]], axis=1)  # [down, right, backwards]
        hwf = [full_size[1], full_size[0], focal_full]
        m = np.concatenate([R_llff, c2w[:3, 3:4], np.array(hwf)[:, None]], axis=1)
        rows.append(np.concatenate([m.ravel(), [1.0, 10.0]]))
    np.save(root / "poses_bounds.npy", np.array(rows))
    for k in range(len(c2ws)):
        img = dot_image(k, *size) if dots else np.zeros((size[1], size[0], 3), np.uint8)
        write_png(root / "images" / f"IMG_{k:04d}.JPG.png", img)
    s = size[0] / full_size[0]
    K = K_of(focal_full * s, focal_full * s, size[0] / 2, size[1] / 2)
    return c2ws, [K] * len(c2ws)


def test_llff_rotation_convention():
    # An OpenCV camera with identity rotation looks down +z with x right and y down; in LLFF's
    # [down, right, backwards] columns that is [(0,1,0), (1,0,0), (0,0,-1)].
    R_llff = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    np.testing.assert_array_equal(llff_to_opencv_rotation(R_llff), np.eye(3))


def test_llff_with_only_prebuilt_images(tmp_path):
    """A download with images_2/ and no images/ (fern in ../shared/data has only images_8/): an
    error that names the --downscale that works; with it, or a multiple, the prebuilt folder is read."""
    from splatkit.errors import DataError

    c2ws, Ks = write_llff(tmp_path, focal_full=60.0)  # hwf: 64x48; stored 32x24, i.e. images_2
    (tmp_path / "images").rename(tmp_path / "images_2")
    with pytest.raises(DataError, match=r"images/ holds no images, only the prebuilt images_2/: pass --downscale 2"):
        load_scene(tmp_path)
    with pytest.raises(DataError, match="pass --downscale 2"):
        load_scene(tmp_path, downscale=3)
    scene = load_scene(tmp_path, downscale=2)
    assert scene.images[0].shape[:2] == (H, W)
    np.testing.assert_allclose(scene.cameras.Ks[0], Ks[0], atol=1e-12)
    scene = load_scene(tmp_path, downscale=4)  # images_2 block-averaged by 2 more
    assert scene.images[0].shape[:2] == (H // 2, W // 2)
    np.testing.assert_allclose(scene.cameras.Ks[0][0, 0], Ks[0][0, 0] / 2, atol=1e-12)


def test_llff(tmp_path):
    c2ws, Ks = write_llff(tmp_path, focal_full=60.0)
    for k in range(N_VIEWS):
        depth = np.zeros((H, W), np.float32)
        i, j = DOTS[k]
        depth[j, i] = DOT_DEPTHS[k]
        (tmp_path / "depth").mkdir(exist_ok=True)
        np.save(tmp_path / "depth" / f"IMG_{k:04d}.JPG.npy", depth)
    assert llff.detect(tmp_path)
    scene = load_scene(tmp_path)
    assert scene.source_format == "llff" and scene.ids == [0, 1, 2, 3]
    # hwf described 64x48; the focal is scaled to the 32x24 images.
    np.testing.assert_allclose(scene.cameras.Ks[0], Ks[0], atol=1e-12)
    check_geometry(scene, Ks, c2ws)
    check_dots(scene, Ks, c2ws)
    for k in range(N_VIEWS):
        i, j = DOTS[k]
        assert scene.depths[k][j, i] == pytest.approx(DOT_DEPTHS[k] * scene.normalization.scale, rel=1e-6)
    half = load_scene(tmp_path, downscale=2)
    check_geometry(half, Ks, c2ws, d=2)
    check_dots(half, Ks, c2ws, d=2)


def test_downscale_crops_sizes_that_do_not_divide(tmp_path):
    c2ws, Ks = write_llff(tmp_path, focal_full=31.0, full_size=(W + 1, H + 1), size=(W + 1, H + 1), dots=False)
    scene = load_scene(tmp_path, downscale=2)
    # 33x25 block-averaged by 2 keeps 16x12 whole blocks; the right/bottom crop leaves K / 2.
    assert scene.image_size == (16, 12) and scene.images[0].shape == (12, 16, 3)
    assert list(scene.cameras.widths) == [16] * N_VIEWS and list(scene.cameras.heights) == [12] * N_VIEWS
    check_geometry(scene, Ks, c2ws, d=2)


# -- shared extras ----------------------------------------------------------------------------------
def test_partial_masks_warn_and_default_to_ones(tmp_path):
    write_llff(tmp_path, focal_full=60.0)
    write_png(tmp_path / "mask" / "IMG_0001.JPG.png", np.zeros((H, W), np.uint8))
    with pytest.warns(UserWarning, match=r"mask missing for 3 of 4 views"):
        scene = load_scene(tmp_path)
    assert scene.masks[1].max() == 0.0
    assert all(scene.masks[k].min() == 1.0 for k in (0, 2, 3))


def test_mask_of_wrong_size_is_an_error(tmp_path):
    write_llff(tmp_path, focal_full=60.0)
    for k in range(N_VIEWS):
        write_png(tmp_path / "mask" / f"IMG_{k:04d}.JPG.png", np.zeros((H + 3, W), np.uint8))
    with pytest.raises(DataError, match=r"mask is 32x27 but its image is 32x24"):
        load_scene(tmp_path)


def test_detect_is_specific(tmp_path):
    for mod in (colmap, transforms, dtu_idr, dtu_rectified, llff):
        assert not mod.detect(tmp_path)
