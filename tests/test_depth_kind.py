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
