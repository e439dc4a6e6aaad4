"""The pycolmap side of structure from motion, run in a child process (``python -m splatkit.data.sfm.worker
JOB.json RESULT.json``).

pycolmap is a C++ library whose failed checks abort the whole process (glog ``CHECK``), and whose
vocabulary-tree matcher tries to download a tree when none is given: run here, such a failure ends
this process only, and :mod:`splatkit.data.sfm.runner` turns it into one line. Each job is one
stage (features, matching, mapping, undistortion, triangulation with known poses); its result is a
small JSON file (and an ``.npz`` for point arrays). Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ERROR_PREFIX = "splatkit-sfm-error: "


def _threads(job: dict) -> int:
    return int(job.get("num_threads", -1))


def _camera_mode(pycolmap, job: dict):
    return pycolmap.CameraMode.SINGLE if job.get("single_camera", True) else pycolmap.CameraMode.PER_IMAGE


def extract(job: dict) -> dict:
    """SIFT features into a fresh database; one shared camera unless ``single_camera`` is false."""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = job["camera_model"]
    if job.get("camera_params"):
        reader.camera_params = ",".join(repr(float(v)) for v in job["camera_params"])
    if job.get("focal_factor"):  # focal guess (x longest side) for photos without EXIF focal length
        reader.default_focal_length_factor = float(job["focal_factor"])
    opts = pycolmap.FeatureExtractionOptions()
    opts.num_threads = _threads(job)
    opts.max_image_size = int(job.get("max_image_size", -1))
    opts.sift.max_num_features = int(job.get("max_num_features", 8192))
    opts.sift.domain_size_pooling = bool(job.get("dsp", False))
    opts.sift.estimate_affine_shape = bool(job.get("affine", False))
    if job.get("peak_threshold"):
        opts.sift.peak_threshold = float(job["peak_threshold"])
    pycolmap.extract_features(job["database"], job["image_dir"], image_names=list(job["image_names"]),
                              camera_mode=_camera_mode(pycolmap, job), reader_options=reader,
                              extraction_options=opts, device=pycolmap.Device.cpu)
    for cam in job.get("set_cameras", []):  # known intrinsics per view (triangulation)
        _set_db_camera(pycolmap, job["database"], cam)
    return {"keypoints": _keypoint_counts(pycolmap, job["database"])}


def _set_db_camera(pycolmap, database: str, cam: dict) -> None:
    db = pycolmap.Database.open(database)
    try:
        image = db.read_image_with_name(cam["name"])
        camera = db.read_camera(image.camera_id)
        camera.model = pycolmap.CameraModelId.PINHOLE
        camera.width, camera.height = int(cam["width"]), int(cam["height"])
        camera.params = np.asarray(cam["params"], dtype=np.float64)
        camera.has_prior_focal_length = True
        db.update_camera(camera)
    finally:
        db.close()


def _keypoint_counts(pycolmap, database: str) -> dict:
    db = pycolmap.Database.open(database)
    try:
        return {im.name: int(db.num_keypoints_for_image(im.image_id)) for im in db.read_all_images()}
    finally:
        db.close()


def match(job: dict) -> dict:
    """Exhaustive, sequential or vocabulary-tree matching with geometric verification."""
    import pycolmap

    mopts = pycolmap.FeatureMatchingOptions()
    mopts.num_threads = _threads(job)
    mopts.guided_matching = bool(job.get("guided_matching", False))
    verify = pycolmap.TwoViewGeometryOptions()
    verify.min_num_inliers = int(job.get("min_num_inliers", 15))
    kind = job.get("matching", "exhaustive")
    if kind == "exhaustive":
        pycolmap.match_exhaustive(job["database"], matching_options=mopts, verification_options=verify,
                                  device=pycolmap.Device.cpu)
    elif kind == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = int(job.get("overlap", 10))
        pairing.quadratic_overlap = bool(job.get("quadratic_overlap", True))
        if job.get("vocab_tree"):
            pairing.loop_detection = True
            pairing.vocab_tree_path = str(job["vocab_tree"])
        pycolmap.match_sequential(job["database"], matching_options=mopts, pairing_options=pairing,
                                  verification_options=verify, device=pycolmap.Device.cpu)
    elif kind == "vocabtree":
        # Only with a tree file the user gave: pycolmap downloads one otherwise (and aborts offline).
        pairing = pycolmap.VocabTreePairingOptions()
        pairing.vocab_tree_path = str(job["vocab_tree"])
        pycolmap.match_vocabtree(job["database"], matching_options=mopts, pairing_options=pairing,
                                 verification_options=verify, device=pycolmap.Device.cpu)
    else:
        raise ValueError(f"unknown matching {kind!r}")
    db = pycolmap.Database.open(job["database"])
    try:
        matched = int(db.num_matched_image_pairs())
    finally:
        db.close()
    return {"pairs": _pair_inliers(pycolmap, job["database"]), "matched_pairs": matched}


def _pair_inliers(pycolmap, database: str) -> list:
    """``[name1, name2, verified inliers]`` for every matched pair."""
    db = pycolmap.Database.open(database)
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
        out = []
        for pid, n in zip(pair_ids, counts):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            out.append([names[a], names[b], int(n)])
        return out
    finally:
        db.close()


def _incremental_options(pycolmap, job: dict):
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = _threads(job)
    opts.random_seed = int(job.get("seed", 0))
    opts.mapper.random_seed = int(job.get("seed", 0))
    opts.triangulation.random_seed = int(job.get("seed", 0))
    opts.extract_colors = True
    opts.min_model_size = int(job.get("min_model_size", 3))
    refine_intr = bool(job.get("refine_intrinsics", True))
    opts.ba_refine_focal_length = refine_intr
    opts.ba_refine_extra_params = refine_intr
    opts.ba_refine_principal_point = bool(job.get("refine_principal_point", False))
    opts.mapper.abs_pose_refine_focal_length = refine_intr
    opts.mapper.abs_pose_refine_extra_params = refine_intr
    if job.get("two_view_tracks"):
        opts.triangulation.ignore_two_view_tracks = False
    if job.get("relaxed_init"):
        # COLMAP's defaults (100 inliers, 16 degrees) want a wide, well-textured first pair;
        # few-view captures rarely have one.
        opts.mapper.init_min_num_inliers = 30
        opts.mapper.init_min_tri_angle = 4.0
        opts.mapper.abs_pose_min_num_inliers = 15
        opts.mapper.init_max_reg_trials = 4
    return opts


def _global_options(pycolmap, job: dict):
    opts = pycolmap.GlobalPipelineOptions()
    opts.num_threads = _threads(job)
    seed = int(job.get("seed", 0))
    opts.random_seed = seed
    m = opts.mapper
    m.random_seed = seed
    m.num_threads = _threads(job)
    m.rotation_averaging.random_seed = seed
    m.global_positioning.random_seed = seed
    m.global_positioning.use_gpu = False
    m.bundle_adjustment.ceres.use_gpu = False
    opts.min_model_size = int(job.get("min_model_size", 3))
    refine_intr = bool(job.get("refine_intrinsics", True))
    m.bundle_adjustment.refine_focal_length = refine_intr
    m.bundle_adjustment.refine_extra_params = refine_intr
    m.bundle_adjustment.refine_principal_point = bool(job.get("refine_principal_point", False))
    if job.get("two_view_tracks"):
        m.track_min_num_views_per_track = 2
        m.global_positioning.min_num_view_per_track = 2
        m.bundle_adjustment.min_track_length = 2
        m.retriangulation.ignore_two_view_tracks = False
    return opts


def map_(job: dict) -> dict:
    """Incremental (COLMAP) or global (GLOMAP) mapping; every model written to ``output/N``."""
    import pycolmap

    out = Path(job["output"])
    out.mkdir(parents=True, exist_ok=True)
    pycolmap.set_random_seed(int(job.get("seed", 0)))
    if job.get("mapper", "incremental") == "global":
        models = pycolmap.global_mapping(job["database"], job["image_dir"], str(out),
                                         options=_global_options(pycolmap, job))
    else:
        models = pycolmap.incremental_mapping(job["database"], job["image_dir"], str(out),
                                              options=_incremental_options(pycolmap, job))
    result = []
    for idx, rec in sorted(models.items()):
        if int(job.get("refine_passes", 0)) > 0 and rec.num_reg_images() >= 2:
            _refine(pycolmap, job, rec)
        folder = out / str(idx)
        folder.mkdir(parents=True, exist_ok=True)
        rec.write(str(folder))  # global_mapping writes nothing itself in some versions
        result.append({"index": int(idx), "folder": str(folder), **model_stats(rec)})
    return {"models": result}


def _refine(pycolmap, job: dict, rec) -> None:
    """Extra passes after mapping: complete and merge tracks, retriangulate, then COLMAP's iterative
    global bundle adjustment (more solver iterations), ``refine_passes`` times."""
    iopts = _incremental_options(pycolmap, job)
    tri = iopts.get_triangulation()
    ba = iopts.get_global_bundle_adjustment()
    ba.refine_principal_point = bool(job.get("refine_principal_point", False))
    so = ba.ceres.solver_options  # COLMAP stops at a gradient of 1: tighter here, more iterations
    so.max_num_iterations, so.gradient_tolerance, so.function_tolerance = 300, 1e-10, 1e-10
    db = pycolmap.Database.open(job["database"])
    try:
        cache = pycolmap.DatabaseCache.create(db, pycolmap.DatabaseCacheOptions())
    finally:
        db.close()
    mapper = pycolmap.IncrementalMapper(cache)
    mapper.begin_reconstruction(rec)
    for _ in range(int(job["refine_passes"])):
        mapper.complete_and_merge_tracks(tri)
        mapper.retriangulate(tri)
        mapper.iterative_global_refinement(iopts.ba_global_max_refinements, iopts.ba_global_max_refinement_change,
                                          iopts.get_mapper(), ba, tri, normalize_reconstruction=False)
    mapper.end_reconstruction(False)


def model_stats(rec) -> dict:
    reg = sorted(rec.images[i].name for i in rec.reg_image_ids())
    n_pts = int(rec.num_points3D())
    return {
        "registered": reg,
        "cameras": [[c.model.name, [float(v) for v in c.params]] for _, c in sorted(rec.cameras.items())],
        "num_points": n_pts,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()) if n_pts else None,
        "mean_track_length": float(rec.compute_mean_track_length()) if n_pts else None,
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image()) if reg else None,
    }


def undistort(job: dict) -> dict:
    """Undistort a model's images to PINHOLE cameras (COLMAP's image_undistorter)."""
    import pycolmap

    opts = pycolmap.UndistortCameraOptions()
    pycolmap.undistort_images(job["output"], job["model"], job["image_dir"], output_type="COLMAP",
                              undistort_options=opts, num_threads=_threads(job))
    return {}


def triangulate(job: dict) -> dict:
    """Points from known cameras: features and matches in ``database`` (already made), the given
    poses and intrinsics held fixed, COLMAP's point triangulator; arrays to ``points_npz``."""
    import pycolmap

    db = pycolmap.Database.open(job["database"])
    try:
        by_name = {im.name: im for im in db.read_all_images()}
    finally:
        db.close()
    rec = pycolmap.Reconstruction()
    view_of_image = {}
    for k, v in enumerate(job["views"]):
        dbim = by_name[v["name"]]
        cam = pycolmap.Camera(model="PINHOLE", width=int(v["width"]), height=int(v["height"]),
                              params=np.asarray(v["params"], dtype=np.float64), camera_id=int(dbim.camera_id))
        if not rec.exists_camera(cam.camera_id):
            rec.add_camera_with_trivial_rig(cam)
        image = pycolmap.Image(name=v["name"], camera_id=int(dbim.camera_id), image_id=int(dbim.image_id))
        pose = pycolmap.Rigid3d(np.asarray(v["cam_from_world"], dtype=np.float64))
        rec.add_image_with_trivial_frame(image, pose)
        view_of_image[int(dbim.image_id)] = k
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = _threads(job)
    opts.random_seed = int(job.get("seed", 0))
    opts.triangulation.random_seed = int(job.get("seed", 0))
    if job.get("two_view_tracks", True):
        opts.triangulation.ignore_two_view_tracks = False
    out = Path(job["output"])
    out.mkdir(parents=True, exist_ok=True)
    rec = pycolmap.triangulate_points(rec, job["database"], job["image_dir"], str(out), clear_points=True,
                                      options=opts, refine_intrinsics=False)
    ids = sorted(rec.points3D.keys())
    xyz = np.array([rec.points3D[i].xyz for i in ids], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([rec.points3D[i].color for i in ids], dtype=np.uint8).reshape(-1, 3)
    err = np.array([rec.points3D[i].error for i in ids], dtype=np.float64)
    obs_view, obs_point, obs_xy = [], [], []
    for row, pid in enumerate(ids):
        for el in rec.points3D[pid].track.elements:
            image = rec.images[el.image_id]
            obs_view.append(view_of_image[int(el.image_id)])
            obs_point.append(row)
            obs_xy.append(np.asarray(image.points2D[el.point2D_idx].xy, dtype=np.float64))
    np.savez(job["points_npz"], xyz=xyz, rgb=rgb, reproj_error=err,
             obs_view=np.asarray(obs_view, dtype=np.int64), obs_point=np.asarray(obs_point, dtype=np.int64),
             obs_xy=np.asarray(obs_xy, dtype=np.float64).reshape(-1, 2))
    return {"num_points": len(ids)}


OPS = {"extract": extract, "match": match, "map": map_, "undistort": undistort, "triangulate": triangulate}


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    try:
        result = OPS[job["op"]](job)
    except Exception as exc:  # pycolmap raises ValueError / RuntimeError with a readable message
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        return 3
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
