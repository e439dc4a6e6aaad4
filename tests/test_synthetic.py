"""The synthetic DTU-like scene generator: geometry, camera files, layout, determinism, CLI.

Geometry is checked against the analytic SDF without the sphere tracer (dense samples along the
pixel rays), cameras against the ``world_mat`` matrices read back from the npz, and the folder
against the ``dtu_idr`` reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from splatkit.data.cameras import Cameras
from splatkit.data.synthetic import (
    N_COMPOSITIONS, SyntheticScene, _build_world, dtu_like_cameras, render_synthetic_scene,
    write_synthetic_scene,
)
from splatkit.errors import DataError

W, H, N = 64, 48, 6
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return render_synthetic_scene(seed=3, width=W, height=H, n_views=N)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_synthetic_scene(tmp_path_factory.mktemp("synth") / "scene", seed=1, width=W, height=H, n_views=N)


@pytest.fixture(scope="module")
def mem() -> SyntheticScene:
    """The in-memory twin of ``folder``."""
    return render_synthetic_scene(seed=1, width=W, height=H, n_views=N)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _unproject(cams: Cameras, i: int, depth: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """World points at z-depth ``depth[pixels]`` on the centre rays of ``pixels`` ([P, 2] row, col)."""
    o, d = cams.pixel_rays(i)
    r, c = pixels[:, 0], pixels[:, 1]
    z_axis = cams.camtoworlds[i, :3, 2]
    t = depth[r, c].astype(np.float64) / (d[r, c] @ z_axis)
    return o[r, c] + t[:, None] * d[r, c]


def _sdf_normals(scene: SyntheticScene, X: np.ndarray) -> np.ndarray:
    h = 1e-6 * scene.radius
    g = np.stack([scene.sdf(X + h * e) - scene.sdf(X - h * e) for e in np.eye(3)], axis=1)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def _idr_projection(world_mat: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates in IDR's convention (pixel centres on integers)."""
    x = points @ world_mat[:3, :3].T + world_mat[:3, 3]
    return x[:, :2] / x[:, 2:3]


# -- the folder -----------------------------------------------------------------------------------
def test_folder_has_the_dtu_idr_layout(folder):
    names = set(_files(folder))
    expected = {"cameras_sphere.npz", "meta.json"}
    expected |= {f"image/{i:06d}.png" for i in range(N)} | {f"mask/{i:03d}.png" for i in range(N)}
    expected |= {f"depth/{i:06d}.npy" for i in range(N)} | {"depth/kind.txt"}  # declares metric z-depth
    assert names == expected
    assert (folder / "depth" / "kind.txt").read_text().strip() == "metric"
    with np.load(folder / "cameras_sphere.npz") as z:
        keys = set(z.files)
        assert keys == {f"{k}_{i}" for k in ("world_mat", "scale_mat", "camera_mat") for i in range(N)}
        for i in range(N):
            assert z[f"world_mat_{i}"].shape == (4, 4)
            np.testing.assert_array_equal(z[f"world_mat_{i}"][3], [0, 0, 0, 1])
            # IDR's camera_mat maps pixels to [-1, 1]: it records the image size.
            cm = z[f"camera_mat_{i}"]
            assert (round(2 / cm[0, 0]), round(2 / cm[1, 1]), cm[0, 2], cm[1, 2]) == (W, H, -1.0, -1.0)
    img = iio.imread(folder / "image" / "000000.png")
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    mask = iio.imread(folder / "mask" / "000.png")
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}
    depth = np.load(folder / "depth" / "000000.npy")
    assert depth.shape == (H, W) and depth.dtype == np.float32
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["seed"] == 1 and (meta["width"], meta["height"], meta["n_views"]) == (W, H, N)
    assert meta["format_version"] >= 1 and isinstance(meta["object"], str)
    assert np.isclose(np.linalg.norm(meta["light_direction"]), 1.0)


def test_files_match_the_in_memory_scene(folder, mem):
    for i in range(N):
        np.testing.assert_array_equal(iio.imread(folder / "image" / f"{i:06d}.png"), mem.images[i])
        np.testing.assert_array_equal(iio.imread(folder / "mask" / f"{i:03d}.png") > 0, mem.masks[i])
        np.testing.assert_array_equal(np.load(folder / "depth" / f"{i:06d}.npy"), mem.depths[i])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, folder, mem):
    again = write_synthetic_scene(tmp_path / "again", seed=1, width=W, height=H, n_views=N)
    assert _files(again) == _files(folder)
    other = render_synthetic_scene(seed=2, width=W, height=H, n_views=N)
    assert other.object_name != mem.object_name
    for i in range(N):
        assert not np.array_equal(other.images[i], mem.images[i])
    # Seeds that pick the same composition still differ (shape parameters, texture, palette).
    a = render_synthetic_scene(seed=1, width=16, height=12, n_views=1)
    b = render_synthetic_scene(seed=1 + N_COMPOSITIONS, width=16, height=12, n_views=1)
    assert a.object_name == b.object_name and not np.array_equal(a.images, b.images)


def test_refuses_non_empty_folder_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as err:
        write_synthetic_scene(out, seed=0, width=16, height=12, n_views=2)
    assert str(out) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # An existing empty folder is fine (it is replaced by the finished scene).
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_synthetic_scene(empty, seed=0, width=16, height=12, n_views=2) / "meta.json").is_file()


def test_a_crash_while_writing_leaves_no_scene(tmp_path, monkeypatch):
    from splatkit.data import synthetic

    def crash(scene, folder):
        (folder / "image").mkdir()
        (folder / "cameras_sphere.npz").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "write_scene_files", crash)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_scene(tmp_path / "scene", seed=0, width=16, height=12, n_views=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, problem", [
    (dict(seed=-1), "seed"), (dict(width=4), "size"), (dict(n_views=0), "view"),
])
def test_bad_arguments_are_data_errors(tmp_path, kwargs, problem):
    args = dict(seed=0, width=16, height=12, n_views=2) | kwargs
    with pytest.raises(DataError, match=problem):
        write_synthetic_scene(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


# -- cameras ---------------------------------------------------------------------------------------
def test_world_mat_is_the_camera_in_idr_pixel_convention(folder, mem):
    pts = mem.center + mem.radius * np.random.default_rng(0).uniform(-1, 1, (50, 3))
    uv_ours, _ = mem.cameras.project(pts)
    with np.load(folder / "cameras_sphere.npz") as z:
        for i in range(N):
            # IDR pixel centres sit on integers: ours are +0.5.
            np.testing.assert_allclose(_idr_projection(z[f"world_mat_{i}"], pts) + 0.5, uv_ours[i], atol=1e-8)
            S = z[f"scale_mat_{i}"]
            np.testing.assert_allclose(S[:3, :3], mem.radius * np.eye(3))
            np.testing.assert_allclose(S[:3, 3], mem.center)


def test_dtu_like_rig():
    cams = dtu_like_cameras(49, 200, 150)
    centre = np.zeros(3)  # canonical frame: the object's bounding sphere is the unit sphere
    dist = np.linalg.norm(cams.centers - centre, axis=1)
    assert np.all((dist > 3.0) & (dist < 4.0))  # DTU: ~3-4 object radii away
    # Every camera looks at the object: its centre projects into the middle half of the image.
    uv, z = cams.project(centre[None])
    assert np.all(z > 0)
    assert np.all(np.abs(uv[:, 0, 0] - 200 / 2) < 200 / 4) and np.all(np.abs(uv[:, 0, 1] - 150 / 2) < 150 / 4)
    # Rows of cameras: elevations take one value per row, rows get longer going down.
    elev = np.round(np.degrees(np.arcsin(cams.centers[:, 2] / dist)), 0)
    rows = [int(np.sum(np.abs(elev - e) < 2)) for e in sorted(set(elev), reverse=True)]
    assert sum(rows) == 49 and rows == sorted(rows) and len(rows) > 3
    # DTU's sparse-view ids 22, 25, 28 share a row, 25 in the middle, well spread (3 steps apart).
    dirs = cams.centers / dist[:, None]
    ang = lambda a, b: np.degrees(np.arccos(np.clip(dirs[a] @ dirs[b], -1, 1)))  # noqa: E731
    assert ang(22, 25) == pytest.approx(ang(25, 28), rel=0.1)
    assert ang(22, 25) > 2.5 * ang(24, 25)
    assert ang(22, 28) > ang(22, 25)


# -- geometry ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(N_COMPOSITIONS))
def test_every_composition_fits_its_bounds(seed):
    world = _build_world(seed)
    p = np.random.default_rng(seed).uniform(-1.05, 1.05, (150_000, 3))
    inside = world.sdf(*p.T) < 0
    assert inside.sum() > 1000
    q = p[inside]
    assert np.linalg.norm(q, axis=1).max() < 1.0  # inside scale_mat's sphere
    assert np.hypot(q[:, 0], q[:, 1]).max() < world.bound_radius and q[:, 2].max() < world.bound_top
    assert q[:, 2].min() >= world.ground_z  # sits on the table
    assert world.sdf(np.zeros(1), np.zeros(1), np.zeros(1))[0] < 0  # contains the object centre


def test_seeds_cycle_through_distinct_objects():
    names = [_build_world(s).name for s in range(2 * N_COMPOSITIONS)]
    assert len(set(names)) == N_COMPOSITIONS >= 4 and names[:N_COMPOSITIONS] == names[N_COMPOSITIONS:]


def test_masks_hold_the_object_centre(scene):
    uv, z = scene.cameras.project(scene.center[None])
    for i in range(N):
        m = scene.masks[i]
        assert 0 < m.sum() < m.size
        col, row = np.floor(uv[i, 0]).astype(int)
        assert z[i, 0] > 0 and 0 <= col < W and 0 <= row < H and m[row, col]


def test_depth_lies_on_the_object_and_the_table(scene):
    for i in range(N):
        depth = scene.depths[i]
        tol = 4 * EPS32 * float(depth.max())  # float32 rounding of the stored depth
        obj = np.argwhere(scene.masks[i])
        assert np.all(depth[scene.masks[i]] > 0)
        X = _unproject(scene.cameras, i, depth, obj)
        assert np.abs(scene.sdf(X)).max() < tol
        assert np.linalg.norm(X - scene.center, axis=1).max() < scene.radius
        table = np.argwhere((depth > 0) & ~scene.masks[i])
        assert len(table) > 0
        Y = _unproject(scene.cameras, i, depth, table)
        assert np.abs(Y[:, 2] - scene.ground_height).max() < tol
        assert scene.sdf(Y).min() > -tol  # not inside the object
        # Pixels with no depth see neither the object nor the table.
        none = depth == 0
        o, d = scene.cameras.pixel_rays(i)
        t_obj, t_table = scene.raycast(o[none], d[none])
        assert np.all(np.isinf(t_obj)) and np.all(np.isinf(t_table))


def test_mask_is_exactly_where_the_centre_ray_enters_the_object():
    """Dense samples along every pixel-centre ray, independent of the tracer: a mask pixel's ray
    must reach SDF <= half the sample spacing (1-Lipschitz); any other ray must stay above
    -1e-4 radii (the deepest sliver the tracer's minimum step may skip)."""
    s = render_synthetic_scene(seed=4, width=32, height=24, n_views=2)
    n_samples = 1500
    for i in range(len(s)):
        o, d = s.cameras.pixel_rays(i)
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        b = np.einsum("ij,ij->i", o - s.center, d)
        c = np.einsum("ij,ij->i", o - s.center, o - s.center) - s.radius ** 2
        disc = np.sqrt(np.maximum(b * b - c, 0))
        t = np.linspace(-b - disc, -b + disc, n_samples, axis=1)  # inside the bounding sphere
        f = s.sdf(o[:, None] + t[..., None] * d[:, None]).min(axis=1)
        spacing = (2 * disc / (n_samples - 1))
        m = s.masks[i].reshape(-1)
        assert np.all(f[m] <= spacing[m] / 2)
        assert np.all(f[~m] > -1e-4 * s.radius)
        # Both kinds of pixels are decided well away from those margins for most rays.
        assert np.mean(f[m] < -spacing[m]) > 0.9 and np.mean(f[~m] > spacing[~m]) > 0.9


def test_depth_reprojects_consistently_between_views(scene, tmp_path):
    """Points unprojected from view i's depth map, projected into view j with the *written*
    world_mat_j: the ray through that spot of view j meets the same point, or something in front
    of it. (Every depth map lies on the surface, see above, so this ties all depth maps together;
    half a pixel of convention error would move the ray by ~0.03 object radii and fail.)"""
    path = tmp_path / "cams.npz"
    np.savez(path, **scene.idr_matrices())
    with np.load(path) as z:
        world_mats = [z[f"world_mat_{j}"] for j in range(N)]
    for i, j in [(0, 1), (2, 3), (4, 1)]:
        X = _unproject(scene.cameras, i, scene.depths[i], np.argwhere(scene.masks[i]))
        uv = _idr_projection(world_mats[j], X) + 0.5  # our pixel coordinates
        inside = (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H)
        X, uv = X[inside], uv[inside]
        K_inv = np.linalg.inv(scene.cameras.Ks[j])
        d_cam = np.c_[uv, np.ones(len(uv))] @ K_inv.T
        R, o = scene.cameras.camtoworlds[j, :3, :3], scene.cameras.centers[j]
        d = d_cam @ R.T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        t_obj, _ = scene.raycast(np.broadcast_to(o, d.shape), d)
        t_x = np.linalg.norm(X - o, axis=1)
        # X is off the surface by its float32 depth rounding (tol); along ray j that offset grows
        # as 1 / |cos| of the angle to the surface normal, and a grazing ray may just miss.
        tol = 4 * EPS32 * float(scene.depths[i].max())
        cos = np.abs(np.einsum("ij,ij->i", d, _sdf_normals(scene, X)))
        offset = np.abs(t_obj - t_x) * cos
        visible = offset < tol
        occluded = t_obj < t_x - tol / np.maximum(cos, 1e-3)
        grazing = np.isinf(t_obj) & (cos < 0.05)
        assert np.all(visible | occluded | grazing)
        assert visible.mean() > 0.3


# -- the reader ------------------------------------------------------------------------------------
def test_dtu_idr_reader_loads_the_folder(folder, mem):
    pytest.importorskip("splatkit.data.readers.dtu_idr")
    from splatkit.data import load_scene

    loaded = load_scene(folder)
    assert loaded.source_format == "dtu_idr"
    assert len(loaded) == N and loaded.image_size == (W, H) and loaded.ids == list(range(N))
    assert loaded.masks is not None and loaded.depths is not None
    ref = mem.to_scene()
    # The reader normalises by scale_mat: the object's sphere becomes the unit sphere.
    assert loaded.normalization.scale == pytest.approx(1 / mem.radius)
    np.testing.assert_allclose(loaded.normalization.center, mem.center, atol=1e-12)
    np.testing.assert_allclose(loaded.cameras.Ks, ref.cameras.Ks, atol=1e-6)
    np.testing.assert_allclose(loaded.cameras.camtoworlds, ref.cameras.camtoworlds, atol=1e-6)
    for i in range(N):
        np.testing.assert_array_equal(loaded.masks[i] > 0.5, mem.masks[i])
        np.testing.assert_allclose(loaded.depths[i], mem.depths[i] * loaded.normalization.scale, rtol=1e-6)
        np.testing.assert_allclose(loaded.depths[i], ref.depths[i], rtol=1e-6)
        np.testing.assert_allclose(loaded.images[i], ref.images[i], atol=1e-6)


# -- the CLI -------------------------------------------------------------------------------------------
def test_cli_writes_a_scene_and_refuses_to_overwrite(tmp_path, capsys):
    from splatkit.cli.main import main

    out = tmp_path / "cli_scene"
    args = ["data", "synthetic", "--out", str(out), "--width", "64", "--height", "48", "--views", "6"]
    assert main(args) == 0
    assert len(list((out / "image").iterdir())) == 6
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
