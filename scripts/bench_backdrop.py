"""Bright backdrops: test PSNR of sparse-view runs on objects on white, with and without the fix.

Scenes: the synthetic DTU-like objects rendered on pure white (``splatkit data synthetic
--backdrop white``), and, when ``../shared/data`` has it, real DTU scan 65 with everything
outside its object masks painted white (a capture masked to white, as MonoSDF's DTU release and
product photos look). Each trains the DTU protocol's 3 and 9 views (25, 22, 28 / + 40, 44, 48, 0,
8, 13) with the ``sparse`` / ``sparse9`` presets and is scored on the protocol's 25 test views,
full image (the white backdrop included) and masked. Variants:

* ``black``: what the presets did before (a black background: Gaussians must paint the white);
* ``auto``: the backdrop estimated from the training images (``background="auto"``) alone;
* ``auto+prune``: ``auto`` and the ``backdrop_prune`` plugin (the default for a uniform backdrop);
* ``masks+random``: object masks supervise alpha (``use_masks``) with random backgrounds;
* ``masks+auto+prune``: ``use_masks`` with the estimated backdrop and ``backdrop_prune`` (the default with masks).

No depth prior (the comparison is about the backdrop; real scans have no depth files here).
Finished runs are reused, so an interrupted measurement continues where it stopped.

    .venv/bin/python scripts/bench_backdrop.py [--steps 600] [--seeds 0,1] [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import load_average, machine_info, write_section  # noqa: E402

SECTION = "bench_backdrop"
SHARED = ROOT.parent / "shared" / "data"
VARIANTS = {
    "black": {"background": "black"},
    "auto": {"prune_backdrop": False},
    "auto+prune": {},
    "masks+random": {"use_masks": True, "background": "random"},
    "masks+auto+prune": {"use_masks": True},
}


def synthetic_white(folder: Path, seed: int) -> Path:
    from splatkit.data.synthetic import write_synthetic_scene

    if not (folder / "meta.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        write_synthetic_scene(folder, seed=seed, width=200, height=150, backdrop="white")
    return folder


def scan_masked_to_white(folder: Path, scan: Path) -> Path:
    """A copy of the real scan whose pixels outside the object mask are white."""
    from splatkit.data.imageio_utils import write_image
    import imageio.v3 as iio

    if (folder / "cameras_sphere.npz").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "image").mkdir(parents=True)
    shutil.copytree(scan / "mask", tmp / "mask")
    for path in sorted((scan / "image").glob("*.png")):
        img = iio.imread(path)[..., :3].astype(np.float32) / 255.0
        mask = iio.imread(scan / "mask" / f"{int(path.stem):03d}.png")
        m = (mask[..., 0] if mask.ndim == 3 else mask)[..., None] > 127
        write_image(tmp / "image" / path.name, np.where(m, img, 1.0))
    shutil.copy(scan / "cameras_sphere.npz", tmp / "cameras_sphere.npz")
    tmp.rename(folder)
    return folder


def run_one(data: Path, out: Path, views: int, variant: str, steps: int) -> dict:
    from splatkit.eval.protocols import dtu_protocol
    from splatkit.train import Trainer
    from splatkit.train.config import load_preset, resolve_config

    summary = out / "train_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    shutil.rmtree(out, ignore_errors=True)
    proto = dtu_protocol()
    preset = "sparse" if views == 3 else "sparse9"
    settings = dict(VARIANTS[variant])
    regs = [r for r in load_preset(preset).get("regularizers", []) if not r.startswith("depth_")]
    overrides = {"data": data, "out": out, "steps": steps, "train_views": proto.train_views(views),
                 "test_views": proto.test_views(), "regularizers": regs, "preview_every": 0, **settings}
    Trainer(resolve_config(overrides, preset=preset), quiet=True).train()
    return json.loads(summary.read_text())


def score_against_photos(run_dir: Path) -> dict:
    """Test metrics against the images as loaded (backdrop included), every run rendered on its
    own background; runs trained on random backgrounds (which have none) on the estimated
    backdrop, as a user would show them. Cached beside the run."""
    from splatkit.data.backdrop import estimate_backdrop
    from splatkit.methods.scoring import mean_metrics, score_views, settings_for
    from splatkit.train.run import Run

    cache = run_dir / "backdrop_scores.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    run = Run.open(run_dir)
    model, _ = run.load_model(run.checkpoint(None))
    scene, _, positions = run.views("test")
    settings = settings_for(run.config)
    if run.config.background == "random":
        train_scene, _, train_positions = run.views("train")
        sub = train_scene.subset(train_positions)
        settings.background = estimate_backdrop(sub.images, sub.masks).color
    rows, _ = score_views(model, scene, positions, settings, composite_gt=False)
    result = {**mean_metrics(rows), "num_gaussians": int(model.num_gaussians),
              "background": [float(c) for c in settings.background]}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1", help="synthetic objects (scene seeds)")
    parser.add_argument("--views", default="3,9")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "backdrop")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    load = load_average()
    scenes = [(f"synthetic object {s} on white", synthetic_white(args.out / "scenes" / f"white{s}", int(s)))
              for s in args.seeds.split(",") if s]
    if (SHARED / "dtu_scan65" / "cameras_sphere.npz").is_file():
        scenes.append(("DTU scan 65 masked to white",
                       scan_masked_to_white(args.out / "scenes" / "scan65_white", SHARED / "dtu_scan65")))
    rows, gains = [], []
    for views in [int(v) for v in args.views.split(",") if v]:
        for label, data in scenes:
            line = [f"| {label} | {views} |"]
            scores = {}
            for variant in variants:
                run_dir = args.out / "runs" / f"{data.name}-{views}v-{variant}"
                run_one(data, run_dir, views, variant, args.steps)
                m = score_against_photos(run_dir)
                scores[variant] = m
                line.append(f" {m['psnr']:.2f} / {m['masked_psnr']:.2f} ({m['num_gaussians'] / 1000:.1f}k) |")
                print(f"{label}, {views} views, {variant}: psnr {m['psnr']:.2f} masked {m['masked_psnr']:.2f} "
                      f"{m['num_gaussians']} Gaussians", flush=True)
            rows.append("".join(line))
            if "black" in scores and "auto+prune" in scores:
                a, b = scores["black"], scores["auto+prune"]
                gains.append(f"* {label}, {views} views: the default (`auto+prune`) "
                             f"{b['psnr'] - a['psnr']:+.2f} dB PSNR / {b['masked_psnr'] - a['masked_psnr']:+.2f} dB "
                             "masked PSNR over a black background")
    header = ("| scene | views | " + " | ".join(f"`{v}`" for v in variants) + " |\n|---|---|"
              + "---|" * len(variants))
    text = f"""## Bright backdrops (objects on white)

`python scripts/bench_backdrop.py --steps {args.steps} --seeds {args.seeds} --views {args.views} --write` on
{machine_info()}; load average {'unknown' if load is None else f'{load:.1f}'} at the start (finished runs are
reused; these are quality figures, which do not depend on the load). One synthetic object (scene
seed {args.seeds}) and one real scan, one training seed each. The `sparse` (3 views) and
`sparse9` (9 views) presets, {args.steps} steps, no depth prior, on the DTU protocol's training ids;
test PSNR over the 25 test views against the images as loaded (full image, the white backdrop
included; each run rendered on its own background, random-background runs on the estimated
backdrop) / masked (DTU protocol), and the final Gaussian count. `black` is the presets' background before `auto`; `auto` estimates the backdrop
from the training images; `auto+prune` adds the `backdrop_prune` plugin (the two together are the
default now); `masks+...` supervise alpha with the object masks.

{header}
""" + "\n".join(rows) + "\n\n" + "\n".join(gains) + "\n"
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
