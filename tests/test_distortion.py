"""Lens distortion is read but not applied: loading such a scene warns once, in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from splatkit.data import load_scene
from splatkit.errors import DataError

W, H = 16, 12
NAMES = ("a.png", "b.png", "c.png")


def _write_images(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(folder / name)


def write_colmap_text(root: Path, models: list[tuple[str, list[float]]]) -> None:
    """A COLMAP text model, one camera per image (``models[k]`` = (MODEL, PARAMS) of image k)."""
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    cams = [f"{k + 1} {m} {W} {H} {' '.join(map(str, p))}" for k, (m, p) in enumerate(models)]
    (model / "cameras.txt").write_text("\n".join(cams) + "\n")
    # Identity rotations, cameras side by side looking down +z: image k uses camera k + 1.
    imgs = [f"{k + 1} 1 0 0 0 {-0.5 * k} 0 3 {k + 1} {name}\n\n" for k, name in enumerate(NAMES)]
    (model / "images.txt").write_text("".join(imgs))
    (model / "points3D.txt").write_text("")
    _write_images(root / "images")


def write_transforms(root: Path, file_keys: dict, frame_keys: list[dict] | None = None) -> None:
    frames = []
    for k, name in enumerate(NAMES):
        c2w_gl = np.eye(4)
        c2w_gl[:3, 3] = [0.5 * k, 0.0, 3.0]
        frames.append({"file_path": f"images/{name}", "transform_matrix": c2w_gl.tolist(),
                       **(frame_keys[k] if frame_keys else {})})
    meta = {"fl_x": 20.0, "fl_y": 20.0, "cx": W / 2, "cy": H / 2, "w": W, "h": H, **file_keys, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    _write_images(root / "images")


def distortion_warnings(root: Path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_scene(root)
    return [str(w.message) for w in caught if "lens distortion" in str(w.message)]


PINHOLE = ("PINHOLE", [20.0, 20.0, 8.0, 6.0])


@pytest.mark.parametrize("model, params, shown", [
    ("OPENCV", [20.0, 20.0, 8.0, 6.0, -0.05, 0.01, 0.001, 0.0], "k1=-0.05, k2=0.01, p1=0.001)"),
    ("SIMPLE_RADIAL", [20.0, 8.0, 6.0, 0.02], "k1=0.02)"),
    ("RADIAL", [20.0, 8.0, 6.0, 0.02, -0.003], "k1=0.02, k2=-0.003)"),
])
def test_colmap_distortion_warns_once(tmp_path, model, params, shown):
    write_colmap_text(tmp_path, [PINHOLE, (model, params), (model, params)])
    got = distortion_warnings(tmp_path)
    assert len(got) == 1 and "\n" not in got[0], got
    assert got[0].startswith("2 of 3 cameras have lens distortion (b.png: ")
    assert shown in got[0] and "undistort the images first (e.g. colmap image_undistorter)" in got[0]


def test_colmap_without_distortion_is_silent(tmp_path):
    zero = ("OPENCV", [20.0, 20.0, 8.0, 6.0, 0.0, 0.0, 0.0, 0.0])
    write_colmap_text(tmp_path, [PINHOLE, zero, ("SIMPLE_RADIAL", [20.0, 8.0, 6.0, 0.0])])
    assert distortion_warnings(tmp_path) == []
    assert load_scene(tmp_path).cameras.distortion is None


def test_colmap_models_with_more_distortion_are_an_error(tmp_path):
    full = ("FULL_OPENCV", [20.0, 20.0, 8.0, 6.0] + [0.01] * 8)
    write_colmap_text(tmp_path, [PINHOLE, full, PINHOLE])
    with pytest.raises(DataError, match="FULL_OPENCV.*undistort first"):
        load_scene(tmp_path)


def test_transforms_distortion_warns_once(tmp_path):
    write_transforms(tmp_path, {"k1": 0.0, "k2": 0.0}, [{}, {"k2": -0.02, "p2": 0.004}, {}])
    got = distortion_warnings(tmp_path)
    assert got == ["1 of 3 cameras have lens distortion (b.png: k2=-0.02, p2=0.004) that splatkit does not "
                   "apply; undistort the images first (e.g. colmap image_undistorter)"]


def test_transforms_nerfstudio_k3_warns(tmp_path):
    write_transforms(tmp_path, {"camera_model": "OPENCV", "k3": 0.001})
    got = distortion_warnings(tmp_path)
    assert len(got) == 1 and got[0].startswith("3 of 3 cameras have lens distortion (a.png: k3=0.001)")


def test_transforms_zero_distortion_is_silent(tmp_path):
    write_transforms(tmp_path, {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    assert distortion_warnings(tmp_path) == []


def test_cli_prints_the_warning_in_one_line(tmp_path, capsys):
    from splatkit.cli.main import main

    write_colmap_text(tmp_path / "scene", [PINHOLE, ("SIMPLE_RADIAL", [20.0, 8.0, 6.0, 0.02]), PINHOLE])
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["data", "info", str(tmp_path / "scene")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "lens distortion" in line]
    assert err == ["splatkit: warning: 1 of 3 cameras have lens distortion (b.png: k1=0.02) that splatkit does "
                   "not apply; undistort the images first (e.g. colmap image_undistorter)"]
