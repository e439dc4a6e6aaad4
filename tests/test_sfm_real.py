"""Structure from motion on small subsets of the real data in ../shared/data (skipped when absent):
DTU scan 65's poses recovered against its calibrated ones, Sceaux castle photos registered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splatkit.data import load_scene
from splatkit.data.sfm import PoseOptions, recover_poses
from splatkit.data.sfm.evaluate import pose_errors

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCAN = DATA / "dtu_scan65"
SCEAUX = DATA / "sceaux_castle_unposed"

pytestmark = pytest.mark.realdata


def _links(src: Path, names: list[str], dst: Path) -> Path:
    dst.mkdir(parents=True)
    for n in names:
        (dst / n).symlink_to(src / n)
    return dst


@pytest.mark.skipif(not (SCAN / "cameras_sphere.npz").is_file(),
                    reason=f"real DTU scan not available at {SCAN} (it lives in ../shared/data beside the repo)")
def test_dtu_scan65_row_of_views_matches_the_calibration(tmp_path):
    known = load_scene(SCAN)
    ids = list(range(12, 24))  # DTU's second row of camera positions: neighbours overlap well
    photos = _links(SCAN / "image", [f"{i:06d}.png" for i in ids], tmp_path / "photos")
    K = known.cameras.Ks.mean(axis=0)
    res = recover_poses(photos, tmp_path / "scene", PoseOptions(intrinsics=f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}",
                                                               mapper="incremental"), say=lambda s: None)
    assert len(res.registered) == len(ids), res.report["not_registered"]
    scene = load_scene(res.scene_dir)
    pos = known.index_of([int(n) for n in scene.names])
    e = pose_errors(scene.cameras.camtoworlds, known.cameras.camtoworlds[pos])
    assert e.mean_rotation_deg < 0.5 and e.mean_center_pct < 1.0, (e.rotation_deg, e.center_pct)


@pytest.mark.skipif(not (SCEAUX / "images").is_dir(),
                    reason=f"Sceaux photos not available at {SCEAUX} (they live in ../shared/data beside the repo)")
def test_sceaux_photos_register_with_their_k_file(tmp_path):
    names = sorted(p.name for p in (SCEAUX / "images").iterdir())[3:8]
    _links(SCEAUX / "images", names, tmp_path / "castle" / "images")
    (tmp_path / "castle" / "K.txt").symlink_to(SCEAUX / "K.txt")
    with pytest.warns(UserWarning, match="only 5 photos"):
        # Only images_8: x2 and x4 copies of 2832x2128 photos cost seconds.
        opts = PoseOptions(max_image_size=640, dsp=False, affine=False, downscales=(8,))
        res = recover_poses(tmp_path / "castle", tmp_path / "scene", opts, say=lambda s: None)
    assert res.report["settings"]["camera_model"] == "PINHOLE"
    assert sorted(res.registered) == names
    assert res.report["mean_reprojection_error"] < 1.5
    scene = load_scene(res.scene_dir, downscale=8)
    assert scene.image_size == (354, 266) and np.isclose(scene.cameras.Ks[0, 0, 0], 2905.88 / 8)


@pytest.mark.skipif(not (SCAN / "cameras_sphere.npz").is_file(),
                    reason=f"real DTU scan not available at {SCAN} (it lives in ../shared/data beside the repo)")
def test_dtu_points_triangulated_with_the_calibrated_cameras_reproject_onto_their_pixels():
    from splatkit.data.sfm import triangulate_known_poses

    scene = load_scene(SCAN)  # its decomposed projections carry ~1e-4 px of skew, dropped
    tp = triangulate_known_poses(scene, [12, 13, 14, 15])
    assert len(tp) > 150
    for v, (ids, px) in tp.observations.items():
        uv, z = scene.cameras[[v]].project(tp.xyz[ids])
        assert np.all(z > 0) and np.median(np.linalg.norm(uv[0] - px, axis=1)) < 0.5
    # The skull sits inside DTU's unit object sphere, which the reader maps to the unit sphere.
    assert np.median(np.linalg.norm(tp.xyz, axis=1)) < 1.0
