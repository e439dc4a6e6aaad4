"""``splatkit benchmark``: train, render and score every scene of a sparse-view suite.

Suites and their protocols (``data/splits/``, :mod:`splatkit.eval.protocols`):

* ``dtu`` — pixelNeRF/RegNeRF DTU split: scans found under ``--root`` (IDR layout ``scan{N}/`` or
  ``dtu_scan{N}/``, or the Rectified release), train ids 25, 22, 28, ... (first 3/6/9), the 25
  test ids, 400x300, masked metrics.
* ``llff`` — every 8th image held out, ``round(linspace)`` training views, x8 downsampling.
* ``spare`` — the AIM 2024 SpaRe challenge split files; writes the submission zips as well.
* ``synthetic`` — our generated DTU-like objects with the DTU ids, and depth priors made from the
  ground truth degraded like monocular estimates (:func:`splatkit.priors.depth_sources.degrade_depth`),
  so the whole pipeline runs here without downloads.

Each (scene, method, seed) is one run folder under ``OUT/runs``; a finished run is reused when the
benchmark is started again (an interrupted benchmark loses at most the runs in progress), provided
it trained what this benchmark asks (steps, views, seed, every override; else a clear error). Runs go
to a local process pool (``jobs``: one run at a time on a CPU, one per GPU on CUDA) or, with
``executor="ray"``, one Ray task each on an existing cluster (``address``) or a local Ray instance. Methods
are presets (``configs/NAME.json``). Results: ``OUT/results.json`` (every number, per view), and
``OUT/results.md`` (mean ± std over seeds of the per-scene means averaged over scenes — the mean
of the seeds, never the best run — then the per-scene figures), and ``OUT/images/`` side-by-side
ground truth | render | error pictures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from splatkit.errors import SplatkitError
from splatkit.utils.atomic import write_text_atomic

SUITES = ("dtu", "spare", "llff", "synthetic")
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SIDE_BY_SIDE_VIEWS = 3  # views per run shown in OUT/images
DEFAULT_SYNTHETIC_OBJECTS = (0, 1, 2)
SYNTHETIC_SIZE = (200, 150)  # the synthetic suite's image size (quarter of DTU's pixels: CPU time)
PRIOR_DIR = "depth_prior"  # synthetic suite: degraded priors, kept apart from the ground-truth depth/
SPARE_TRAIN_WIDTH = 400  # SpaRe inputs are 1600x1200: train at DTU's 400x300, render at 1600x1200


@dataclass
class BenchCase:
    """One scene of a suite, with the views the protocol trains and tests on."""

    name: str
    data: Path
    train_ids: list[int]
    test_ids: list[int]
    downscale: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)  # suite-specific config values
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the SpaRe scene record


@dataclass
class BenchmarkSpec:
    suite: str
    out: Path
    root: Optional[Path] = None
    views: int = 3
    scans: Optional[list[str]] = None
    seeds: int = 1
    methods: list[str] = field(default_factory=lambda: ["default", "sparse"])
    steps: Optional[int] = None
    depth_prior: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    split_file: Optional[Path] = None  # SpaRe
    synthetic_size: tuple[int, int] = SYNTHETIC_SIZE
    device: str = "auto"
    quiet: bool = False
    jobs: Optional[int] = None  # local executor: runs at once (default: default_jobs(device))
    executor: str = "local"  # "local" (a process pool) or "ray" (one Ray task per run)
    address: Optional[str] = None  # Ray: the cluster to join (None: start a local Ray instance)
    cpus_per_run: float = 1.0  # Ray: CPUs each run's task asks for
    gpus_per_run: Optional[float] = None  # Ray: GPUs each task asks for (default: 1 when the cluster has GPUs)


# -- suites -------------------------------------------------------------------------------------
def _scan_number(text: str) -> int:
    m = re.fullmatch(r"(?:dtu_)?(?:scan)?(\d+)", str(text))
    if m is None:
        raise SplatkitError(f"--scans takes DTU scan numbers like 8,21,65; got {text!r}")
    return int(m.group(1))


def dtu_cases(root: Path, scans: Optional[Sequence[str]], views: int) -> list[BenchCase]:
    from splatkit.eval.protocols import dtu_protocol

    proto = dtu_protocol()
    train, test = proto.train_views(views), proto.test_views()
    wanted = [_scan_number(s) for s in scans] if scans else list(proto.test_scans)
    cases = []
    for n in wanted:
        folder = _first_dir((root / f"scan{n}", root / f"dtu_scan{n}", root / "Rectified" / f"scan{n}"))
        if folder is None:
            if scans:  # asked for by name: its absence is an error
                raise SplatkitError(f"DTU scan {n} not found under {root} (looked for scan{n}/, dtu_scan{n}/, "
                                    f"Rectified/scan{n}/)")
            continue
        cases.append(BenchCase(name=f"scan{n}", data=folder, train_ids=train, test_ids=test,
                               downscale=_downscale_to(folder, proto.image_size[0])))
    if not cases:
        raise SplatkitError(f"no DTU test scan ({', '.join(map(str, proto.test_scans))}) found under {root}; "
                            "pass --scans N for other scans")
    return cases


def _downscale_to(folder: Path, width: int) -> int:
    """Integer factor that brings the stored images' width down to about ``width`` (DTU and SpaRe
    train at 400x300 whatever size the images are stored at)."""
    from splatkit.data.readers._common import image_size, list_images

    imgs = next((list_images(d) for d in (folder / "image", folder / "images", folder) if list_images(d)), [])
    if not imgs:
        return 1
    w, _ = image_size(imgs[0])
    return max(1, w // width)


def _first_dir(candidates: Sequence[Path]) -> Optional[Path]:
    return next((p for p in candidates if p.is_dir()), None)


def _llff_folder(root: Path, name: str) -> Optional[Path]:
    """The scene's folder: ``root/NAME``, ``root/llff_NAME`` (how ``../shared/data`` names it) or the
    official release's ``root/nerf_llff_data/NAME``."""
    return _first_dir(_llff_candidates(root, name))


def _llff_candidates(root: Path, name: str) -> tuple[Path, ...]:
    return root / name, root / f"llff_{name}", root / "nerf_llff_data" / name


def llff_cases(root: Path, scenes: Optional[Sequence[str]], views: int) -> list[BenchCase]:
    from splatkit.data import load_scene
    from splatkit.eval.protocols import llff_protocol

    proto = llff_protocol()
    names = list(scenes) if scenes else [s for s in proto.scenes if _llff_folder(root, s) is not None]
    if not names:
        raise SplatkitError(f"no LLFF scene ({', '.join(proto.scenes)}) found under {root} "
                            "(looked for NAME/, llff_NAME/, nerf_llff_data/NAME/)")
    cases = []
    for name in names:
        folder = _llff_folder(root, name)
        if folder is None:
            looked = ", ".join(str(p.relative_to(root)) + "/" for p in _llff_candidates(root, name))
            raise SplatkitError(f"LLFF scene {name!r} not found under {root} (looked for {looked})")
        scene = load_scene(folder, downscale=proto.downscale)
        order = np.argsort(scene.names, kind="stable")  # the protocol indexes images sorted by name
        train_pos, test_pos = proto.split(len(scene), views)
        cases.append(BenchCase(name=name, data=folder, downscale=proto.downscale,
                               train_ids=[scene.ids[order[p]] for p in train_pos],
                               test_ids=[scene.ids[order[p]] for p in test_pos]))
    return cases


def synthetic_cases(root: Path, objects: Optional[Sequence[str]], views: int,
                    size: tuple[int, int] = SYNTHETIC_SIZE) -> list[BenchCase]:
    """Generate (once) each object's scene under ``root`` and its degraded depth priors."""
    from splatkit.eval.protocols import dtu_protocol

    proto = dtu_protocol()
    seeds = [int(o) for o in objects] if objects else list(DEFAULT_SYNTHETIC_OBJECTS)
    cases = []
    for seed in seeds:
        folder = root / f"object{seed}_{size[0]}x{size[1]}"
        ensure_synthetic_scene(folder, seed, size)
        cases.append(BenchCase(name=f"object{seed}", data=folder, train_ids=proto.train_views(views),
                               test_ids=proto.test_views(),
                               overrides={"depth_prior_dir": str(folder / PRIOR_DIR),
                                          "depth_prior_kind": "inverse"}))
    return cases


def ensure_synthetic_scene(folder: Path, seed: int, size: tuple[int, int]) -> None:
    """The DTU-like scene plus ``depth_prior/<stem>.png``: 16-bit inverse depth made from the
    ground truth by :func:`degrade_depth` (a fixed seed per object, so every run sees the same
    prior), with the background filled as the farthest value, as a monocular estimate would."""
    from splatkit.data.depth_io import write_depth_png16
    from splatkit.data.synthetic import write_synthetic_scene
    from splatkit.priors.depth_sources import degrade_depth

    if not (folder / "cameras_sphere.npz").is_file():
        write_synthetic_scene(folder, seed=seed, width=size[0], height=size[1])
    prior_dir = folder / PRIOR_DIR
    stems = sorted(p.stem for p in (folder / "depth").glob("*.npy"))
    if prior_dir.is_dir() and all((prior_dir / f"{s}.png").is_file() for s in stems):
        return
    prior_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(10_000 + seed)
    for stem in stems:
        inv = degrade_depth(np.load(folder / "depth" / f"{stem}.npy"), rng)
        far = np.nanmin(inv) if np.isfinite(inv).any() else 0.0
        write_depth_png16(prior_dir / f"{stem}.png", np.where(np.isfinite(inv), inv, far))


def spare_cases(root: Path, split_file: Optional[Path], scenes: Optional[Sequence[str]]) -> list[BenchCase]:
    from splatkit.eval import spare

    if split_file is None:
        raise SplatkitError("--suite spare needs --split-file (Track1_split_development.json or similar)")
    records = spare.read_spare_split(split_file)
    if scenes:
        known = {r.name for r in records}
        missing = [s for s in scenes if s not in known]
        if missing:
            raise SplatkitError(f"scene(s) {missing} not in {split_file}")
        records = [r for r in records if r.name in set(scenes)]
    # Test-view images are hidden (both splits): train on the inputs, render the test cameras.
    return [BenchCase(name=r.name, data=folder, train_ids=list(r.input_views),
                      test_ids=list(r.test_views), downscale=_downscale_to(folder, SPARE_TRAIN_WIDTH),
                      extra={"spare": r, "root": root})
            for r in records for folder in [spare.spare_scene_dir(root, r)]]


def suite_cases(spec: BenchmarkSpec) -> list[BenchCase]:
    if spec.suite not in SUITES:
        raise SplatkitError(f"unknown suite {spec.suite!r} (choose from {', '.join(SUITES)})")
    if spec.suite == "synthetic":
        root = spec.root if spec.root is not None else spec.out / "scenes"
        return synthetic_cases(Path(root), spec.scans, spec.views, spec.synthetic_size)
    if spec.root is None:
        raise SplatkitError(f"--suite {spec.suite} needs --root (the dataset folder)")
    root = Path(spec.root)
    if not root.is_dir():
        raise SplatkitError(f"--root is not a folder: {root}")
    if spec.suite == "dtu":
        return dtu_cases(root, spec.scans, spec.views)
    if spec.suite == "llff":
        return llff_cases(root, spec.scans, spec.views)
    return spare_cases(root, spec.split_file, spec.scans)


# -- running ------------------------------------------------------------------------------------
def _uses_depth(config_values: dict) -> bool:
    from splatkit.methods.plugins import plugin_classes

    classes = plugin_classes()
    return any(classes[r].needs_depth_prior for r in config_values.get("regularizers", []) if r in classes)


def run_config(spec: BenchmarkSpec, case: BenchCase, method: str, seed: int, out: Path):
    """The resolved TrainConfig of one benchmark run."""
    from splatkit.train.config import load_preset, resolve_config

    values: dict[str, Any] = {"data": str(case.data), "downscale": case.downscale,
                              "train_views": case.train_ids, "test_views": case.test_ids,
                              "seed": seed, "out": str(out), "device": spec.device}
    if spec.steps is not None:
        values["steps"] = spec.steps
    preset_values = load_preset(method)
    # Depth priors go only to methods whose preset has depth losses: the suite's prior folder
    # (synthetic) or --depth-prior; the synthetic suite's own priors are used unless told otherwise.
    if _uses_depth({**preset_values, **spec.overrides}):
        prior = spec.depth_prior or ("files" if "depth_prior_dir" in case.overrides else None)
        if prior is not None:
            values["depth_prior"] = prior
            if prior == "files":
                values.update(case.overrides)
    values.update(spec.overrides)
    return resolve_config(values, preset=method)


def _run_done(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "train_summary.json").is_file()


# What a benchmark decides for each of its runs besides the preset's own values: a finished run is
# reused only when its config.json agrees on these (and on every --set value), so a sweep started
# again with other --steps or settings into the same folder never reports the old runs as new ones.
REUSE_KEYS = ("steps", "seed", "train_views", "test_views", "downscale")


def _agrees(wanted: Any, saved: Any) -> bool:
    """``saved`` (a run's config.json value) holds ``wanted``: dicts key by key (a run's plugin
    section may hold more settings than the benchmark set), lists and paths as JSON writes them."""
    if isinstance(wanted, dict):
        return isinstance(saved, dict) and all(_agrees(v, saved.get(k)) for k, v in wanted.items())
    return json.loads(json.dumps(wanted, default=str)) == saved


def stale_reasons(spec: BenchmarkSpec, case: BenchCase, method: str, seed: int, run_dir: Path) -> list[str]:
    """Where the finished run in ``run_dir`` differs from the one this benchmark would train
    (empty when it may be reused)."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        return ["its config.json is missing"]
    saved = json.loads(config_file.read_text())
    wanted = run_config(spec, case, method, seed, run_dir).to_dict()
    checks = {k: wanted[k] for k in REUSE_KEYS}
    checks.update(spec.overrides)
    return [f"{k}: {saved.get(k)!r} in the run, {v!r} asked" for k, v in checks.items() if not _agrees(v, saved.get(k))]


def check_reusable(spec: BenchmarkSpec, case: BenchCase, method: str, seed: int, run_dir: Path) -> None:
    """A clear error instead of silently reusing a finished run of another benchmark."""
    reasons = stale_reasons(spec, case, method, seed, run_dir)
    if reasons:
        raise SplatkitError(f"{run_dir} holds a finished run of another benchmark ({'; '.join(reasons)}): "
                            "give this benchmark its own --out, or delete that folder to train it again")


def run_spare(spec: BenchmarkSpec, case: BenchCase, method: str, seed: int, say) -> dict:
    """SpaRe: train on the input views, render the hidden test views' cameras at 1600x1200 and
    write the scene's submission zip (no scores: the ground truth is not public)."""
    from splatkit.eval import spare
    from splatkit.methods.scoring import render_views, settings_for
    from splatkit.train.trainer import Trainer

    record_scene, root = case.extra["spare"], case.extra["root"]
    run_dir = spec.out / "runs" / case.name / method / f"seed{seed}"
    sub_dir = spec.out / "submission" / f"{method}_seed{seed}"
    zip_path = sub_dir / f"{case.name}.zip"
    if zip_path.is_file() and (run_dir / "train_summary.json").is_file():
        check_reusable(spec, dataclasses.replace(case, test_ids=[]), method, seed, run_dir)
        return {"scene": case.name, "method": method, "seed": seed, "run": str(run_dir), "mean": {},
                "views": [], "submission": str(zip_path), "reused": True}
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    scene = spare.load_spare_scene(root, record_scene, downscale=case.downscale)
    config = run_config(spec, dataclasses.replace(case, test_ids=[]), method, seed, run_dir)
    say(f"[{case.name} | {method} | seed {seed}] training {config.steps} steps on SpaRe input views "
        f"{','.join(map(str, case.train_ids))}")
    trainer = Trainer(config, scene=scene, quiet=True)
    trainer.train()
    cams = spare.spare_test_cameras(root, record_scene, scene.normalization)  # full 1600x1200
    renders = {int(record_scene.test_views[i]): rgb
               for i, rgb, _, _ in render_views(trainer.eval_model(), cams, settings_for(config))}
    path = spare.write_submission(renders, record_scene, sub_dir)
    say(f"[{case.name} | {method} | seed {seed}] wrote {path}")
    return {"scene": case.name, "method": method, "seed": seed, "run": str(run_dir), "mean": {}, "views": [],
            "num_gaussians": trainer.method.num_primitives, "train_time_s": trainer.train_seconds,
            "submission": str(path), "reused": False}


def run_one(spec: BenchmarkSpec, case: BenchCase, method: str, seed: int, say) -> dict:
    """Train (unless already done), evaluate, write pictures; returns the run's record."""
    from splatkit.eval.evaluate import evaluate_run
    from splatkit.train.trainer import Trainer

    if "spare" in case.extra:
        return run_spare(spec, case, method, seed, say)
    run_dir = spec.out / "runs" / case.name / method / f"seed{seed}"
    reused = _run_done(run_dir)
    if reused:
        check_reusable(spec, case, method, seed, run_dir)
    else:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # an unfinished run from an interrupted benchmark
        config = run_config(spec, case, method, seed, run_dir)
        say(f"[{case.name} | {method} | seed {seed}] training {config.steps} steps on views "
            f"{','.join(map(str, case.train_ids))}")
        Trainer(config, quiet=True).train(score=False)  # scored once, by evaluate_run
        evaluate_run(run_dir)
    report = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "train_summary.json").read_text())
    record = {"scene": case.name, "method": method, "seed": seed, "run": str(run_dir),
              "mean": report["mean"], "views": report["views"],
              "lpips_unavailable": report.get("lpips_unavailable"),
              "num_gaussians": summary.get("num_gaussians"), "train_time_s": summary.get("train_time_s"),
              "steps": summary.get("step"),
              "reused": reused}
    record["images"] = write_side_by_side(spec, case, method, seed, run_dir)
    say(f"[{case.name} | {method} | seed {seed}] " + ", ".join(
        f"{k} {v:.4f}" for k, v in report["mean"].items() if v is not None)
        + (" (reused)" if reused else ""))
    return record


def render_test_views(run_dir: Path, limit: Optional[int] = None):
    from splatkit.methods.scoring import render_views, settings_for
    from splatkit.train.run import Run

    run = Run.open(run_dir)
    model, _ = run.load_model()
    scene, ids, positions = run.views("test")
    positions = positions[:limit] if limit else positions
    settings = settings_for(run.config)
    for i, rgb, _, _ in render_views(model, scene.cameras[positions], settings):
        yield ids[i], scene, positions[i], rgb


ERROR_GAIN = 4.0  # error pictures: |render - ground truth| x4, so that small errors are visible


def error_image(rgb: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The error tile of every side-by-side picture."""
    return np.clip(np.abs(rgb - gt) * ERROR_GAIN, 0.0, 1.0)


def write_side_by_side(spec: BenchmarkSpec, case: BenchCase, method: str, seed: int, run_dir: Path) -> list[str]:
    """``OUT/images/<scene>/<method>_seed<k>_view<id>.png``: ground truth | render | |error| x4."""
    from splatkit.data.imageio_utils import write_image

    out = []
    for vid, scene, pos, rgb in render_test_views(run_dir, SIDE_BY_SIDE_VIEWS):
        gt = scene.images[pos]
        err = error_image(rgb, gt)
        path = spec.out / "images" / case.name / f"{method}_seed{seed}_view{vid:03d}.png"
        write_image(path, np.concatenate([gt, rgb, err], axis=1))
        out.append(str(path))
    return out


# -- executors ------------------------------------------------------------------------------------
# Each run is its own folder, seeded by its (scene, method, seed): where it trains does not change
# its numbers, and a finished folder is reused by any executor.
EXECUTORS = ("local", "ray")


def _silent(msg: str) -> None:
    pass


def _print(msg: str) -> None:
    print(msg, flush=True)


def _say(quiet: bool):
    return _silent if quiet else _print  # module functions: they travel to worker processes


def default_jobs(device: str = "auto") -> int:
    """Runs at once on this machine: one per GPU on CUDA, else one (a CPU run already uses every
    core through torch's threads, so parallel runs only split them)."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def _run_task(spec: BenchmarkSpec, case: BenchCase, method: str, seed: int) -> dict:
    return run_one(spec, case, method, seed, _say(spec.quiet))


def _init_worker(slots, threads: int) -> None:
    """A pool worker: its own GPU (one slot each, before torch sees CUDA) and its share of the cores."""
    import os

    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    import torch

    torch.set_num_threads(threads)


def run_tasks(spec: BenchmarkSpec, tasks: Sequence[tuple[BenchCase, str, int]]) -> list[dict]:
    """Every ``(case, method, seed)`` run's record, in ``tasks`` order, on the spec's executor."""
    if spec.executor == "ray":
        return _run_ray(spec, tasks)
    jobs = min(spec.jobs or default_jobs(spec.device), max(1, len(tasks)))
    if jobs == 1:
        return [_run_task(spec, *t) for t in tasks]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    import torch

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads / CUDA
    slots = ctx.Queue()
    gpus = torch.cuda.device_count() if spec.device in ("auto", "cuda") and torch.cuda.is_available() else 0
    for i in range(jobs):
        slots.put(i % gpus if gpus else None)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots, threads)) as pool:
        futures = [pool.submit(_run_task, spec, *t) for t in tasks]
        return [f.result() for f in futures]


def _run_ray(spec: BenchmarkSpec, tasks: Sequence[tuple[BenchCase, str, int]]) -> list[dict]:
    """One Ray task per run on the cluster at ``spec.address`` (a local Ray instance without one).
    The data and ``OUT`` folders must be at the same paths on every node (a shared file system)."""
    try:
        import ray
    except ImportError:
        raise SplatkitError("--executor ray needs Ray, an optional extra: pip install 'splatkit[ray]' "
                            "(or use the local executor, --jobs N)") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=spec.address, include_dashboard=False, log_to_driver=not spec.quiet, logging_level="ERROR")
    try:
        gpus = spec.gpus_per_run
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 and spec.device != "cpu" else 0.0
        task = ray.remote(_run_task).options(num_cpus=spec.cpus_per_run, num_gpus=gpus)
        return ray.get([task.remote(spec, *t) for t in tasks])
    finally:
        if started:
            ray.shutdown()


# -- aggregation --------------------------------------------------------------------------------
def primary_metrics(records: list[dict]) -> list[str]:
    """Masked metrics when the scenes have masks (DTU protocol), else the plain ones."""
    keys = set()
    for r in records:
        keys |= {k for k, v in r["mean"].items() if v is not None}
    masked = [k for k in ("masked_psnr", "masked_ssim", "masked_lpips") if k in keys]
    return masked or [k for k in ("psnr", "ssim", "lpips") if k in keys]


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else 0.0


def aggregate(records: list[dict], methods: Sequence[str]) -> dict:
    """Per method: for each seed the mean over scenes of the per-scene (per-view-averaged) metric,
    then mean ± std over seeds; and per (scene, method) mean ± std over seeds."""
    metrics = primary_metrics(records)
    scenes = list(dict.fromkeys(r["scene"] for r in records))
    out = {"metrics": metrics, "methods": {}, "per_scene": {}}
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        seeds = sorted({r["seed"] for r in rows})
        entry = {}
        for k in metrics:
            per_seed = []
            for s in seeds:
                vals = [r["mean"].get(k) for r in rows if r["seed"] == s]
                vals = [v for v in vals if v is not None]
                if len(vals) == len(scenes):  # a seed counts once every scene has it
                    per_seed.append(float(np.mean(vals)))
            entry[k] = dict(zip(("mean", "std"), _mean_std(per_seed)), seeds=len(per_seed))
        times = [r["train_time_s"] for r in rows if r.get("train_time_s") is not None]
        entry["train_time_s"] = float(np.mean(times)) if times else None
        out["methods"][m] = entry
        for sc in scenes:
            srows = [r for r in rows if r["scene"] == sc]
            out["per_scene"].setdefault(sc, {})[m] = {
                k: dict(zip(("mean", "std"), _mean_std([r["mean"].get(k) for r in srows]))) for k in metrics}
    return out


def _fmt(entry: dict, key: str) -> str:
    mean, std = entry.get("mean"), entry.get("std")
    if mean is None:
        return "-"
    digits = 2 if key.endswith("psnr") else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(result: dict) -> str:
    agg = result["aggregate"]
    metrics = agg["metrics"]
    spec = result["spec"]
    lines = [f"Suite `{spec['suite']}`, {spec['views']} training views, {spec['seeds']} seed(s); "
             f"mean ± std over seeds of the mean over {len(agg['per_scene'])} scene(s).", ""]
    head = ["method"] + [k.replace("_", " ") for k in metrics] + ["train time (s)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, entry in agg["methods"].items():
        t = entry.get("train_time_s")
        lines.append("| " + " | ".join([f"`{m}`"] + [_fmt(entry[k], k) for k in metrics]
                                       + ["-" if t is None else f"{t:.0f}"]) + " |")
    if result.get("lpips_unavailable"):
        lines += ["", f"LPIPS: not computed ({result['lpips_unavailable']})."]
    lines += ["", "Per scene (mean ± std over seeds):", ""]
    head = ["scene", "method"] + [k.replace("_", " ") for k in metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc, per in agg["per_scene"].items():
        for m, entry in per.items():
            lines.append("| " + " | ".join([sc, f"`{m}`"] + [_fmt(entry[k], k) for k in metrics]) + " |")
    return "\n".join(lines) + "\n"


def run_benchmark(spec: BenchmarkSpec) -> dict:
    """Run every (scene, method, seed); write ``results.json`` and ``results.md``; return the result."""
    import splatkit
    from splatkit.train.config import preset_path

    if spec.seeds < 1:
        raise SplatkitError(f"--seeds must be >= 1, got {spec.seeds}")
    if not spec.methods:
        raise SplatkitError("no methods (presets) to run")
    for m in spec.methods:
        preset_path(m)  # unknown preset: fail before any training
    if spec.executor not in EXECUTORS:
        raise SplatkitError(f"unknown executor {spec.executor!r} (choose from {', '.join(EXECUTORS)})")
    if spec.jobs is not None and spec.jobs < 1:
        raise SplatkitError(f"--jobs must be >= 1, got {spec.jobs}")
    if spec.executor != "ray" and spec.address is not None:
        raise SplatkitError("--address names a Ray cluster: it goes with --executor ray")
    if spec.executor == "ray" and spec.jobs is not None:
        raise SplatkitError("--jobs sizes the local process pool; Ray runs as many tasks as its resources allow "
                            "(--cpus-per-run, --gpus-per-run)")
    if not spec.cpus_per_run > 0 or (spec.gpus_per_run is not None and spec.gpus_per_run < 0):
        raise SplatkitError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    spec.out = Path(spec.out).resolve()  # workers (other processes, Ray nodes) see the same folder
    say = _say(spec.quiet)
    cases = suite_cases(spec)
    tasks = [(case, method, seed) for case in cases for method in spec.methods for seed in range(spec.seeds)]
    records = run_tasks(spec, tasks)
    if spec.suite == "spare":  # the single archive the challenge takes, per method and seed
        from splatkit.eval import spare

        for method in spec.methods:
            for seed in range(spec.seeds):
                path = spare.pack_submission(spec.out / "submission" / f"{method}_seed{seed}",
                                             [c.extra["spare"] for c in cases])
                say(f"submission for {method}, seed {seed}: {path}")
    lpips_reason = next((r["lpips_unavailable"] for r in records if r.get("lpips_unavailable")), None)
    result = {
        "splatkit_version": splatkit.__version__,
        "spec": {"suite": spec.suite, "root": None if spec.root is None else str(spec.root),
                 "views": spec.views, "scans": spec.scans, "seeds": spec.seeds, "methods": spec.methods,
                 "steps": spec.steps, "depth_prior": spec.depth_prior, "overrides": spec.overrides},
        "scenes": [{"name": c.name, "data": str(c.data), "train_ids": c.train_ids, "test_ids": c.test_ids}
                   for c in cases],
        "lpips_unavailable": lpips_reason,
        "runs": records,
        "aggregate": aggregate(records, spec.methods),
    }
    spec.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec.out / RESULTS_JSON, json.dumps(result, indent=2, allow_nan=False) + "\n")
    write_text_atomic(spec.out / RESULTS_MD, markdown_table(result))
    result["markdown"] = markdown_table(result)
    return result
