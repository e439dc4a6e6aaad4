"""Fine-tune our repair model on one scene's finished runs, score its repair of another's (issue #15).

The shipped base model (``ours``) was pretrained on renders of procedural scenes at 100x75; on the
real DTU scan 65 it makes the `sparse` preset's ~20 dB test renders slightly worse (bench_repair's
"repair alone"). This asks whether real renders fix that: pairs are rendered from finished runs of
a *source* scene (every run given: its test views against the photos, kind ``loo``: cameras the
run never saw; its training views, kind ``identity``), the base model is fine-tuned on them (LoRA
or the whole network, as the plugin's per-scene fine-tune does), and the repair of the *target*
runs' test renders is scored (masked PSNR on DTU, PSNR elsewhere) at several strengths, before
and after. Source and target must be different scenes: the target's photos are the test.

    nice -n 10 .venv/bin/python scripts/repair_transfer.py \\
        --source 'outputs/bench/sparse_real3k/*/runs/scan37/sparse/seed*' \\
        --target 'outputs/bench/sparse_real3k/all/runs/scan65/sparse/seed*' \\
        [--exclude /plain/] [--mode full lora] [--steps 300 1000] [--work-height 0] [--write]
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import machine_info, mean_std, write_section  # noqa: E402

SECTION = "repair_transfer"
STRENGTHS = (0.25, 0.5, 1.0)


def runs_of(pattern: str, exclude: list[str]) -> list[Path]:
    found = [Path(p) for p in sorted(glob.glob(pattern)) if not any(x in p for x in exclude)]
    return [p for p in found if (p / "checkpoints").is_dir()]


def scene_name(run: Path) -> str:
    from splatkit.train.run import Run

    return str(Run.open(run).config.data)


def source_pairs(runs: list[Path]):
    """Test renders (kind ``loo``) and training-view renders (``identity``) of every run, with the photos."""
    from splatkit.eval.benchmark import render_test_views
    from splatkit.methods.scoring import render_views, settings_for
    from splatkit.priors.repair.base import RepairPairs
    from splatkit.train.run import Run

    ins, tgs, kinds, vids = [], [], [], []
    for path in runs:
        for vid, scene, pos, rgb in render_test_views(path):
            ins.append(torch.as_tensor(rgb))
            tgs.append(torch.as_tensor(scene.images[pos]))
            kinds.append("loo")
            vids.append(int(vid))
        run = Run.open(path)
        model, _ = run.load_model()
        scene, ids, positions = run.views("train")
        for i, rgb, _, _ in render_views(model, scene.cameras[positions], settings_for(run.config)):
            ins.append(torch.as_tensor(rgb))
            tgs.append(torch.as_tensor(scene.images[positions[i]]))
            kinds.append("identity")
            vids.append(int(ids[i]))
    return RepairPairs(torch.stack(ins).float(), torch.stack(tgs).float(), kinds, vids)


def target_views(runs: list[Path]):
    from splatkit.eval.benchmark import render_test_views

    return [[(torch.as_tensor(rgb), scene.images[pos], None if scene.masks is None else scene.masks[pos])
             for _, scene, pos, rgb in render_test_views(path)] for path in runs]


def score(model, views) -> dict[float, list[float]]:
    """Per target run, the mean (masked) PSNR of its test renders repaired at each strength (0: as rendered)."""
    from splatkit.metrics import masked_psnr, psnr

    out: dict[float, list[float]] = {}
    for s in (0.0, *STRENGTHS):
        out[s] = []
        for run_views in views:
            values = []
            for rgb, gt, mask in run_views:
                x = rgb if s == 0.0 else model.repair(rgb[None], strength=s)[0]
                values.append(masked_psnr(x.numpy(), gt, mask) if mask is not None else psnr(x.numpy(), gt))
            out[s].append(float(np.mean(values)))
    return out


def row(label: str, scores: dict[float, list[float]], extra: str = "") -> str:
    before = scores[0.0]
    cells = [f"{mean_std([a - b for a, b in zip(scores[s], before)], 3)}" for s in STRENGTHS]
    return f"| {label} | {' | '.join(cells)} | {extra} |"


def main() -> None:
    from splatkit.priors.repair.base import load_repair_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="glob of finished run folders to make pairs from")
    ap.add_argument("--target", required=True, help="glob of finished run folders whose test renders are repaired")
    ap.add_argument("--exclude", nargs="*", default=["/plain/"], help="skip runs whose path contains these")
    ap.add_argument("--mode", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 1000], help="fine-tune steps (cumulative)")
    ap.add_argument("--lr-full", type=float, default=2e-4)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--work-height", type=int, default=0, help="the model's working height (0: full size)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sources, targets = runs_of(args.source, args.exclude), runs_of(args.target, args.exclude)
    if not sources or not targets:
        sys.exit(f"no finished runs: {len(sources)} source, {len(targets)} target")
    src_scenes = {scene_name(p) for p in sources}
    tgt_scenes = {scene_name(p) for p in targets}
    if src_scenes & tgt_scenes:
        sys.exit(f"source and target share scenes {sorted(src_scenes & tgt_scenes)}: the target's photos would be "
                 "in the training pairs")
    t0 = time.time()
    pairs = source_pairs(sources)
    views = target_views(targets)
    t_render = time.time() - t0
    print(f"{len(pairs)} pairs from {len(sources)} runs, {sum(map(len, views))} target views ({t_render:.0f} s)",
          flush=True)
    options = {"work_height": args.work_height}
    base = load_repair_model("ours", **options)
    base_scores = score(base, views)
    print("base", base_scores, flush=True)
    lines = [row("shipped base model", base_scores, "-")]
    for mode in args.mode:
        lr = {"lr_full": args.lr_full} if mode == "full" else {"lr_lora": args.lr_lora}
        model = load_repair_model("ours", mode=mode, **options, **lr)
        done = 0
        for steps in args.steps:
            info = model.fine_tune(pairs, steps=steps - done, seed=0)
            done = steps
            scores = score(model, views)
            print(mode, steps, info, scores, flush=True)
            lines.append(row(f"fine-tuned, {mode} ({args.lr_full if mode == 'full' else args.lr_lora:g}), {steps} steps",
                             scores, f"{info['loss_first']:.3f} -> {info['loss_last']:.3f}"))
    kinds = {k: pairs.kinds.count(k) for k in dict.fromkeys(pairs.kinds)}
    before = mean_std(base_scores[0.0])
    text = "\n".join([
        "## Repair model fine-tuned on another real scene's renders",
        "",
        f"`python scripts/repair_transfer.py --source '{args.source}' --target '{args.target}' --mode "
        f"{' '.join(args.mode)} --steps {' '.join(map(str, args.steps))} --work-height {args.work_height} --write` "
        f"on {machine_info()}. Pairs ({len(pairs)}: {kinds}) rendered from {len(sources)} finished runs of "
        f"{', '.join(sorted(Path(s).name for s in src_scenes))} (their test views against the photos, and their "
        f"training views); the shipped base model (`ours`) fine-tuned on them as the plugin's per-scene fine-tune "
        f"does; then the test renders of {len(targets)} finished runs of "
        f"{', '.join(sorted(Path(s).name for s in tgt_scenes))} ({before} dB, mean ± std over the runs) repaired "
        "at three strengths. Each cell: the change of the runs' mean (masked) PSNR, mean ± std over the runs "
        f"(0 = the repair changes nothing). Rendering the pairs and views took {t_render:.0f} s.",
        "",
        "| repair model | strength 0.25 | strength 0.5 | strength 1 | fine-tune loss |",
        "|---|---:|---:|---:|---:|",
        *lines,
    ])
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
