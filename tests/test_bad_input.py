"""Bad dataset folders give one clear line (file + problem) and exit status 2, never a traceback.

Each case builds a small broken folder and is checked twice: ``load_scene`` raises
:class:`DataError`, and ``splatkit data info`` returns 2 with a single stderr line naming the
offending file or folder and the problem.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from splatkit.cli.main import main
from splatkit.data import load_scene
from splatkit.errors import DataError

W, H = 16, 12


def _png(path: Path, value: int = 128) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.full((H, W, 3), value, np.uint8))


def _pose(k: int) -> np.ndarray:
    """A rigid camera-to-world matrix (rotation about z, then a translation)."""
    a = 0.4 * k
    c2w = np.eye(4)
    c2w[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    c2w[:3, 3] = [math.sin(a), 0.2 * k, 3.0]
    return c2w


def _llff(root: Path, n_poses: int, n_images: int) -> None:
    rows = []
    for k in range(n_poses):
        c2w = _pose(k)
        R = c2w[:3, :3]
        m = np.concatenate([np.stack([R[:, 1], R[:, 0], -R[:, 2]], 1), c2w[:3, 3:], [[H], [W], [20.0]]], 1)
        rows.append(np.concatenate([m.ravel(), [1.0, 10.0]]))
    np.save(root / "poses_bounds.npy", np.array(rows))
    for k in range(n_images):
        _png(root / "images" / f"{k:03d}.png")


def _transforms(root: Path, matrices: list) -> None:
    frames = []
    for k, m in enumerate(matrices):
        _png(root / "images" / f"{k}.png")
        frames.append({"file_path": f"images/{k}.png", "transform_matrix": np.asarray(m).tolist()})
    (root / "transforms.json").write_text(json.dumps({"fl_x": 20.0, "w": W, "h": H, "frames": frames}))


def _colmap_text(root: Path, names: list[str], present: list[str]) -> None:
    """A COLMAP text model in the classic three-file layout, written by hand."""
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(f"1 PINHOLE {W} {H} 20 20 8 6\n")
    lines = [f"{k + 1} 1 0 0 0 0 0 3 1 {name}\n\n" for k, name in enumerate(names)]
    (model / "images.txt").write_text("".join(lines))
    (model / "points3D.txt").write_text("")
    for name in present:
        _png(root / "images" / name)


def case_unknown_format(tmp):
    (tmp / "notes.txt").write_text("hello")
    _png(tmp / "photo.png")
    return tmp, tmp, r"no recognisable dataset"


def case_missing_folder(tmp):
    return tmp / "nope", tmp / "nope", r"no such folder"


def case_missing_image(tmp):
    _colmap_text(tmp, ["a.png", "b.png", "c.png"], ["a.png", "c.png"])
    return tmp, tmp / "images" / "b.png", r"image file is missing \(1 of 3 images"


def case_corrupt_image(tmp):
    _llff(tmp, 3, 3)
    (tmp / "images" / "001.png").write_bytes(b"this is not a png at all" * 10)
    return tmp, tmp / "images" / "001.png", r"cannot decode image"


def case_more_cameras(tmp):
    _llff(tmp, 4, 3)
    return tmp, tmp, r"4 poses but images/ has 3 images \(more cameras than images\)"


def case_more_images(tmp):
    _llff(tmp, 3, 5)
    return tmp, tmp, r"3 poses but images/ has 5 images \(more images than cameras\)"


def case_non_finite_pose(tmp):
    bad = _pose(1)
    bad[0, 3] = float("nan")
    _transforms(tmp, [_pose(0), bad, _pose(2)])
    return tmp, tmp / "transforms.json", r"frame 1 \(images/1\.png\): pose has non-finite values"


def case_scaled_rotation(tmp):
    bad = _pose(2)
    bad[:3, :3] *= 1.5
    _transforms(tmp, [_pose(0), _pose(1), bad])
    return tmp, tmp / "transforms.json", r"frame 2 \(images/2\.png\): pose is not a rigid transform"


def case_sheared_rotation(tmp):
    bad = _pose(0)
    bad[0, 1] += 0.3
    _transforms(tmp, [bad, _pose(1)])
    return tmp, tmp / "transforms.json", r"frame 0 \(images/0\.png\): pose is not a rigid transform"


def case_non_finite_projection(tmp):
    P = np.eye(4)
    P[:3, :4] = [[20, 0, 8, 1], [0, 20, 6, 0], [0, 0, 1, 3]]
    bad = P.copy()
    bad[1, 1] = float("inf")
    np.savez(tmp / "cameras_sphere.npz", world_mat_0=P, world_mat_1=bad, scale_mat_0=np.eye(4), scale_mat_1=np.eye(4))
    _png(tmp / "image" / "000000.png")
    _png(tmp / "image" / "000001.png")
    return tmp, tmp / "cameras_sphere.npz", r"world_mat_1: projection matrix has non-finite values"


def case_corrupt_colmap_model(tmp):
    _colmap_text(tmp, ["a.png"], ["a.png"])
    model = tmp / "sparse" / "0"
    for f in model.iterdir():
        f.unlink()
    (model / "cameras.bin").write_bytes(b"\x07" * 64)
    (model / "images.bin").write_bytes(b"")
    (model / "points3D.bin").write_bytes(b"")
    return tmp, model, r"cannot read COLMAP model"


def case_invalid_json(tmp):
    _png(tmp / "images" / "0.png")
    (tmp / "transforms.json").write_text('{"fl_x": 20, "frames": [')
    return tmp, tmp / "transforms.json", r"invalid JSON \(Expecting value at line 1\)"


CASES = [case_unknown_format, case_missing_folder, case_missing_image, case_corrupt_image, case_more_cameras,
         case_more_images, case_non_finite_pose, case_scaled_rotation, case_sheared_rotation,
         case_non_finite_projection, case_corrupt_colmap_model, case_invalid_json]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_load_scene_raises_data_error(tmp_path, case):
    folder, culprit, problem = case(tmp_path)
    with pytest.raises(DataError, match=problem) as info:
        load_scene(folder)
    assert info.value.path == culprit


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_cli_reports_one_line(tmp_path, case, capsys):
    folder, culprit, problem = case(tmp_path)
    assert main(["data", "info", str(folder)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"splatkit: error: {culprit}: ")
    assert re.search(problem, lines[0])


def test_verbose_keeps_the_traceback(tmp_path, capsys):
    folder, culprit, problem = case_more_cameras(tmp_path)
    assert main(["data", "info", str(folder), "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "DataError" in err
    assert err.strip().splitlines()[-1].startswith(f"splatkit: error: {culprit}: ")


def test_llff_benchmark_finds_the_scene_under_its_usual_folder_names(tmp_path):
    """``--suite llff --scans fern`` finds ``fern/``, ``llff_fern/`` (how ../shared/data names it)
    and ``nerf_llff_data/fern/``; a missing scene's error names the folders it looked for."""
    from splatkit.errors import SplatkitError
    from splatkit.eval.benchmark import llff_cases

    for sub in ("fern", "llff_fern", "nerf_llff_data/fern"):
        root = tmp_path / sub.replace("/", "_")
        (root / sub).mkdir(parents=True)
        _llff(root / sub, 9, 9)
        for scenes in (["fern"], None):  # by name, and found without --scans
            (case,) = llff_cases(root, scenes, 3)
            assert case.name == "fern" and case.data == root / sub
            assert case.test_ids == [0, 8] and len(case.train_ids) == 3
    with pytest.raises(SplatkitError, match=r"'horns' not found .*horns/, llff_horns/, nerf_llff_data/horns/"):
        llff_cases(tmp_path / "fern", ["horns"], 3)
