"""Depth files are relative unless their folder (or the user) says they are metric: only metric
depth bounds the initial points; relative depth only orders pixels (issue #18, part 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.data import load_scene
from splatkit.data.depth_io import DEPTH_KIND_FILE, resolve_depth_kind
from splatkit.errors import DataError
from splatkit.methods.gaussian_splatting import GaussianSplatting
from splatkit.priors.depth_sources import load_prior_files
from splatkit.train import TrainConfig

SCAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dtu_scan65"


def _init(scene, **cfg):
    """``(description, points)`` of the 3DGS method's initial Gaussians for ``scene``."""
    config = TrainConfig(init="random", init_num_points=500, seed=1, **cfg).resolved()
    method = GaussianSplatting(config, torch.device("cpu"))
    how = method.initialize(scene, scene_scale=1.0)
    return how, method.model.splats["means"].detach().numpy()


def test_resolution_order():
    assert resolve_depth_kind("inverse", "metric") == ("inverse", None)  # the user's word first
    assert resolve_depth_kind(None, "metric") == ("metric", None)  # then the folder's kind.txt
    kind, note = resolve_depth_kind(None, None)
    assert kind == "depth" and "relative" in note and "--depth-prior-kind metric" in note


def test_declared_metric_depth_bounds_the_initial_points(scene_dir):
    scene = load_scene(scene_dir)
    assert scene.depth_kind == "metric"  # the synthetic writer declares its ray-traced depth
    how, _ = _init(scene)
    assert "depth-map bounds" in how


def test_undeclared_depth_is_relative_and_bounds_nothing(scene_dir, tmp_path):
    copy = tmp_path / "scene"
    shutil.copytree(scene_dir, copy)
    (copy / "depth" / DEPTH_KIND_FILE).unlink()
    scene = load_scene(copy)
    assert scene.depths is not None and scene.depth_kind is None
    with pytest.warns(UserWarning, match="taken as relative depth"):
        how, pts = _init(scene)
    assert "depth-map bounds" not in how
    scene.depths = None
    how_without, pts_without = _init(scene)
    assert how == how_without and np.array_equal(pts, pts_without)
    # Saying they are metric brings the depth bounds back.
    assert "depth-map bounds" in _init(load_scene(copy), depth_prior_kind="metric")[0]


def test_a_bad_kind_file_is_a_clear_error(scene_dir, tmp_path):
    copy = tmp_path / "scene"
    shutil.copytree(scene_dir, copy)
    (copy / "depth" / DEPTH_KIND_FILE).write_text("meters\n")
    with pytest.raises(DataError, match="depth kind must be one of metric, depth, inverse"):
        load_scene(copy)


def test_prior_files_take_their_folders_kind(scene_dir, tmp_path):
    scene = load_scene(scene_dir)
    folder = tmp_path / "prior"
    folder.mkdir()
    for name, d in zip(scene.names, scene.depths):
        inv = np.where(d > 0, 1.0 / np.maximum(d, 1e-6), 0.0).astype(np.float32)
        np.save(folder / f"{name}.npy", inv)
    (folder / DEPTH_KIND_FILE).write_text("inverse\n")
    maps = load_prior_files(scene, folder, kind=None)
    known = scene.depths[0] > 0
    a, b = maps[0][known], scene.depths[0][known]
    # Read as inverse depth, the prior orders pixels as the true depth does.
    assert np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1] > 0.99


@pytest.mark.realdata
@pytest.mark.skipif(not (SCAN / "cameras_sphere.npz").is_file(),
                    reason=f"real DTU scan not available at {SCAN} (it lives in ../shared/data beside the repo)")
def test_relative_depth_files_do_not_move_the_initial_bounds_of_a_real_scan(tmp_path):
    """The same real scan with monocular-like depth files (true scale and shift unknown: random
    ones here) starts from exactly the points it starts from without any depth files."""
    copy = tmp_path / "scan65"
    copy.mkdir()
    shutil.copy(SCAN / "cameras_sphere.npz", copy)
    shutil.copytree(SCAN / "image", copy / "image")
    shutil.copytree(SCAN / "mask", copy / "mask")
    without = load_scene(copy)
    rng = np.random.default_rng(0)
    (copy / "depth").mkdir()
    for path in sorted((copy / "image").glob("*.png")):
        h, w = without.images[0].shape[:2]
        yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        rel = (1.0 + yy + 0.1 * rng.random((h, w), dtype=np.float32)) * rng.uniform(0.1, 50) + rng.uniform(0, 5)
        np.save(copy / "depth" / f"{path.stem}.npy", rel.astype(np.float32))
    with_depth = load_scene(copy)
    assert with_depth.depths is not None
    with pytest.warns(UserWarning, match="relative depth"):
        how, pts = _init(with_depth)
    how0, pts0 = _init(without)
    assert how == how0 and np.array_equal(pts, pts0)


# -- relative depth made metric: a per-view fit to triangulated points --------------------------
@pytest.mark.parametrize("kind", ["depth", "inverse"])
def test_fit_recovers_scale_and_shift_despite_outliers(kind):
    from splatkit.data.depth_align import apply_fit, fit_depth_to_points

    rng = np.random.default_rng(1)
    H, W = 30, 40
    z_map = (2.0 + rng.random((H, W))).astype(np.float32)
    scale, shift = 0.37, 0.8
    rel = scale * (z_map if kind == "depth" else 1.0 / z_map) + shift
    rel[0, :5] = 0.0  # unknown pixels
    xs, ys = rng.uniform(0, W, 200), rng.uniform(0, H, 200)
    z = z_map[ys.astype(int), xs.astype(int)].astype(np.float64)
    z[:20] *= rng.uniform(1.5, 3.0, 20)  # wrong matches
    fit = fit_depth_to_points(rel, kind, np.stack([xs, ys], 1), z)
    assert fit.scale == pytest.approx(1 / scale, rel=1e-6) and fit.shift == pytest.approx(-shift / scale, rel=1e-6)
    assert fit.inliers <= 180 and fit.median_rel_error < 1e-6
    metric = apply_fit(rel, fit)
    assert (metric[0, :5] == 0).all()
    np.testing.assert_allclose(metric[1:], z_map[1:], rtol=1e-4)
    assert fit_depth_to_points(rel, kind, np.stack([xs, ys], 1)[:5], z[:5]) is None  # too few points


def test_relative_depth_aligned_to_triangulated_points_bounds_like_metric(tmp_path):
    """Depth files turned into random-scale-and-shift disparity, aligned per view to points that
    pycolmap triangulates with the known cameras, bound the initial points as the true metric
    depth does; the run reports the fit's residual."""
    import json

    from splatkit.data.synthetic import render_synthetic_scene
    from splatkit.train import Trainer

    syn = render_synthetic_scene(seed=0, width=160, height=120, n_views=49)
    views = [22, 23, 24, 25, 26, 27, 28]
    metric = syn.to_scene().subset(views + [30])
    metric.depth_kind = "metric"
    relative = syn.to_scene().subset(views + [30])
    rng = np.random.default_rng(0)
    for i, d in enumerate(relative.depths):
        a, b = rng.uniform(0.5, 3.0), rng.uniform(0.1, 1.0)
        relative.depths[i] = np.where(d > 0, a / np.where(d > 0, d, 1.0) + b, 0.0).astype(np.float32)
    relative.depth_kind = "inverse"

    def first_points(scene, out, **kw):
        cfg = TrainConfig(out=out, steps=1, init="random", init_num_points=2000, sh_degree=0, densify=False,
                          train_views=list(range(7)), test_views=[7], preview_every=0, checkpoint_every=0,
                          backend="torch", seed=3, **kw)
        trainer = Trainer(cfg, scene=scene, quiet=True)
        trainer._setup()
        return trainer._init_desc, trainer.method.model.splats["means"].detach().numpy()

    # give the views ids 0..7 so train/test ids are positions
    for s in (metric, relative):
        s.ids = list(range(len(s)))
    how_m, pts_m = first_points(metric, tmp_path / "metric")
    how_r, pts_r = first_points(relative, tmp_path / "aligned", depth_align="sfm")
    assert "depth-map bounds" in how_m and "depth-map bounds" in how_r
    lo_m, hi_m = np.percentile(pts_m, [1, 99], axis=0)
    lo_r, hi_r = np.percentile(pts_r, [1, 99], axis=0)
    extent = (hi_m - lo_m).max()
    assert np.abs(lo_r - lo_m).max() < 0.05 * extent and np.abs(hi_r - hi_m).max() < 0.05 * extent
    report = json.loads((tmp_path / "aligned" / "depth_alignment.json").read_text())
    assert report["kind"] == "inverse" and report["aligned_views"] == 7 and report["median_rel_error"] < 0.02
    assert relative.depth_kind == "inverse"  # the caller's scene is left as it was
