"""Structure from motion (splatkit.data.sfm): poses recovered from photos of a synthetic scene whose
cameras are known, triangulation with known cameras against the ray-traced depth, one-line errors.

One synthetic scene (16 views, 320x240) is rendered per module; pycolmap runs in child processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splatkit.data import load_scene
from splatkit.data.imageio_utils import write_image
from splatkit.data.sfm import PoseOptions, recover_poses, triangulate_known_poses
from splatkit.data.sfm.evaluate import align_poses, pose_errors
from splatkit.data.sfm.photos import colmap_camera, parse_intrinsics, read_k_file
from splatkit.data.sfm.runner import run_stage
from splatkit.errors import DataError, SplatkitError

N_VIEWS, W, H = 16, 320, 240


@pytest.fixture(scope="module")
def synthetic():
    from splatkit.data.synthetic import render_synthetic_scene

    return render_synthetic_scene(seed=0, width=W, height=H, n_views=N_VIEWS)


@pytest.fixture(scope="module")
def photos(synthetic, tmp_path_factory) -> Path:
    """The synthetic views as a plain photo folder with a K.txt (no poses)."""
    folder = tmp_path_factory.mktemp("photos") / "object"
    for i, img in enumerate(synthetic.images):
        write_image(folder / f"{i:03d}.png", img)
    K = synthetic.cameras.Ks[0]  # the views' focal lengths differ by < 0.2% (DTU-like jitter)
    (folder / "K.txt").write_text("\n".join(" ".join(f"{v:.10g}" for v in row) for row in K) + "\n")
    return folder


@pytest.fixture(scope="module")
def recovered(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("poses") / "scene"
    lines = []
    res = recover_poses(photos, out, PoseOptions(few_views=True, mapper="incremental"), say=lines.append)
    return res, lines


def test_pose_alignment_recovers_a_known_similarity_and_measures_errors():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    R = Rotation.from_rotvec([0.3, -0.7, 1.1]).as_matrix()
    c2w = np.tile(np.eye(4), (6, 1, 1))
    c2w[:, :3, :3] = Rotation.from_rotvec(rng.normal(size=(6, 3))).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(6, 3))
    moved = c2w.copy()  # the same cameras in a world moved by x -> 0.5 R x + (3, 3, 3)
    moved[:, :3, :3] = R @ c2w[:, :3, :3]
    moved[:, :3, 3] = 0.5 * c2w[:, :3, 3] @ R.T + 3.0
    s, R2, t = align_poses(moved, c2w)
    assert s == pytest.approx(2.0, rel=1e-12) and np.allclose(R2, R.T, atol=1e-12)
    assert np.allclose(pose_errors(moved, c2w).rotation_deg, 0, atol=1e-5)
    # A 1 degree turn of one camera shows as about 1 degree on it (the mean rotation moves by 1/6 of it).
    moved[2, :3, :3] = moved[2, :3, :3] @ Rotation.from_rotvec([0, np.radians(1.0), 0]).as_matrix()
    e = pose_errors(moved, c2w)
    assert e.rotation_deg[2] == pytest.approx(5 / 6, abs=0.01) and np.all(np.delete(e.rotation_deg, 2) < 0.2)
    # A centre moved by 1% of the largest centre distance shows as most of 1% on it (the fitted
    # scale and shift absorb the rest).
    moved = c2w.copy()
    scale = np.linalg.norm(c2w[:, None, :3, 3] - c2w[None, :, :3, 3], axis=-1).max()
    moved[4, :3, 3] += [0.01 * scale, 0, 0]
    e = pose_errors(moved, c2w)
    assert e.scene_scale == pytest.approx(scale) and 0.5 < e.center_pct[4] < 1.0
    assert np.argmax(e.center_pct) == 4 and np.allclose(e.rotation_deg, 0, atol=1e-5)


def test_intrinsics_parsing(tmp_path):
    assert colmap_camera(parse_intrinsics("500,510,320,240")) == ("PINHOLE", [500, 510, 320, 240])
    assert colmap_camera(parse_intrinsics("500,510,320,240,0.1"))[0] == "OPENCV"
    assert colmap_camera(parse_intrinsics("500,510,320,240,0.1,0,0,0,0.01"))[0] == "FULL_OPENCV"
    k = tmp_path / "K.txt"
    k.write_text("2905.88 0 1416\n0 2905.88 1064\n0 0 1\n")
    assert parse_intrinsics(str(k)) == [2905.88, 2905.88, 1416, 1064]
    for bad in ("500,510,320", "a,b,c,d", "-5,5,1,1"):
        with pytest.raises(DataError, match="--intrinsics takes"):
            parse_intrinsics(bad)
    k.write_text("1 2 3\n4 5 6\n")
    with pytest.raises(DataError, match="9 numbers"):
        read_k_file(k)


def test_sift_threshold_follows_the_photo_size(photos, tmp_path):
    from PIL import Image

    from splatkit.data.sfm.pipeline import COLMAP_PEAK_THRESHOLD, SMALL_PHOTO_PEAK_THRESHOLD, _resolve

    def threshold(folder, **kw):
        return _resolve(PoseOptions(**kw), folder, sorted(folder.glob("*.*g")), lambda s: None)["peak_threshold"]

    assert threshold(photos) == SMALL_PHOTO_PEAK_THRESHOLD  # 320x240: SIFT finds few features at COLMAP's
    big = tmp_path / "big"
    big.mkdir()
    for i in range(2):
        Image.new("RGB", (2000, 1500)).save(big / f"{i}.jpg")
    assert threshold(big) == COLMAP_PEAK_THRESHOLD
    assert threshold(big, max_image_size=800) == SMALL_PHOTO_PEAK_THRESHOLD  # what SIFT sees decides
    assert threshold(big, peak_threshold=0.004) == 0.004
    for bad, flag in (({"peak_threshold": 2.0}, "--peak-threshold"), ({"focal_factor": 0.0}, "--focal-factor"),
                      ({"refine_passes": -1}, "--refine-passes")):
        with pytest.raises(SplatkitError, match=flag):
            PoseOptions(**bad).check()


def test_recovered_poses_match_the_known_cameras(recovered, synthetic):
    res, lines = recovered
    rep = res.report
    assert any(line.startswith("[3/5] mapping") for line in lines)  # progress per stage
    assert rep["settings"]["camera_model"] == "PINHOLE" and not rep["settings"]["refine_intrinsics"]  # K.txt found
    assert len(rep["registered"]) >= N_VIEWS - 2
    assert set(rep["not_registered"]) == {f"{i:03d}.png" for i in range(N_VIEWS)} - set(rep["registered"])
    assert all(isinstance(why, str) and why for why in rep["not_registered"].values())
    assert rep["mean_reprojection_error"] < 1.0 and rep["mean_track_length"] > 2.0
    assert rep["verified_pairs"] <= rep["matched_pairs"] == N_VIEWS * (N_VIEWS - 1) // 2  # exhaustive
    assert rep["camera_estimate"][0][0] == "PINHOLE"
    scene = load_scene(res.scene_dir)  # the COLMAP reader takes the undistorted PINHOLE model
    assert scene.source_format == "colmap" and len(scene) == len(rep["registered"])
    assert np.allclose(scene.cameras.Ks[0], synthetic.cameras.Ks[0], atol=1e-6)  # held fixed
    idx = [int(n) for n in scene.names]
    e = pose_errors(scene.cameras.camtoworlds, synthetic.cameras.camtoworlds[idx])
    # ~270 SIFT features per 320x240 view and a K off by up to 0.2% for some views: about half a
    # degree here (a wrong axis or pixel convention gives tens of degrees).
    assert e.mean_rotation_deg < 1.5 and e.rotation_deg.max() < 3.0
    assert e.mean_center_pct < 1.5 and e.center_pct.max() < 3.0


def test_photos_alone_with_the_other_routes(photos, synthetic, tmp_path):
    """Unknown intrinsics: a PINHOLE camera whose principal point is refined from a first focal guess,
    guided matching, and one more retriangulation + global bundle adjustment pass after mapping."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(photos.glob("*.png")):
        (folder / p.name).symlink_to(p)  # no K.txt
    opts = PoseOptions(camera_model="PINHOLE", refine_principal_point=True, focal_factor=1.5, guided_matching=True,
                       refine_passes=1, mapper="incremental", few_views=False, dsp=False, affine=False, downscales=())
    res = recover_poses(folder, tmp_path / "scene", opts, say=lambda s: None)
    rep = res.report
    assert rep["settings"]["refine_intrinsics"] and rep["settings"]["guided_matching"]
    model, params = rep["camera_estimate"][0]
    true_K = synthetic.cameras.Ks[0]
    assert model == "PINHOLE" and abs(params[0] / true_K[0, 0] - 1) < 0.05  # from 1.5 x 320 = 480
    assert len(rep["registered"]) >= N_VIEWS - 2
    scene = load_scene(res.scene_dir)
    e = pose_errors(scene.cameras.camtoworlds, synthetic.cameras.camtoworlds[[int(n) for n in scene.names]])
    assert e.mean_rotation_deg < 1.5 and e.mean_center_pct < 1.5


def test_scene_folder_layout_report_and_reuse(recovered, photos):
    res, _ = recovered
    out = res.scene_dir
    for name in ("report.json", "report.md", "cameras.png", "cameras.html", "sfm.log", "database.db"):
        assert (out / "sfm" / name).is_file(), name
    assert (out / "sparse" / "0" / "cameras.bin").is_file()
    from PIL import Image

    for d in (2, 4, 8):
        with Image.open(out / f"images_{d}" / "000.png") as im:
            assert im.size == (round(W / d), round(H / d))
    small = load_scene(out, downscale=4)  # the prebuilt images_4
    full = load_scene(out)
    assert small.image_size == (W // 4, H // 4)
    assert np.allclose(small.cameras.Ks[:, :2], full.cameras.Ks[:, :2] / 4)
    assert "plotly" in (out / "sfm" / "cameras.html").read_text()[:20000].lower()
    lines = []
    again = recover_poses(photos, out, PoseOptions(few_views=True, mapper="incremental"), say=lines.append)
    assert again.reused and again.report == json.loads((out / "sfm" / "report.json").read_text())
    assert lines[-1].startswith("poses: reusing")


def test_triangulated_points_lie_on_the_rendered_surface(synthetic):
    scene = synthetic.to_scene()
    views = list(range(0, 8))
    tp = triangulate_known_poses(scene, views)
    assert len(tp) > 150 and tp.xyz.dtype == np.float64 and tp.rgb.dtype == np.uint8
    assert set(tp.observations) == set(views)
    assert np.all(tp.track_lengths() >= 2) and np.median(tp.reproj_error) < 1.0
    rel = []
    for v, (ids, px) in tp.observations.items():
        uv, z = scene.cameras[[v]].project(tp.xyz[ids])
        # Pixels are in the scene's own convention: the point projects back onto its observation.
        assert np.median(np.linalg.norm(uv[0] - px, axis=1)) < 1.0
        depth = scene.depths[v]
        iu = np.clip(np.floor(px[:, 0]).astype(int), 0, W - 1)
        iv = np.clip(np.floor(px[:, 1]).astype(int), 0, H - 1)
        ok = depth[iv, iu] > 0
        rel.append(np.abs(z[0][ok] - depth[iv, iu][ok]) / depth[iv, iu][ok])
    rel = np.concatenate(rel)
    # Points are in the scene's (normalised) frame: their depth is the ray-traced depth there.
    assert np.median(rel) < 0.005 and np.percentile(rel, 90) < 0.03


def test_a_worker_failure_is_one_line(tmp_path):
    with pytest.raises(SplatkitError) as exc:
        run_stage("extract", {"database": str(tmp_path / "db.db"), "image_dir": str(tmp_path / "nothing"),
                              "image_names": ["a.png"], "camera_model": "PINHOLE", "camera_params": []},
                  tmp_path / "work", label="feature extraction")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("structure from motion failed at feature extraction")


def test_an_aborting_pycolmap_call_does_not_take_splatkit_down(tmp_path, photos):
    """A vocabulary tree that is not one makes pycolmap abort its process (glog CHECK)."""
    bogus = tmp_path / "tree.bin"
    bogus.write_bytes(b"not a vocabulary tree")
    with pytest.raises(SplatkitError) as exc:
        recover_poses(photos, tmp_path / "out", PoseOptions(matching="vocabtree", vocab_tree=str(bogus),
                                                           max_image_size=160), say=lambda s: None)
    assert "\n" not in str(exc.value) and "feature matching" in str(exc.value)


def test_bad_input_errors(tmp_path, photos):
    with pytest.raises(DataError, match="at least two readable photos"):
        recover_poses(tmp_path, tmp_path / "out")
    # Files named like photos that are not: named in a warning, left out, and a clear error when
    # fewer than two photos remain (COLMAP would skip them silently and leave nothing to match).
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_text("not a photo")
    (junk / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="2 of 2 files are not readable images.*a.jpg, b.png"):
        with pytest.raises(DataError, match="at least two readable photos"):
            recover_poses(junk, tmp_path / "out_junk")
    # A bad training flag fails before the (long) pose step starts.
    from splatkit.app.train import train_command

    with pytest.raises(SplatkitError, match="unknown preset 'nope'"):
        train_command({"data": str(junk)}, preset="nope", quiet=True)
    assert not (junk / "splatkit_poses").exists()
    from splatkit.data.sfm.pipeline import _readable

    real = sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in (".png", ".jpg"))[:2]
    with pytest.warns(UserWarning, match="1 of 3 files"):
        assert _readable([real[0], junk / "a.jpg", real[1]]) == real
    with pytest.raises(SplatkitError, match="needs --vocab-tree"):
        recover_poses(photos, tmp_path / "out", PoseOptions(matching="vocabtree"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        recover_poses(photos, tmp_path / "busy", PoseOptions(), say=lambda s: None)
    # The loader points a plain photo folder at the pose step.
    with pytest.raises(DataError, match="photos without camera poses.*splatkit data poses"):
        load_scene(photos)


def test_train_on_a_folder_of_photos_runs_the_pose_step_first(photos, tmp_path, capsys):
    import shutil

    from splatkit.cli.main import main

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)  # the pose step caches its scene inside the photo folder
    common = ["--steps", "10", "--downscale", "4", "--preset", "fast", "--set", "checkpoint_every=10"]
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run1"), "--quiet", *common]) == 0
    err = capsys.readouterr().err
    assert "photos without camera poses" in err and "structure from motion" in err
    scene_dir = (folder / "splatkit_poses").resolve()
    assert (scene_dir / "sfm" / "report.json").is_file()
    config = json.loads((tmp_path / "run1" / "config.json").read_text())
    assert Path(config["data"]) == scene_dir  # eval / render / export find the posed scene
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run2"), *common]) == 0
    assert "poses: reusing" in capsys.readouterr().err
