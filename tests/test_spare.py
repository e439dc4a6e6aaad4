"""SpaRe (AIM 2024 Sparse Neural Rendering Challenge): split files, scene loading, submission zips.

The fixture is a miniature release laid out as its archives unzip: a Track 1 development split
for one DTU and one Synthetic scene, ``dtu_calibration/`` and ``synth_calibration/`` holding
different rigs (so a scene posed from the other part's calibration is caught), and the input
views at 40x30 standing for 1600x1200, each view a flat grey encoding its id (so images paired
with the wrong camera are caught), plus a lighting-0 copy that must never be picked.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatkit.errors import DataError, SplatkitError
from splatkit.eval.spare import (
    SpareScene, load_spare_scene, pack_submission, read_spare_split, spare_calibration_dir,
    spare_scene_dir, spare_test_cameras, write_submission,
)

W, H = 40, 30
FULL = 40  # the stored 40x30 images stand for the 1600x1200 the matrices describe
K_FULL = np.array([[1500.0, 0.0, 810.0], [0.0, 1490.0, 596.0], [0.0, 0.0, 1.0]])  # ours, corner origin
SPLIT = {
    "scan8": {"input_views": [0, 2, 4], "test_views": [1, 3], "dataset": "DTU"},
    "Amplifier": {"input_views": [1, 3, 5], "test_views": [0, 2, 4], "dataset": "Synthetic"},
}
# Points near the origin every camera sees.
POINTS = np.array([[0.0, 0.0, 0.0], [0.2, -0.1, 0.1], [-0.15, 0.2, -0.05], [0.1, 0.1, 0.25]])


def look_at(eye) -> np.ndarray:
    """OpenCV camera-to-world at ``eye`` looking at the origin (world z up)."""
    eye = np.asarray(eye, float)
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def rig(radius: float, height: float, phase: float) -> list[np.ndarray]:
    return [look_at([radius * np.cos(phase + 0.35 * k), radius * np.sin(phase + 0.35 * k), height])
            for k in range(6)]


RIGS = {"DTU": rig(3.0, 1.2, 0.0), "Synthetic": rig(4.5, 2.0, 1.0)}


def grey(k: int) -> int:
    return 20 + 25 * k


def png(path: Path, value: int, size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def write_calibration(folder: Path, c2ws, scale: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    K_int = K_FULL.copy()
    K_int[:2, 2] -= 0.5  # pos_XXX.txt puts pixel centres on integers
    for k, c2w in enumerate(c2ws):
        # Any nonzero scale (sign included) describes the same camera.
        np.savetxt(folder / f"pos_{k + 1:03d}.txt", scale * K_int @ np.linalg.inv(c2w)[:3, :4])


def write_inputs(folder: Path, dataset: str, views) -> None:
    for k in views:
        if dataset == "DTU":
            png(folder / f"rect_{k + 1:03d}_3_r5000.png", grey(k))
            png(folder / f"rect_{k + 1:03d}_0_r5000.png", 255)
        else:
            png(folder / f"cam_{k + 1:03d}_3_0000.png", grey(k))
            png(folder / f"cam_{k + 1:03d}_0_0000.png", 255)


@pytest.fixture
def spare(tmp_path):
    root = tmp_path / "spare"
    (root).mkdir()
    (root / "Track1_split_development.json").write_text(json.dumps(SPLIT, indent=2))
    write_calibration(root / "dtu_calibration" / "Calibration" / "cal18", RIGS["DTU"], 7.0)
    write_calibration(root / "synth_calibration", RIGS["Synthetic"], -2.0)
    write_inputs(root / "dtu_development_3views" / "scan8", "DTU", SPLIT["scan8"]["input_views"])
    write_inputs(root / "synth_development_3views" / "Amplifier", "Synthetic", SPLIT["Amplifier"]["input_views"])
    return root


def gt_project(dataset: str, view: int, points: np.ndarray, scale: float = 1.0) -> np.ndarray:
    w2c = np.linalg.inv(RIGS[dataset][view])
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ (K_FULL * np.array([[scale], [scale], [1.0]])).T
    return uv[:, :2] / uv[:, 2:3]


# -- split files ----------------------------------------------------------------------------------
def test_read_split(spare):
    scenes = read_spare_split(spare / "Track1_split_development.json")
    assert [s.name for s in scenes] == ["scan8", "Amplifier"]
    dtu, syn = scenes
    assert (dtu.dataset, dtu.input_views, dtu.test_views) == ("DTU", (0, 2, 4), (1, 3))
    assert (syn.dataset, syn.input_views, syn.test_views) == ("Synthetic", (1, 3, 5), (0, 2, 4))
    assert dtu.track == 1 and dtu.phase == "development"
    # Index i is camera i + 1 (structure.md); lighting 3 is the evaluated one (submission.md).
    assert dtu.submission_names == ["scan8/rect_002_3_r5000.png", "scan8/rect_004_3_r5000.png"]
    assert syn.submission_names == ["Amplifier/cam_001_3_0000.png", "Amplifier/cam_003_3_0000.png",
                                    "Amplifier/cam_005_3_0000.png"]


def _entry(**over):
    e = {"input_views": [0, 1, 2], "test_views": [5, 6], "dataset": "DTU"}
    e.update(over)
    return e


@pytest.mark.parametrize("content, match", [
    ("{not json", r"invalid JSON at line 1"),
    ("[1, 2]", r"expected a JSON object keyed by scene name, got list"),
    ("{}", r"lists no scenes"),
    (json.dumps({"scan1": [0, 1]}), r"scene 'scan1': expected an object"),
    (json.dumps({"scan1": {"input_views": [0, 1, 2], "dataset": "DTU"}}), r"scene 'scan1': missing 'test_views'"),
    (json.dumps({"scan1": _entry(input_views=[])}), r"'input_views' is empty"),
    (json.dumps({"scan1": _entry(test_views=[])}), r"'test_views' is empty"),
    (json.dumps({"scan1": _entry(test_views=[2, 7])}), r"view\(s\) \[2\] are both input and test views"),
    (json.dumps({"scan1": _entry(input_views=[0, 1, 1])}), r"'input_views' lists view\(s\) \[1\] more than once"),
    (json.dumps({"scan1": _entry(input_views=[0, -1, 2])}), r"holds -1; view indices are 0-based"),
    (json.dumps({"scan1": _entry(test_views=[5, 6.0])}), r"holds 6.0; view indices are whole numbers"),
    (json.dumps({"scan1": _entry(test_views="5,6")}), r"'test_views' must be a list"),
    (json.dumps({"scan1": _entry(dataset="Blender")}), r"'dataset' is 'Blender'; expected one of DTU, Synthetic"),
    (json.dumps({"../x": _entry()}), r"scene name '../x' is not a usable folder name"),
    (json.dumps({"scan1": _entry(input_views=list(range(9)), test_views=[10])}),
     r"9 input views, but Track 1 uses 3"),
    ('{"scan1": %s, "scan1": %s}' % (json.dumps(_entry()), json.dumps(_entry())),
     r"key 'scan1' appears more than once"),
])
def test_bad_split(tmp_path, content, match):
    path = tmp_path / "Track1_split_test.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        read_spare_split(path)
    assert info.value.path == path and "\n" not in str(info.value)


def test_split_file_missing_and_other_names(tmp_path):
    with pytest.raises(DataError, match="split file is missing"):
        read_spare_split(tmp_path / "nope.json")
    # A file not named like the challenge's has no track, so no view-count check.
    path = tmp_path / "my_split.json"
    path.write_text(json.dumps({"Jenga": _entry(input_views=[0, 1, 2, 3, 4], dataset="synthetic")}))
    (s,) = read_spare_split(path)
    assert s.track is None and s.dataset == "Synthetic" and s.input_views == (0, 1, 2, 3, 4)


# -- loading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["scan8", "Amplifier"])
def test_load_scene(spare, name):
    sp = {s.name: s for s in read_spare_split(spare / "Track1_split_development.json")}[name]
    scene = load_spare_scene(spare, sp)
    assert scene.ids == list(sp.input_views) and scene.splits == {"train": list(sp.input_views)}
    assert scene.source_format == "spare" and len(scene) == 3
    for i, v in enumerate(sp.input_views):
        img = scene.images[i]
        assert img.shape == (H, W, 3)
        np.testing.assert_allclose(img, grey(v) / 255.0, atol=1e-6)  # lighting 3, right view
        uv, z = scene.cameras.project(scene.normalization.from_original(POINTS))
        np.testing.assert_allclose(uv[i], gt_project(sp.dataset, v, POINTS, 1.0 / FULL), atol=1e-6)
        assert (z[i] > 0).all()

    half = load_spare_scene(spare, sp, downscale=2)
    assert half.image_size == (W // 2, H // 2) and half.ids == scene.ids
    uv, _ = half.cameras.project(half.normalization.from_original(POINTS))
    for i, v in enumerate(sp.input_views):
        np.testing.assert_allclose(uv[i], gt_project(sp.dataset, v, POINTS, 0.5 / FULL), atol=1e-6)

    # Test cameras land in the loaded scene's frame, at 1600x1200 or at the scene's scale.
    for d, scale in ((1, 1.0), (FULL, 1.0 / FULL)):
        cams = spare_test_cameras(spare, sp, scene.normalization, downscale=d)
        assert len(cams) == len(sp.test_views)
        assert (int(cams.widths[0]), int(cams.heights[0])) == (1600 // d, 1200 // d)
        uv, _ = cams.project(scene.normalization.from_original(POINTS))
        for i, v in enumerate(sp.test_views):
            np.testing.assert_allclose(uv[i], gt_project(sp.dataset, v, POINTS, scale), atol=1e-6)


def test_scene_and_calibration_folders(spare):
    dtu, syn = read_spare_split(spare / "Track1_split_development.json")
    assert spare_scene_dir(spare, dtu) == spare / "dtu_development_3views" / "scan8"
    assert spare_calibration_dir(spare, dtu).samefile(spare / "dtu_calibration" / "Calibration" / "cal18")
    assert spare_calibration_dir(spare, syn).samefile(spare / "synth_calibration")
    # A per-scene calibration folder wins over a shared one, and is not taken for the image folder.
    write_calibration(spare / "synth_calibration" / "Amplifier", RIGS["Synthetic"], 3.0)
    assert spare_calibration_dir(spare, syn).samefile(spare / "synth_calibration" / "Amplifier")
    assert spare_scene_dir(spare, syn) == spare / "synth_development_3views" / "Amplifier"
    # Pointing straight at the scene folder works too; RegNeRF's Calibration/cal18 is found above it.
    write_inputs(spare / "regnerf" / "Rectified" / "scan8", "DTU", dtu.input_views)
    write_calibration(spare / "regnerf" / "Calibration" / "cal18", RIGS["DTU"], 1.0)
    scan = spare / "regnerf" / "Rectified" / "scan8"
    assert spare_scene_dir(scan, dtu) == scan
    assert spare_calibration_dir(scan.parent.parent, dtu).samefile(spare / "regnerf" / "Calibration" / "cal18")


def test_track_downloads_side_by_side(spare):
    dtu = read_spare_split(spare / "Track1_split_development.json")[0]
    # The Track 2 download holds scan8 with 9 input views, a superset of Track 1's 3.
    write_inputs(spare / "dtu_development_9views" / "scan8", "DTU", range(9))
    assert spare_scene_dir(spare, dtu) == spare / "dtu_development_3views" / "scan8"
    write_inputs(spare / "copy" / "scan8", "DTU", dtu.input_views)
    with pytest.raises(DataError, match="several folders hold scene scan8's input views"):
        spare_scene_dir(spare, dtu)
    # A narrower root settles it; its calibration is then outside the root and given explicitly.
    with pytest.raises(DataError, match="no pos_XXX.txt calibration for DTU scene scan8"):
        load_spare_scene(spare / "copy", dtu)
    calib = spare / "dtu_calibration" / "Calibration" / "cal18"
    assert load_spare_scene(spare / "copy", dtu, calibration=calib).ids == [0, 2, 4]


def test_missing_data(spare):
    dtu, syn = read_spare_split(spare / "Track1_split_development.json")
    (spare / "dtu_development_3views" / "scan8" / "rect_005_3_r5000.png").unlink()
    with pytest.raises(DataError, match=r"scene scan8 lacks input view\(s\) \[4\] \(rect_005_3_r5000.png\)"):
        load_spare_scene(spare, dtu)
    (spare / "synth_calibration" / "pos_003.txt").unlink()
    with pytest.raises(DataError, match=r"calibration lacks pos_003.txt \(view 2\) needed by scene Amplifier"):
        load_spare_scene(spare, syn)
    other = SpareScene("scan99", "DTU", (0, 1, 2), (3,))
    with pytest.raises(DataError, match="no folder named scan99 with lighting-3 images"):
        load_spare_scene(spare, other)
    with pytest.raises(DataError, match="no such folder"):
        load_spare_scene(spare / "absent", dtu)


# -- submission -------------------------------------------------------------------------------------
def read_zip_pngs(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        return {n: np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in zf.namelist()}


def test_write_submission(spare, tmp_path):
    dtu, syn = read_spare_split(spare / "Track1_split_development.json")
    split_lr = np.zeros((H, W, 3), np.float32)
    split_lr[:, W // 2:] = 1.0  # left black, right white: a transposed or flipped resize shows
    renders = {1: split_lr, np.int64(3): np.full((H, W, 3), 0.5, np.float32)}
    out = tmp_path / "sub"
    path = write_submission(renders, dtu, out)
    assert path == out / "scan8.zip" and sorted(p.name for p in out.iterdir()) == ["scan8.zip"]
    imgs = read_zip_pngs(path)
    assert sorted(imgs) == ["scan8/rect_002_3_r5000.png", "scan8/rect_004_3_r5000.png"]
    a, b = imgs["scan8/rect_002_3_r5000.png"], imgs["scan8/rect_004_3_r5000.png"]
    assert a.shape == b.shape == (1200, 1600, 3) and a.dtype == np.uint8
    assert (a[:, :760] == 0).all() and (a[:, 840:] == 255).all()
    assert (b == 128).all()  # 0.5 rounds to 128

    # Full-size renders go in unchanged; a second write replaces the zip.
    yy, xx = np.mgrid[0:1200, 0:1600]
    full = (np.stack([xx % 256, yy % 256, (xx + 3 * yy) % 256], axis=-1) / 255.0).astype(np.float32)
    write_submission({0: full, 2: full, 4: np.ones((300, 400, 3), np.float32)}, syn, out)
    imgs = read_zip_pngs(out / "Amplifier.zip")
    assert list(imgs) == syn.submission_names
    np.testing.assert_array_equal(imgs["Amplifier/cam_001_3_0000.png"], np.round(full * 255).astype(np.uint8))
    assert (imgs["Amplifier/cam_005_3_0000.png"] == 255).all()

    sub = pack_submission(out, [dtu, syn])
    with zipfile.ZipFile(sub) as zf:
        # Scene folders at the archive's root, nothing above them (submission.md).
        assert sorted(zf.namelist()) == sorted(dtu.submission_names + syn.submission_names)
    dtu_only = pack_submission(out, [dtu], tmp_path / "dtu_only.zip")
    assert zipfile.ZipFile(dtu_only).namelist() == dtu.submission_names


def test_submission_errors(spare, tmp_path):
    dtu = read_spare_split(spare / "Track1_split_development.json")[0]
    ok = np.zeros((H, W, 3), np.float32)
    cases = [
        ({1: ok}, r"scene scan8: no render for test view\(s\) \[3\] \(rect_004_3_r5000.png\)"),
        ({1: ok, 3: ok, 0: ok}, r"render\(s\) for view\(s\) \[0\] that are not test views \(test views: \[1, 3\]\)"),
        ({1: ok, 3: np.zeros((30, 30, 3), np.float32)}, r"render of view 3 is 30x30; SpaRe renders must be 4:3"),
        ({1: ok, 3: np.zeros((H, W), np.float32)}, r"render of view 3 has shape \(30, 40\); expected \[H, W, 3\]"),
        ({1: ok, 3: np.full((H, W, 3), np.nan, np.float32)}, r"render of view 3 has non-finite values"),
        ({True: ok, 3: ok}, r"render key True is not a view id"),
    ]
    for renders, match in cases:
        with pytest.raises(SplatkitError, match=match):
            write_submission(renders, dtu, tmp_path / "out")
    assert not (tmp_path / "out" / "scan8.zip").exists()
    write_submission({1: ok, 3: ok}, dtu, tmp_path / "out")
    other = SpareScene("Jenga", "Synthetic", (0, 1, 2), (3,))
    with pytest.raises(DataError, match="no submission zip for scene\\(s\\) Jenga"):
        pack_submission(tmp_path / "out", [dtu, other])
    # A zip that does not hold exactly the scene's renders is refused.
    with zipfile.ZipFile(tmp_path / "out" / "Jenga.zip", "w") as zf:
        zf.writestr("Jenga/cam_004_3_0000.png", b"x")
        zf.writestr("Jenga/extra.png", b"x")
    with pytest.raises(DataError, match="holds 2 entries, not scene Jenga's 1 test-view renders"):
        pack_submission(tmp_path / "out", [dtu, other])
    assert not (tmp_path / "out" / "submission.zip").exists()


def test_benchmark_spare_suite_writes_the_submission(spare, tmp_path):
    """``splatkit benchmark --suite spare`` end to end on the miniature release: trains on the input
    views only and packs one archive with every test view at 1600x1200."""
    from splatkit.cli.main import main

    out = tmp_path / "bench"
    assert main(["benchmark", "--suite", "spare", "--root", str(spare), "--split-file",
                 str(spare / "Track1_split_development.json"), "--methods", "fast", "--steps", "3",
                 "--out", str(out), "--quiet", "--set", "init_num_points=200", "checkpoint_every=0",
                 "preview_every=0"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert {r["scene"] for r in result["runs"]} == {"scan8", "Amplifier"}
    for r in result["runs"]:
        split = json.loads((Path(r["run"]) / "split.json").read_text())
        assert split == {"train": SPLIT[r["scene"]]["input_views"], "test": []}
    pngs = read_zip_pngs(out / "submission" / "fast_seed0" / "submission.zip")
    assert sorted(pngs) == sorted(["scan8/rect_002_3_r5000.png", "scan8/rect_004_3_r5000.png",
                                   "Amplifier/cam_001_3_0000.png", "Amplifier/cam_003_3_0000.png",
                                   "Amplifier/cam_005_3_0000.png"])
    assert all(img.shape == (1200, 1600, 3) for img in pngs.values())
