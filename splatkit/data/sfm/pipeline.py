"""``splatkit data poses``: a folder of photos -> a COLMAP scene folder splatkit trains on.

The habits of nerfstudio's ``ns-process-data`` and 3DGS's ``convert.py``: SIFT features, matching,
mapping (COLMAP's incremental mapper or GLOMAP's global one, both inside pycolmap), undistortion to
PINHOLE cameras, ``images_2/4/8`` downscales. The output folder holds

* ``images/`` (undistorted), ``sparse/0/`` (PINHOLE cameras, the largest model), ``images_N/``;
* ``sfm/``: the database, every model the mapper made, ``sfm.log`` (pycolmap's output) and the pose
  report (``report.json``, ``report.md``, ``cameras.png``, ``cameras.html``; see
  :mod:`splatkit.data.sfm.report`). ``report.json`` is written last and records what the result
  was made from, so a second run on the same photos and settings reuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from splatkit.data.sfm.photos import colmap_camera, find_k_file, parse_intrinsics, photo_files
from splatkit.errors import DataError, SplatkitError

# Below this many photos default SfM often registers nothing (issue #17: DTU scan 65 with 3 views
# fails with every standard setting); the few-view settings and a warning apply.
FEW_VIEWS = 10
MATCHINGS = ("exhaustive", "sequential", "vocabtree")
MAPPERS = ("incremental", "global")
DOWNSCALES = (2, 4, 8)
# SIFT's peak (contrast) threshold for small photos: COLMAP's 0.0067 finds ~375 features on a 400x300
# DTU view, 0.002 three times more, and the photos-only errors on DTU scan 65 (49 views) drop from
# 0.56 deg / 0.40% to 0.44 deg / 0.29% (fern: no worse; docs/benchmarks.md, bench_sfm). Large photos
# keep COLMAP's threshold: they have features to spare (Sceaux castle at 1600 px: the same result,
# only more features to extract and match).
SMALL_PHOTO_SIDE = 1000  # longest side SIFT sees (after --max-image-size), pixels
SMALL_PHOTO_PEAK_THRESHOLD = 0.002
COLMAP_PEAK_THRESHOLD = 0.0067
REPORT_NAME = "report.json"
SFM_DIR = "sfm"
# Bump when the output layout or the meaning of an option changes: old caches are then rebuilt.
CACHE_VERSION = 1


@dataclass
class PoseOptions:
    """How :func:`recover_poses` runs (``splatkit data poses`` flags; ``None`` = decided from the photos)."""

    matching: str = "exhaustive"
    vocab_tree: Optional[str] = None  # a tree file (vocabtree matching, sequential loop detection)
    # Sequential matching: each photo is matched with the next ``overlap`` ones; with quadratic_overlap
    # (COLMAP's default) with those 1, 2, 4, ..., 2**(overlap - 1) further on instead.
    overlap: int = 10
    quadratic_overlap: bool = True
    mapper: Optional[str] = None  # incremental | global; None: global below FEW_VIEWS photos, else incremental
    intrinsics: Optional[str] = None  # "fx,fy,cx,cy[,k...]", a K file, "none"; None: a K.txt beside the photos
    refine_intrinsics: Optional[bool] = None  # None: refined when unknown, held fixed when given
    refine_principal_point: bool = False
    camera_model: Optional[str] = None  # unknown intrinsics: COLMAP camera model (None: SIMPLE_RADIAL)
    focal_factor: Optional[float] = None  # unknown intrinsics, no EXIF: first focal guess x longest side (COLMAP: 1.2)
    single_camera: bool = True
    max_image_size: int = 1600  # SIFT runs on photos resized to this longest side (keypoints in full pixels)
    max_num_features: int = 8192
    few_views: Optional[bool] = None  # None: below FEW_VIEWS photos
    two_view_tracks: Optional[bool] = None
    relaxed_init: Optional[bool] = None
    dsp: Optional[bool] = None  # DSP-SIFT (domain-size pooling)
    affine: Optional[bool] = None  # affine-covariant SIFT shapes
    peak_threshold: Optional[float] = None  # SIFT peak threshold; None: 0.002 for small photos, else COLMAP's 0.0067
    guided_matching: bool = False  # match again guided by the verified two-view geometry
    # After mapping: complete/merge tracks, retriangulate and a tighter global bundle adjustment, this
    # many times (measured: no change on DTU 65 or fern; COLMAP's own final refinement has converged).
    refine_passes: int = 0
    min_num_inliers: int = 15
    downscales: tuple[int, ...] = DOWNSCALES
    seed: int = 0
    num_threads: int = -1

    def check(self) -> None:
        if self.matching not in MATCHINGS:
            raise SplatkitError(f"--matching must be one of {', '.join(MATCHINGS)}, got {self.matching!r}")
        if self.mapper is not None and self.mapper not in MAPPERS:
            raise SplatkitError(f"--mapper must be one of {', '.join(MAPPERS)}, got {self.mapper!r}")
        if self.matching == "vocabtree" and not self.vocab_tree:
            raise SplatkitError("--matching vocabtree needs --vocab-tree FILE (pycolmap would try to download one)")
        if self.vocab_tree and not Path(self.vocab_tree).is_file():
            raise DataError("vocabulary tree file not found", self.vocab_tree)
        if self.max_image_size != -1 and self.max_image_size < 64:
            raise SplatkitError(f"--max-image-size must be -1 (full size) or >= 64, got {self.max_image_size}")
        if any(int(d) < 2 for d in self.downscales):
            raise SplatkitError(f"downscale factors must be >= 2, got {list(self.downscales)}")
        if self.peak_threshold is not None and not 0 < self.peak_threshold < 1:
            raise SplatkitError(f"--peak-threshold must be between 0 and 1, got {self.peak_threshold}")
        if self.focal_factor is not None and not self.focal_factor > 0:
            raise SplatkitError(f"--focal-factor must be > 0, got {self.focal_factor}")
        if self.refine_passes < 0:
            raise SplatkitError(f"--refine-passes must be >= 0, got {self.refine_passes}")
        if self.overlap < 1 or self.min_num_inliers < 5 or self.max_num_features < 100:
            raise SplatkitError("--overlap >= 1, --min-num-inliers >= 5 and --max-num-features >= 100 are needed")


@dataclass
class PoseResult:
    scene_dir: Path
    report: dict
    reused: bool = False

    @property
    def registered(self) -> list[str]:
        return list(self.report["registered"])


Say = Callable[[str], None]


def _listed(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _readable(photos: list[Path]) -> list[Path]:
    """The photos whose headers decode; the others are named in a warning and left out (a stray
    text file called .jpg should not end the run, nor reach COLMAP, which skips it silently)."""
    from splatkit.data.readers._common import image_size

    bad = []
    for p in photos:
        try:
            image_size(p)
        except DataError:
            bad.append(p)
    if bad:
        warnings.warn(f"{len(bad)} of {len(photos)} files are not readable images and are left out: "
                      f"{_listed([p.name for p in bad])}", stacklevel=3)
    return [p for p in photos if p not in bad]


def _sift_side(photos: list[Path], max_image_size: int) -> int:
    """The longest side SIFT sees: the largest photo's, capped at ``max_image_size`` (headers only)."""
    from PIL import Image

    side = 0
    for p in photos:
        try:
            with Image.open(p) as im:
                side = max(side, *im.size)
        except OSError:
            continue  # unreadable: feature extraction reports it
    return min(side, max_image_size) if max_image_size > 0 else side


def _resolve(options: PoseOptions, image_dir: Path, photos: list[Path], say: Say) -> dict:
    """The settings actually used, every ``None`` decided."""
    n = len(photos)
    o = asdict(options)
    if o["peak_threshold"] is None:
        small = _sift_side(photos, options.max_image_size) <= SMALL_PHOTO_SIDE
        o["peak_threshold"] = SMALL_PHOTO_PEAK_THRESHOLD if small else COLMAP_PEAK_THRESHOLD
    few = n < FEW_VIEWS if options.few_views is None else bool(options.few_views)
    o["few_views"] = few
    for key in ("two_view_tracks", "relaxed_init", "dsp", "affine"):
        if o[key] is None:
            o[key] = few
    if o["mapper"] is None:
        # Measured on DTU scan 65 (docs/benchmarks.md, bench_sfm): with 6 and 9 views only the
        # global mapper registered every view.
        o["mapper"] = "global" if few else "incremental"
    intr, source = options.intrinsics, None
    if intr is None:
        kf = find_k_file(image_dir)
        if kf is not None:
            intr, source = str(kf), str(kf)
    elif str(intr).lower() == "none":
        intr = None
    else:
        source = intr
    if intr is not None:
        model, params = colmap_camera(parse_intrinsics(intr))
        say(f"known intrinsics from {source}: {model} {', '.join(f'{p:g}' for p in params)}"
            f" ({'refined' if options.refine_intrinsics else 'held fixed'})")
    else:
        # COLMAP's default: focal length from EXIF or a guess (--focal-factor x longest side)
        model, params = options.camera_model or "SIMPLE_RADIAL", []
    o["camera_model"], o["camera_params"] = model, params
    o["refine_intrinsics"] = (intr is None) if options.refine_intrinsics is None else bool(options.refine_intrinsics)
    o["downscales"] = [int(d) for d in options.downscales]
    return o


def _fingerprint(photos: list[Path], settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "settings": settings}, sort_keys=True).encode())
    for p in photos:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached_result(out: Path, key: str) -> Optional[dict]:
    rep = Path(out) / SFM_DIR / REPORT_NAME
    if not rep.is_file():
        return None
    try:
        report = json.loads(rep.read_text())
    except ValueError:
        return None
    if report.get("cache_key") != key or not (Path(out) / "sparse" / "0").is_dir():
        return None
    return report


def _prepare_out(out: Path) -> None:
    """An absent or empty folder, or one a previous pose run wrote (whose outputs are replaced)."""
    if out.exists() and not out.is_dir():
        raise DataError("output path exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / SFM_DIR).is_dir():
            raise DataError("output folder is not empty and was not written by 'splatkit data poses'; "
                            "choose a new folder", out)
        for child in out.iterdir():
            if child.name in ("images", "sparse", SFM_DIR) or child.name.startswith("images_"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _why_not(name: str, keypoints: dict, pairs: list, registered: set, other_models: dict, min_inliers: int) -> str:
    k = keypoints.get(name, 0)
    if k < min_inliers:
        return f"only {k} SIFT features (too little texture, or an unreadable photo)"
    if name in other_models:
        return f"registered in a separate model of {other_models[name]} photos with no link to the largest"
    mine = [(n, b if a == name else a) for a, b, n in pairs if name in (a, b)]
    best = max(mine, default=(0, ""))
    if best[0] < min_inliers:
        return (f"{'no' if not mine else f'at most {best[0]}'} verified matches with any other photo (needs "
                f"{min_inliers}): no overlap, or the views differ too much")
    placed = max(((n, o) for n, o in mine if o in registered), default=(0, ""))
    if placed[0] < min_inliers:
        return (f"matched only photos that did not register either ({best[0]} inliers with {best[1]}; "
                f"{placed[0]} with any registered photo)")
    return (f"{placed[0]} verified matches with registered photo {placed[1]}, but too few of them see "
            "triangulated points for the mapper to place it")


def recover_poses(images: str | Path, out: str | Path, options: Optional[PoseOptions] = None, *,
                  say: Optional[Say] = None, reuse: bool = True) -> PoseResult:
    """Camera poses for a folder of photos; writes the COLMAP scene folder ``out`` (module doc).

    ``say`` receives one line per stage (``print`` by default). With ``reuse`` a previous result in
    ``out`` made from the same photos and settings is returned as it is.
    """
    from splatkit.data.sfm.runner import run_stage

    options = options or PoseOptions()
    options.check()
    say = say or print
    image_dir, photos = photo_files(Path(images))
    photos = _readable(photos)
    if len(photos) < 2:
        raise DataError("structure from motion needs a folder with at least two readable photos (.jpg, .png, ...)", images)
    out = Path(out)
    if image_dir.resolve() in (out.resolve(), (out / "images").resolve()):
        raise DataError("--out must not be the photo folder itself (undistorted images go to OUT/images)", out)
    settings = _resolve(options, image_dir, photos, say)
    key = _fingerprint(photos, settings)
    if reuse:
        report = cached_result(out, key)
        if report is not None:
            say(f"poses: reusing {out} ({len(report['registered'])} of {report['num_photos']} photos registered)")
            return PoseResult(out, report, reused=True)
    if len(photos) < FEW_VIEWS:
        on = [label for key, label in (("two_view_tracks", "two-view tracks"), ("relaxed_init", "relaxed initial pair"),
                                       ("dsp", "DSP-SIFT"), ("affine", "affine shapes")) if settings[key]]
        hint = "" if settings["camera_params"] else "; known intrinsics (--intrinsics or a K.txt) help most"
        warnings.warn(f"only {len(photos)} photos: structure from motion is unreliable below {FEW_VIEWS} (it may "
                      f"register few or none); using the {settings['mapper']} mapper"
                      f"{' with ' + ', '.join(on) if on else ''}{hint}", stacklevel=2)
    _prepare_out(out)
    sfm = out / SFM_DIR
    sfm.mkdir()
    names = [p.name for p in photos]
    common = {"database": str(sfm / "database.db"), "image_dir": str(image_dir),
              "num_threads": settings["num_threads"], "seed": settings["seed"]}
    times = {}
    t_all = time.time()

    size = settings["max_image_size"]
    say(f"[1/5] features: SIFT on {len(names)} photos"
        f"{f' resized to at most {size} px' if size > 0 else ''}{', DSP-SIFT' if settings['dsp'] else ''}"
        f"{', affine shapes' if settings['affine'] else ''} ...")
    res = run_stage("extract", {**common, **{k: settings[k] for k in (
        "camera_model", "camera_params", "single_camera", "max_image_size", "max_num_features", "dsp", "affine",
        "focal_factor", "peak_threshold")},
        "image_names": names}, sfm, label="feature extraction")
    keypoints = res["keypoints"]
    if len(keypoints) < 2:  # COLMAP skips photos its decoder cannot read, without failing
        raise DataError(f"feature extraction read {len(keypoints)} of {len(names)} photos (COLMAP could not decode "
                        f"the others: {_listed(sorted(set(names) - set(keypoints)))})", image_dir)
    times["features"] = res["seconds"]
    say(f"      {res['seconds']:.1f} s, median {int(np.median(list(keypoints.values())))} features per photo")

    say(f"[2/5] matching: {settings['matching']} ...")
    res = run_stage("match", {**common, **{k: settings[k] for k in ("matching", "vocab_tree", "overlap",
                                                                      "quadratic_overlap", "min_num_inliers",
                                                                      "guided_matching")}},
                    sfm, label="feature matching")
    times["matching"] = res["seconds"]
    pairs = res["pairs"]
    matched_pairs = res.get("matched_pairs")
    pair_best: dict[str, tuple[int, str]] = {}
    verified = 0
    for a, b, n in res["pairs"]:
        verified += n >= settings["min_num_inliers"]
        for x, y in ((a, b), (b, a)):
            if n > pair_best.get(x, (-1, ""))[0]:
                pair_best[x] = (n, y)
    say(f"      {res['seconds']:.1f} s, {verified} verified photo pairs")

    say(f"[3/5] mapping: {settings['mapper']} ({'GLOMAP' if settings['mapper'] == 'global' else 'COLMAP'}) ...")

    def run_map(relaxed: bool, folder: str) -> tuple[list, float]:
        job = {**common, **{k: settings[k] for k in ("mapper", "refine_intrinsics", "refine_principal_point",
                                                     "refine_passes")},
               "two_view_tracks": settings["two_view_tracks"] or relaxed, "relaxed_init": settings["relaxed_init"] or relaxed,
               "min_model_size": 2 if settings["few_views"] else 3, "output": str(sfm / folder)}
        r = run_stage("map", job, sfm, label=f"{settings['mapper']} mapping")
        return sorted(r["models"], key=lambda m: (len(m["registered"]), m["num_points"]), reverse=True), r["seconds"]

    models, times["mapping"] = run_map(False, "models")
    settings["relaxed_retry"] = None
    n_reg = len(models[0]["registered"]) if models else 0
    if n_reg < len(names) and options.relaxed_init is None and options.two_view_tracks is None \
            and not (settings["relaxed_init"] and settings["two_view_tracks"]):
        # Small or low-texture photos often miss COLMAP's default initial-pair thresholds by a little;
        # one more mapping run (features and matches reused) with the few-view ones is cheap.
        say(f"      {n_reg} of {len(names)} registered; mapping again with a relaxed initial pair and two-view tracks ...")
        relaxed, secs = run_map(True, "models_relaxed")
        times["mapping"] += secs
        better = relaxed and len(relaxed[0]["registered"]) > n_reg
        settings["relaxed_retry"] = "kept" if better else "not better"
        if better:
            models = relaxed
            settings["relaxed_init"] = settings["two_view_tracks"] = True
    if not models or len(models[0]["registered"]) < 2:
        best = max((n for n, _ in pair_best.values()), default=0)
        other = "incremental" if settings["mapper"] == "global" else "global"
        # 3 DTU views without intrinsics register at COLMAP's threshold (if badly) but not at the small-photo one
        peak = f", --peak-threshold {COLMAP_PEAK_THRESHOLD}" if settings["peak_threshold"] < COLMAP_PEAK_THRESHOLD else ""
        raise SplatkitError(f"structure from motion registered no photos ({len(photos)} photos, best pair "
                            f"{best} verified matches); try --intrinsics (or a K.txt), --mapper {other}{peak} or more "
                            f"overlapping photos (log: {sfm / 'sfm.log'})")
    main_model = models[0]
    other_models = {n: len(m["registered"]) for m in models[1:] for n in m["registered"]}
    say(f"      {times['mapping']:.1f} s, {len(main_model['registered'])} of {len(names)} photos registered"
        f"{f' (kept the largest of {len(models)} models)' if len(models) > 1 else ''}")

    say("[4/5] undistorting to PINHOLE cameras ...")
    und = sfm / "undistorted"
    res = run_stage("undistort", {**common, "model": main_model["folder"], "output": str(und)}, sfm,
                    label="undistortion")
    times["undistortion"] = res["seconds"]
    (out / "sparse").mkdir()
    shutil.move(str(und / "sparse"), str(out / "sparse" / "0"))
    shutil.move(str(und / "images"), str(out / "images"))
    shutil.rmtree(und)

    t0 = time.time()
    say(f"[5/5] downscaled copies {', '.join(f'images_{d}' for d in settings['downscales'])} and the pose report ...")
    write_downscales(out, settings["downscales"])
    times["downscales"] = time.time() - t0
    times["total"] = time.time() - t_all

    from splatkit.data.sfm.report import write_report

    report = {
        "cache_key": key,
        "photos": str(image_dir.resolve()),
        "num_photos": len(names),
        "registered": main_model["registered"],
        "not_registered": {n: _why_not(n, keypoints, pairs, set(main_model["registered"]), other_models,
                                       settings["min_num_inliers"])
                           for n in names if n not in set(main_model["registered"])},
        "other_models": [m["registered"] for m in models[1:]],
        "matched_pairs": matched_pairs,  # photo pairs whose features were matched
        "verified_pairs": int(verified),
        "camera_estimate": main_model.get("cameras"),  # the mapper's cameras before undistortion
        "num_points": main_model["num_points"],
        "mean_reprojection_error": main_model["mean_reprojection_error"],
        "mean_track_length": main_model["mean_track_length"],
        "mean_observations_per_image": main_model["mean_observations_per_image"],
        "features_per_photo": keypoints,
        "seconds": times,
        "settings": settings,
    }
    write_report(out, report)
    return PoseResult(out, report)


def write_downscales(out: Path, factors) -> None:
    """``images_d/`` beside ``images/``: each photo resized over the whole frame to ``round(size / d)``
    (the resize the COLMAP reader's intrinsics fit assumes), same file type."""
    from splatkit.data.imageio_utils import read_image_raw, resize_image, to_float01, write_image
    from splatkit.data.readers._common import list_images

    src = out / "images"
    for path in list_images(src):
        img = to_float01(read_image_raw(path))
        h, w = img.shape[:2]
        for d in factors:
            small = resize_image(img, max(1, round(w / d)), max(1, round(h / d)))
            write_image(out / f"images_{d}" / path.name, small)


def pose_cache_dir(photo_root: Path) -> Path:
    """Where ``splatkit train --data PHOTOS`` keeps the pose step's scene: ``PHOTOS/splatkit_poses``
    when that folder can be written, else under ``~/.cache/splatkit/poses`` (read-only photo folders)."""
    import os

    photo_root = Path(photo_root).resolve()
    if os.access(photo_root, os.W_OK):
        return photo_root / "splatkit_poses"
    digest = hashlib.sha256(str(photo_root).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "splatkit" / "poses"
    return base / f"{photo_root.name}-{digest}"
