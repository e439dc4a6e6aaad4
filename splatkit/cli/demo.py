"""``splatkit demo``: the whole pipeline on the default synthetic scene, end to end.

1. ``OUT/scene``: the synthetic DTU-like scene (seed 0, 200x150, 49 views), reused when present;
2. ``OUT/run``: a ``fast``-preset training run holding out every 8th view for testing;
3. ``OUT/run/metrics.json``, ``OUT/run/renders/test/``, ``OUT/run/renders/orbit.mp4`` and
   ``OUT/run/export/splats.ply``;
4. a short summary with the test PSNR/SSIM, the training time and those paths.

Each step is a function of its own (:func:`prepare_scene`, :func:`train_demo`,
:func:`finish_run`) so tests can run them separately.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from splatkit.errors import SplatkitError

SCENE_SEED = 0
SCENE_WIDTH, SCENE_HEIGHT = 200, 150
SCENE_VIEWS = 49
HOLD_EVERY = 8
PRESET = "fast"
ORBIT_FRAMES = 120  # 4 s at 30 fps


@dataclass
class DemoResult:
    scene: Path
    run: Path
    train_seconds: Optional[float]
    metrics_path: Path
    mean: dict
    lpips_unavailable: Optional[str]
    renders: Path
    video: Path
    video_note: Optional[str]
    ply: Path
    num_gaussians: int


def prepare_scene(scene_dir: Path) -> Path:
    """Write the synthetic scene into ``scene_dir`` unless a readable scene is already there."""
    from splatkit.data import detect_format
    from splatkit.data.synthetic import write_synthetic_scene

    scene_dir = Path(scene_dir)
    if scene_dir.exists() and any(scene_dir.iterdir()):
        try:
            detect_format(scene_dir)
        except SplatkitError:
            raise SplatkitError("exists but is not a dataset splatkit can read; remove it or choose "
                                "another --out", scene_dir) from None
        return scene_dir
    return Path(write_synthetic_scene(scene_dir, seed=SCENE_SEED, width=SCENE_WIDTH,
                                      height=SCENE_HEIGHT, n_views=SCENE_VIEWS))


def demo_split(scene_dir: Path) -> tuple[list[int], list[int]]:
    """Train/test view ids: every 8th view (in the scene's order) held out."""
    from splatkit.data import load_scene

    ids = load_scene(scene_dir).ids
    test = [v for i, v in enumerate(ids) if i % HOLD_EVERY == 0]
    train = [v for i, v in enumerate(ids) if i % HOLD_EVERY != 0]
    return train, test


def train_demo(scene_dir: Path, run_dir: Path, steps: Optional[int] = None) -> float:
    """Train the ``fast`` preset on ``scene_dir`` into ``run_dir`` (replacing an earlier demo run
    there); returns the training wall time in seconds."""
    from splatkit.train import Trainer, resolve_config
    from splatkit.train.run import CONFIG_NAME

    run_dir = Path(run_dir)
    if run_dir.exists():
        # Only ever delete what looks like a run folder: OUT/run is the demo's own output.
        if not (run_dir / CONFIG_NAME).is_file() and any(run_dir.iterdir()):
            raise SplatkitError("exists and is not a splatkit run folder; remove it or choose another "
                                "--out", run_dir)
        shutil.rmtree(run_dir)
    train, test = demo_split(scene_dir)
    overrides = {"data": scene_dir, "out": run_dir, "train_views": train, "test_views": test}
    if steps is not None:  # None means "the preset's step count", not an override
        overrides["steps"] = steps
    config = resolve_config(overrides, preset=PRESET)
    start = time.perf_counter()
    Trainer(config).train(score=False)  # finish_run scores it (splatkit eval's path)
    return time.perf_counter() - start


def finish_run(run_dir: Path, orbit_frames: int = ORBIT_FRAMES, train_seconds: Optional[float] = None,
               scene_dir: Optional[Path] = None) -> DemoResult:
    """Evaluate, render the test views and an orbit video, and export the PLY for a trained run."""
    from splatkit.eval.evaluate import evaluate_run
    from splatkit.app import export_run
    from splatkit.app import render_orbit, render_split
    from splatkit.train.run import Run

    run = Run.open(run_dir)
    report = evaluate_run(run)
    renders = render_split(run, "test")
    video = render_orbit(run, n_frames=orbit_frames)
    ply = export_run(run, "ply")
    return DemoResult(
        scene=Path(scene_dir) if scene_dir is not None else Path(run.config.data),
        run=run.path, train_seconds=train_seconds, metrics_path=Path(report["json_path"]),
        mean=report["mean"], lpips_unavailable=report["lpips_unavailable"], renders=renders.folder,
        video=video.path, video_note=video.fallback_reason, ply=ply.path, num_gaussians=ply.num_written)


def print_summary(res: DemoResult) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(soft_wrap=True)  # long paths stay on one line, copy-pasteable
    m = res.mean
    psnr = "-" if m.get("psnr") is None else f"{m['psnr']:.2f} dB"
    ssim = "-" if m.get("ssim") is None else f"{m['ssim']:.4f}"
    console.print(f"[bold]splatkit demo[/bold]: test PSNR {psnr}, SSIM {ssim}"
                  + (f", training {res.train_seconds:.1f} s" if res.train_seconds is not None else ""))
    if m.get("masked_psnr") is not None:
        console.print(f"  masked (DTU protocol): PSNR {m['masked_psnr']:.2f} dB, SSIM {m['masked_ssim']:.4f}")
    if res.lpips_unavailable:
        console.print(escape(f"  {res.lpips_unavailable}"))
    # Paths and reasons may contain [brackets], which rich would read as markup.
    console.print(escape(f"  scene:   {res.scene}"))
    console.print(escape(f"  run:     {res.run}"))
    console.print(escape(f"  metrics: {res.metrics_path}"))
    console.print(escape(f"  renders: {res.renders}"))
    console.print(escape(f"  video:   {res.video}" + (f"  ({res.video_note})" if res.video_note else "")))
    console.print(escape(f"  PLY:     {res.ply} ({res.num_gaussians} Gaussians)"))


def run_demo(out: str | Path = "outputs/demo", steps: Optional[int] = None,
             orbit_frames: Optional[int] = None) -> DemoResult:
    out = Path(out)
    scene_dir = prepare_scene(out / "scene")
    seconds = train_demo(scene_dir, out / "run", steps=steps)
    res = finish_run(out / "run", orbit_frames=ORBIT_FRAMES if orbit_frames is None else orbit_frames,
                     train_seconds=seconds, scene_dir=scene_dir)
    print_summary(res)
    return res
