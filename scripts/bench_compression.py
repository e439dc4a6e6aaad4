"""Compression benchmark (issue #5): file size, Gaussian count and test PSNR of plain 3DGS, learnable
masks, masks + R-VQ, the hash-grid colour field alone and the full Compact-3DGS pipeline (Lee et al.,
CVPR 2024), in every export format.

    .venv/bin/python scripts/bench_compression.py [--write] [--quick] [--out outputs/bench_compression]
    .venv/bin/python scripts/bench_compression.py --steps 5000 [--methods 3dgs,compact] [--write]

Two settings:

* dense: the synthetic scene (seed 0) at 400x300, 49 views with every 8th held out; plain 3DGS is the
  `fast` preset's schedule with 3DGS's own SH degree 3 (the preset as is, SH degree 1, is listed
  too), the ablations add `compact`'s mask and R-VQ settings to it, `field` is `compact` without
  masks and R-VQ, the full pipeline is the `compact` preset;
* sparse: 3 training views (DTU ids 25, 22, 28; the DTU protocol's test ids) of the 200x150 synthetic
  scene with its degraded depth prior (as `splatkit benchmark --suite synthetic` makes it), the `sparse`
  preset with and without the compact options of `configs/compact.json`.

``--steps N`` runs dense methods (default ``3dgs`` and ``compact``) with every step-valued setting of the
presets stretched from 2000 to N steps, into its own section of docs/benchmarks.md. ``--methods`` picks
methods to train and score, so that two processes can share the runs (one core each); a last call
without it reuses them and writes the table.

Every file is scored by ``evaluate_run(run, splats=FILE)``, so the PSNR is that of what the file
holds; a colour-field run's ``.skz`` is also scored at other hash-table bit depths. Finished runs are
reused (delete OUT/runs/NAME to retrain). ``--quick`` is a smoke test on tiny scenes with 120 steps; its numbers mean nothing and it refuses ``--write``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splatkit.export import SKZ_TABLE_BITS  # noqa: E402

from benchdoc import load_average, machine_info, write_section  # noqa: E402  (scripts/ is on sys.path)

SECTION = "bench_compression"
ALL_FORMATS = ("ply", "splat", "ply-compressed", "spz", "skz")
COMPACT_PREFIXES = ("gaussian_masks", "mask_", "color_field", "rvq")
# Targets of issue #5 on the dense scene.
TARGET_RATIO = 25.0
TARGET_LOSS_DB = 0.3
TARGET_MASK_KEEP = 0.5
SPARSE_SEED = 0
# 2.5x the fast preset's densification threshold (3DGS' 2e-4): about half the Gaussians on the dense scene.
FEWER_GROW_GRAD2D = 5e-4
# The presets' run length, and their values that are steps of that schedule (``--steps`` scales them).
PRESET_STEPS = 2000
SCHEDULE_KEYS = ("sh_degree_interval", "refine_start_iter", "refine_stop_iter", "mask_loss_stop_iter",
                 "color_field_lr_milestones")
# Hash-table bits of the extra .skz rows of colour-field runs (the default, SKZ_TABLE_BITS, is the skz row).
TABLE_BITS_SWEEP = (8, 5, 4)
# How the .skz rows quantise the hash table, for the section texts.
SKZ_BITS_NOTE = (f"{SKZ_TABLE_BITS} bits (`splatkit export`'s default; Compact-3DGS uses 8), the rows `skz, N-bit table` at "
                 f"N bits")
# Milder mask losses than compact's 0.01 (the `masks-lambdaX` rows): the masks' count / PSNR trade-off.
MASK_LAMBDA_SWEEP = (0.003, 0.001)
# Methods a longer schedule runs by default: the baseline and the full pipeline.
LONG_METHODS = ("3dgs", "compact")


def compact_options() -> dict:
    """The compact pieces of configs/compact.json (masks, colour field, R-VQ), for other presets."""
    from splatkit.train.config import load_preset

    return {k: v for k, v in load_preset("compact").items() if k.startswith(COMPACT_PREFIXES)}


def scaled_schedule(preset: str, overrides: dict, steps: int) -> dict:
    """``overrides`` plus the preset's schedule stretched from its 2000 steps to ``steps``: every
    step-valued key (densification window, SH-degree interval, mask-loss stop, field LR milestones)
    keeps its fraction of the run; values derived from ``steps`` (R-VQ start, mask pruning period)
    follow by themselves. Densification still runs every 100 steps, as in 3DGS."""
    from splatkit.train.config import load_preset

    values = {**load_preset(preset), **overrides}
    if int(values["steps"]) != PRESET_STEPS:
        raise SystemExit(f"preset {preset} has {values['steps']} steps, not the {PRESET_STEPS} --steps scales from")
    factor = steps / PRESET_STEPS
    out = {**overrides, "steps": steps}
    for key in SCHEDULE_KEYS:
        v = values.get(key)
        if isinstance(v, list):
            out[key] = [round(x * factor) for x in v]
        elif v is not None:
            out[key] = round(v * factor)
    return out


def methods() -> list[tuple[str, str, str, dict, tuple[str, ...]]]:
    """(setting, name, preset, overrides, formats to export and score); the first of a setting is
    its baseline."""
    opts = compact_options()
    masks = {k: v for k, v in opts.items() if k.startswith(("gaussian_masks", "mask_"))}
    rvq = {k: v for k, v in opts.items() if k.startswith("rvq")}
    sh3 = {"sh_degree": 3}  # plain 3DGS stores SH degree 3 (Kerbl et al. 2023)
    return [
        ("dense", "3dgs", "fast", sh3, ("ply", "skz")),
        ("dense", "3dgs-sh1", "fast", {}, ("ply",)),
        # Plain 3DGS held to about as few Gaussians as the masks leave, by a stricter densification
        # threshold: what the Gaussian count alone is worth at this schedule.
        ("dense", "3dgs-fewer", "fast", {**sh3, "grow_grad2d": FEWER_GROW_GRAD2D}, ("ply",)),
        ("dense", "masks", "fast", {**sh3, **masks}, ("ply", "skz")),
        *[("dense", f"masks-lambda{lam:g}", "fast", {**sh3, **masks, "mask_lambda": lam}, ("ply",))
          for lam in MASK_LAMBDA_SWEEP],
        ("dense", "masks+rvq", "fast", {**sh3, **masks, **rvq}, ("ply", "skz")),
        # The colour field alone: what it costs against per-Gaussian SH at this schedule.
        ("dense", "field", "compact", {"gaussian_masks": False, "rvq": False}, ("ply", "skz")),
        # The field's MLP output as a DC SH coefficient (the authors' code) instead of a sigmoid.
        ("dense", "field-sh0", "compact", {"gaussian_masks": False, "rvq": False, "color_field_output": "sh0"},
         ("ply", "skz")),
        ("dense", "compact", "compact", {}, ALL_FORMATS),
        ("dense", "compact-sh0", "compact", {"color_field_output": "sh0"}, ("ply", "skz")),
        ("sparse", "sparse", "sparse", {}, ("ply", "skz")),
        ("sparse", "sparse+compact", "sparse", opts, ALL_FORMATS),
    ]


def scenes(out: Path, quick: bool, dense_scene: Path | None) -> dict:
    """Scene folder, split and extra config values per setting."""
    from splatkit.data.synthetic import write_synthetic_scene
    from splatkit.eval.benchmark import synthetic_cases

    size = (80, 60) if quick else (400, 300)
    dense = dense_scene or out / "scenes" / f"dense_{size[0]}x{size[1]}"
    if not (Path(dense) / "cameras_sphere.npz").is_file():
        write_synthetic_scene(dense, seed=0, width=size[0], height=size[1])
    case = synthetic_cases(out / "scenes", [str(SPARSE_SEED)], 3, (80, 60) if quick else (200, 150))[0]
    sparse = {"data": str(case.data), "train_views": case.train_ids, "test_views": case.test_ids,
              "depth_prior": "files", **case.overrides}
    return {"dense": {"data": str(dense)}, "sparse": sparse}


def train(run: Path, preset: str, values: dict, quiet: bool) -> dict:
    """Train (unless finished before) and return the run's train_summary.json."""
    from splatkit.train.config import resolve_config
    from splatkit.train.trainer import Trainer

    summary = run / "train_summary.json"
    config = resolve_config({**values, "out": str(run)}, preset=preset)
    if summary.is_file() and _trained_with(run) != _comparable(config.to_dict()):
        print(f"   {run.name}: its config.json differs from the current settings; retraining", flush=True)
        summary.unlink()
    if not summary.is_file():
        if run.exists():
            import shutil

            shutil.rmtree(run)  # an unfinished or outdated run: start over
        Trainer(config, quiet=quiet).train()
    return json.loads(summary.read_text())


def _comparable(config: dict) -> dict:
    """A config as JSON values, without what does not change the result (the version, output and
    data folders), paths made absolute and unset (None) options left out, so that a run from before
    an option existed still matches."""
    out = {}
    for k, v in json.loads(json.dumps(config, default=str)).items():
        if k in ("splatkit_version", "out", "data") or v is None:
            continue
        if isinstance(v, str) and (k.endswith("_dir") or k == "output_root"):
            v = str(Path(v).resolve())
        out[k] = v
    return out


def _trained_with(run: Path) -> dict:
    """The run's config, options added to TrainConfig since it was trained at their defaults (a new
    option's default keeps the old behaviour, so such a run is still what the settings ask for)."""
    from splatkit.train.config import TrainConfig

    saved = json.loads((run / "config.json").read_text())
    return _comparable({**{k: v for k, v in TrainConfig().to_dict().items() if k not in saved}, **saved})


def score(run: Path, formats) -> list[dict]:
    """Export the run in each format and score the file. For a colour-field run, ``skz`` is also
    written with the hash table at each of :data:`TABLE_BITS_SWEEP` bits (rows ``skz, N-bit table``)."""
    from splatkit.eval.evaluate import evaluate_run
    from splatkit.app import export_run
    from splatkit.export import SKZ_TABLE_BITS

    field = json.loads((run / "config.json").read_text())["color_field"]
    jobs = [(fmt, {}) for fmt in formats]
    if field and "skz" in formats:
        jobs += [(f"skz, {bits}-bit table", {"table_bits": bits, "out": run / "export" / f"splats.table{bits}.skz"})
                 for bits in TABLE_BITS_SWEEP if bits != SKZ_TABLE_BITS]
    rows = []
    for label, options in jobs:
        fmt = label.split(",")[0]
        # The PLY export of a colour-field run also reports what baking the field to SH costs.
        res = export_run(run, fmt, report_bake=fmt == "ply", **options)
        report = evaluate_run(run, splats=res.path, json_path=run / f"metrics_{res.path.name.replace('.', '_')}.json")
        size = res.path.stat().st_size
        rows.append({"format": label, "file": str(res.path), "bytes": size, "gaussians": report["num_gaussians"],
                     "psnr": report["mean"]["psnr"], "masked_psnr": report["mean"].get("masked_psnr"),
                     "bake": res.bake})
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"   {r['format']:>15}: {r['bytes']:>10,} bytes  {r['gaussians']:>7,} Gaussians  "
              f"PSNR {r['psnr']:.2f} dB", flush=True)


def pick_methods(names: str, known: list[str]) -> list[str]:
    """``names`` (comma-separated) checked against ``known``; exits with the list when one is not."""
    chosen = names.split(",")
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def fmt_row(setting: str | None, name: str, r: dict, base: dict) -> str:
    """One table row; ``setting`` None leaves that column out."""
    ratio = base["bytes"] / r["bytes"]
    first = "" if setting is None else f"| {setting} "
    return (f"{first}| {name} | {r['format']} | {r['bytes'] / 1e6:.3f} MB | {r['bytes'] / r['gaussians']:.1f} | "
            f"{ratio:.1f}x | {r['gaussians']:,} | {r['psnr']:.2f} dB | {r['psnr'] - base['psnr']:+.2f} dB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_compression")
    parser.add_argument("--scene", type=Path, default=None,
                        help="a 400x300 synthetic scene to reuse (default: OUT/scenes/dense_400x300, made once)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny scenes, 120 steps")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--verbose", action="store_true", help="show training progress")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"dense setting only, with the presets' schedule stretched from {PRESET_STEPS} to this "
                             "many steps (its own section of docs/benchmarks.md)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated method names: only train and score these (to share the work between "
                             "processes; the table needs them all). With --steps: the dense methods to run "
                             f"(default {','.join(LONG_METHODS)}; the first is the baseline)")
    parser.add_argument("--posttrain", action="store_true",
                        help="`splatkit compress` on finished runs (synthetic x3 seeds, DTU scan 65, LLFF fern), its "
                             "own section of docs/benchmarks.md")
    parser.add_argument("--train-real", action="store_true",
                        help="--posttrain: train the real scenes' base runs when missing (else they are skipped)")
    parser.add_argument("--compact", action="store_true",
                        help="--posttrain: also train the compact preset on the synthetic scene (the in-training route)")
    parser.add_argument("--seeds", type=int, default=len(POST_SEEDS), choices=range(1, len(POST_SEEDS) + 1),
                        help="--posttrain: training seeds of the synthetic scene (each a base run to train)")
    args = parser.parse_args()
    if args.posttrain:
        return posttrain(args)
    if args.quick and args.write:
        parser.error("--quick numbers are a smoke test; they are not written to docs/benchmarks.md")
    if args.methods and args.write and not args.steps:
        parser.error("--write needs every method: leave out --methods (finished runs are reused)")
    if args.steps is not None:
        if args.steps < 1 or args.quick:
            parser.error("--steps takes a positive number of steps and no --quick")
        return long_schedule(args)
    out = args.out / "quick" if args.quick else args.out
    quick_values = {"steps": 120, "init_num_points": 1500, "checkpoint_every": 0, "preview_every": 0,
                    "mask_min_gaussians": 100} if args.quick else {}

    load_before = load_average()
    start = time.perf_counter()
    settings = scenes(out, args.quick, args.scene)
    results, times, bakes, steps = {}, {}, {}, {}
    chosen = methods()
    if args.methods:
        names = pick_methods(args.methods, [m[1] for m in chosen])
        chosen = [m for m in chosen if m[1] in names]
    for setting, name, preset, overrides, formats in chosen:
        run = out / "runs" / f"{setting}-{name}"
        print(f"== {setting} / {name}: preset {preset} {overrides or ''}", flush=True)
        summary = train(run, preset, {**settings[setting], **overrides, **quick_values, "device": "cpu"},
                        quiet=not args.verbose)
        times[(setting, name)] = (summary["train_time_s"], summary["num_gaussians"])
        steps[(setting, name)] = int(json.loads((run / "config.json").read_text())["steps"])
        results[(setting, name)] = score(run, formats)
        bake = next((r["bake"] for r in results[(setting, name)] if r["bake"]), None)
        if bake:
            bakes[(setting, name)] = bake
        print_rows(results[(setting, name)])
    total = time.perf_counter() - start
    if args.methods:
        print("trained and scored the chosen methods; run without --methods for the table")
        return

    lines = ["| setting | method | file | size | bytes / Gaussian | vs 3DGS PLY | Gaussians | test PSNR | vs 3DGS PLY |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    checks = []
    for setting, baseline in (("dense", "3dgs"), ("sparse", "sparse")):
        base = next(r for r in results[(setting, baseline)] if r["format"] == "ply")
        for (s, name), rows in results.items():
            if s == setting:
                lines += [fmt_row(setting, name, r, base) for r in rows]
        full = next(r for r in results[(setting, "compact" if setting == "dense" else "sparse+compact")]
                    if r["format"] == "skz")
        ratio, delta = base["bytes"] / full["bytes"], full["psnr"] - base["psnr"]
        line = (f"{setting}: the full pipeline's `.skz` is **{ratio:.1f}x** smaller than the {baseline} PLY "
                f"({full['bytes'] / 1e3:.0f} kB vs {base['bytes'] / 1e6:.2f} MB), test PSNR **{delta:+.2f} dB**")
        if setting == "dense":
            met = ratio >= TARGET_RATIO and -delta <= TARGET_LOSS_DB
            sh1 = results[("dense", "3dgs-sh1")][0]
            masks = next(r for r in results[("dense", "masks")] if r["format"] == "ply")
            keep = masks["gaussians"] / base["gaussians"]
            line += (f" (target >= {TARGET_RATIO:.0f}x at >= -{TARGET_LOSS_DB} dB: {'met' if met else 'NOT met'}); "
                     f"against the `fast` preset's own SH-1 PLY ({sh1['bytes'] / 1e6:.2f} MB, {sh1['psnr']:.2f} dB) "
                     f"{sh1['bytes'] / full['bytes']:.1f}x at {full['psnr'] - sh1['psnr']:+.2f} dB. Learnable masks "
                     f"alone keep {keep:.0%} of the 3DGS Gaussians ({masks['gaussians']:,} vs {base['gaussians']:,}; "
                     f"target <= {TARGET_MASK_KEEP:.0%}: {'met' if keep <= TARGET_MASK_KEEP else 'NOT met'})")
        checks.append(line)
    if ("dense", "field") in results:
        field = next(r for r in results[("dense", "field")] if r["format"] == "skz")
        base = next(r for r in results[("dense", "3dgs")] if r["format"] == "skz")
        masks_skz = next(r for r in results[("dense", "masks")] if r["format"] == "skz")
        checks.append(f"dense: the colour field alone (no masks, no R-VQ; `.skz`, so not baked) scores "
                      f"{field['psnr']:.2f} dB against {base['psnr']:.2f} dB for per-Gaussian SH degree 3 "
                      f"({field['psnr'] - base['psnr']:+.2f} dB) with {field['gaussians']:,} Gaussians; the "
                      f"masks alone cost {masks_skz['psnr'] - base['psnr']:+.2f} dB")
    base_steps = steps.get(("dense", "3dgs"))
    if ("dense", "3dgs-fewer") in results:
        fewer = results[("dense", "3dgs-fewer")][0]
        base = next(r for r in results[("dense", "3dgs")] if r["format"] == "ply")
        masks = next(r for r in results[("dense", "masks")] if r["format"] == "ply")
        per_halving = [(r["psnr"] - base["psnr"]) / math.log2(base["gaussians"] / r["gaussians"])
                       for r in (fewer, masks) if r["gaussians"] < base["gaussians"]]
        checks.append(f"dense: plain 3DGS densified with grow_grad2d {FEWER_GROW_GRAD2D:g} instead of 2e-4 ends with "
                      f"{fewer['gaussians']:,} Gaussians and scores {fewer['psnr']:.2f} dB "
                      f"({fewer['psnr'] - base['psnr']:+.2f} dB); the masks keep {masks['gaussians']:,} at "
                      f"{masks['psnr']:.2f} dB ({masks['psnr'] - base['psnr']:+.2f} dB). At this {base_steps}-step "
                      f"schedule each halving of the count costs "
                      f"{' and '.join(f'{d:+.2f} dB' for d in per_halving)} respectively")
    mask_rows = [(lam, next(r for r in results[("dense", name)] if r["format"] == "ply"))
                 for lam, name in ((compact_options()["mask_lambda"], "masks"),
                                   *((lam, f"masks-lambda{lam:g}") for lam in MASK_LAMBDA_SWEEP))
                 if ("dense", name) in results]
    if len(mask_rows) > 1:
        base = next(r for r in results[("dense", "3dgs")] if r["format"] == "ply")
        both = [lam for lam, r in mask_rows
                if r["gaussians"] <= TARGET_MASK_KEEP * base["gaussians"] and base["psnr"] - r["psnr"] <= TARGET_LOSS_DB]
        checks.append("dense: the masks' trade-off (mask_lambda: share of the 3DGS Gaussians kept, PSNR vs 3DGS): "
                      + "; ".join(f"{lam:g}: {r['gaussians'] / base['gaussians']:.0%}, {r['psnr'] - base['psnr']:+.2f} dB"
                                  for lam, r in mask_rows)
                      + f". {'Keeping' if both else 'None keeps'} <= {TARGET_MASK_KEEP:.0%} at >= -{TARGET_LOSS_DB} dB"
                      + (f" with mask_lambda {', '.join(f'{lam:g}' for lam in both)}" if both else ""))
    for name, plain in (("field-sh0", "field"), ("compact-sh0", "compact")):
        if ("dense", name) in results and ("dense", plain) in results:
            a, b = (next(r for r in results[("dense", n)] if r["format"] == "skz") for n in (name, plain))
            checks.append(f"dense / {name}: the field's output as a DC SH coefficient instead of a sigmoid: "
                          f"`.skz` {a['psnr']:.2f} dB with {a['gaussians']:,} Gaussians in {a['bytes'] / 1e3:.0f} kB, "
                          f"against {b['psnr']:.2f} dB with {b['gaussians']:,} in {b['bytes'] / 1e3:.0f} kB ({plain})")
    for (setting, name), b in bakes.items():
        checks.append(f"{setting} / {name}: baking the colour field to SH degree {b['sh_degree']} for the "
                      f"other formats costs {b['loss_db']:.2f} dB ({b['psnr_field']:.2f} dB with the field, "
                      f"{b['psnr_baked']:.2f} dB baked; RMS colour error {b['rms']:.4f})")
    timing = ", ".join(f"{s}/{n} {t:.0f} s ({g:,} Gaussians)" for (s, n), (t, g) in times.items())
    load_note = "machine load unknown" if load_before is None else f"load average {load_before:.1f} at the start"
    text = f"""## Compression: Compact-3DGS masks, R-VQ and hash-grid colour

`python scripts/bench_compression.py --write` on {machine_info()}; {load_note}; {total / 60:.0f} min in all
(finished runs reused: this counts only what the call itself trained and scored).
Dense: the synthetic scene (seed 0) at {'80x60' if args.quick else '400x300'}, 49 views, every 8th held out
for testing; `3dgs` is the `fast` preset's schedule with 3DGS's SH degree 3 (the baseline; `3dgs-sh1` is
the preset as is, `3dgs-fewer` densifies with grow_grad2d {FEWER_GROW_GRAD2D:g}), `masks` and `masks+rvq` add those settings of `compact`
(`masks-lambdaX`: the masks with mask_lambda X instead of {compact_options()["mask_lambda"]:g}), `compact` is the full preset
(masks, hash-grid colour, R-VQ of scales and rotations) and `field` is it without masks and R-VQ (`-sh0`: with
color_field_output sh0). Sparse: 3 views (DTU ids 25, 22, 28)
of the {'80x60' if args.quick else '200x150'} synthetic scene with its degraded depth prior, the `sparse`
preset without and with the compact options. Each file is exported by `splatkit export` and scored by
`evaluate_run(run, splats=FILE)` on the test views; ratios and PSNR differences are against the setting's
plain PLY. A colour field is baked to SH for every format but `.skz`, which stores its hash table at
{SKZ_BITS_NOTE}.

{chr(10).join(lines)}

{chr(10).join('* ' + c for c in checks)}

Training times (wall clock as each run was trained; reused runs keep theirs, and some shared the cores with
other jobs): {timing}.
"""
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")


def long_schedule(args) -> None:
    """The dense setting's methods with the schedule stretched to ``args.steps``: run folders
    ``dense-<steps>steps-<method>``, section ``bench_compression_<steps>`` of docs/benchmarks.md."""
    known = {name: (preset, overrides, formats) for setting, name, preset, overrides, formats in methods()
             if setting == "dense"}
    names = pick_methods(args.methods, list(known)) if args.methods else list(LONG_METHODS)
    load_before = load_average()
    start = time.perf_counter()
    dense = scenes(args.out, False, args.scene)["dense"]
    results, times = {}, {}
    for name in names:
        preset, overrides, formats = known[name]
        values = scaled_schedule(preset, overrides, args.steps)
        run = args.out / "runs" / f"dense-{args.steps}steps-{name}"
        print(f"== dense, {args.steps} steps / {name}: preset {preset} {values}", flush=True)
        summary = train(run, preset, {**dense, **values, "device": "cpu"}, quiet=not args.verbose)
        times[name] = (summary["train_time_s"], summary["num_gaussians"])
        results[name] = score(run, formats)
        print_rows(results[name])
    total = time.perf_counter() - start

    baseline = names[0]
    base = next(r for r in results[baseline] if r["format"] == "ply")
    lines = ["| method | file | size | bytes / Gaussian | vs baseline PLY | Gaussians | test PSNR | vs baseline PLY |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [fmt_row(None, name, r, base) for name in names for r in results[name]]
    checks = []
    if "compact" in results and baseline != "compact":
        full = next(r for r in results["compact"] if r["format"] == "skz")
        ratio, delta = base["bytes"] / full["bytes"], full["psnr"] - base["psnr"]
        met = ratio >= TARGET_RATIO and -delta <= TARGET_LOSS_DB
        keep = full["gaussians"] / base["gaussians"]
        checks.append(f"the full pipeline's `.skz` is **{ratio:.1f}x** smaller than the {baseline} PLY "
                      f"({full['bytes'] / 1e3:.0f} kB vs {base['bytes'] / 1e6:.2f} MB), test PSNR **{delta:+.2f} dB** "
                      f"(target >= {TARGET_RATIO:.0f}x at >= -{TARGET_LOSS_DB} dB: {'met' if met else 'NOT met'}); "
                      f"it keeps {keep:.0%} of the baseline's Gaussians")
        bake = next((r["bake"] for r in results["compact"] if r["bake"]), None)
        if bake:
            checks.append(f"baking the colour field to SH degree {bake['sh_degree']} for the other formats costs "
                          f"{bake['loss_db']:.2f} dB ({bake['psnr_field']:.2f} dB with the field, "
                          f"{bake['psnr_baked']:.2f} dB baked)")
    scaled = scaled_schedule("compact", {}, args.steps)
    timing = ", ".join(f"{n} {t:.0f} s ({g:,} Gaussians)" for n, (t, g) in times.items())
    load_note = "machine load unknown" if load_before is None else f"load average {load_before:.1f} at the start"
    text = f"""## Compression at {args.steps} steps (dense scene)

`python scripts/bench_compression.py --steps {args.steps} --write` on {machine_info()}; {load_note};
{total / 60:.0f} min in all (finished runs reused). The dense setting of the section above with every step-valued
setting of the presets stretched by {args.steps / PRESET_STEPS:g} ({', '.join(f'{k} {v}' for k, v in scaled.items()
if k in SCHEDULE_KEYS)}; R-VQ over the last 1/30 of the run). At {args.steps} steps each of the 42
training views is seen {args.steps / 42:.0f} times, about as often as 3DGS's 30k steps see the images of a
Mip-NeRF 360 or Tanks and Temples scene (150 to 300 views), the regime Compact-3DGS reports. `.skz` stores
the hash table at {SKZ_BITS_NOTE}.

{chr(10).join(lines)}

{chr(10).join('* ' + c for c in checks)}

Training times (wall clock as each run was trained; runs may have shared the cores): {timing}.
"""
    print(text)
    if args.write:
        print(f"wrote {write_section(f'{SECTION}_{args.steps}', text)}")


# -- `splatkit compress` on finished runs (issue #16) -------------------------------------------------
SHARED = ROOT.parent / "shared" / "data"
POST_SECTION = f"{SECTION}_posttrain"
POST_SEEDS = (0, 1, 2)  # training seeds of the synthetic scene's base runs
# The chain's stretch target (issue #16): >= 40x at the same loss.
STRETCH_RATIO = 40.0
# Settings tried for the stretch on seed 0, each `splatkit compress` with these options (label: the
# CLI flags; folder: the compressed run's name under the base run). Fewer Gaussians, fewer bits per
# attribute, longer fine-tunes: the three levers the chain has.
STRETCH_VARIANTS = (
    ("--target-ratio 40", "compressed-ratio40", {"target_ratio": STRETCH_RATIO}),
    ("--keep 0.45 --prune-steps 600", "compressed-k45-ft600", {"keep": 0.45, "prune_steps": 600}),
    ("--keep 0.5 --bits means=13,scales=7,quats=7,sh0=7,shN=8", "compressed-k50-b7",
     {"keep": 0.5, "bits": {"means": 13, "scales": 7, "quats": 7, "sh0": 7, "shN": 8}}),
    ("--keep 0.55 --bits means=12,scales=6,quats=6,sh0=6,shN=6", "compressed-k55-b6",
     {"keep": 0.55, "bits": {"means": 12, "scales": 6, "quats": 6, "sh0": 6, "shN": 6}}),
    ("--keep 0.55 --bits means=14,scales=7,quats=7,sh0=7,shN=7 --qat-steps 400", "compressed-k55-b7-qat400",
     {"keep": 0.55, "bits": {"means": 14, "scales": 7, "quats": 7, "sh0": 7, "shN": 7}, "qat_steps": 400}),
    ("--bits means=14,scales=6,quats=6,sh0=6,shN=6 --qat-steps 400", "compressed-k60-b6-qat400",
     {"keep": 0.6, "bits": {"means": 14, "scales": 6, "quats": 6, "sh0": 6, "shN": 6}, "qat_steps": 400}),
    ("--keep 0.48 --bits means=13,scales=7,quats=7,sh0=7,shN=8 --prune-steps 500 --qat-steps 400",
     "compressed-k48-b7-ft500-qat400",
     {"keep": 0.48, "bits": {"means": 13, "scales": 7, "quats": 7, "sh0": 7, "shN": 8}, "prune_steps": 500,
      "qat_steps": 400}),
    ("--keep 0.49 --bits means=13,scales=7,quats=7,sh0=7,shN=8 --prune-steps 600 --qat-steps 500",
     "compressed-k49-b7-ft600-qat500",
     {"keep": 0.49, "bits": {"means": 13, "scales": 7, "quats": 7, "sh0": 7, "shN": 8}, "prune_steps": 600,
      "qat_steps": 500}),
)


def posttrain_runs(out: Path, scene: Path | None = None, seeds=POST_SEEDS) -> list[tuple[str, str, str, dict]]:
    """(label, run folder name, preset, values) of the base runs `splatkit compress` starts from:
    the 400x300 synthetic scene at three training seeds (plain 3DGS as in the section above: the
    `fast` schedule with SH degree 3), the real DTU scan 65 (every training view, 400x300) and LLFF
    fern (x8, 504x378, every 8th image held out) with the same settings, and the `compact` preset
    (the in-training route) on the synthetic scene."""
    dense = scenes(out, False, scene)["dense"]
    sh3 = {"sh_degree": 3, "device": "cpu"}
    # The synthetic base runs on black, as the section above trained them (the default is now 'auto').
    rows = [(f"synthetic, seed {seed}", "dense-3dgs" if seed == 0 else f"dense-3dgs-seed{seed}", "fast",
             {**dense, **sh3, "seed": seed, "background": "black"}) for seed in seeds]
    rows += [("DTU scan 65", "real-dtu_scan65-3dgs", "fast", {"data": str(SHARED / "dtu_scan65"), **sh3}),
             ("LLFF fern x8", "real-llff_fern-3dgs", "fast", {"data": str(SHARED / "llff_fern"), "downscale": 8, **sh3})]
    return rows


def train_once(run: Path, preset: str, values: dict, quiet: bool) -> dict:
    """A finished base run is reused as it is (its config.json says how it was trained; a default
    that changed since does not retrain it); otherwise :func:`train`."""
    summary = run / "train_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    return train(run, preset, values, quiet)


def compress_cached(run: Path, name: str, **kwargs) -> dict:
    """`splatkit compress` of ``run`` into ``run/name`` (reused when its report exists)."""
    from splatkit.app.compress import REPORT_NAME, compress_run

    report = run / name / REPORT_NAME
    if report.is_file():
        return json.loads(report.read_text())
    if (run / name).exists():
        import shutil

        shutil.rmtree(run / name)
    return compress_run(run, out=run / name, quiet=True, say=lambda m: print("   " + m, flush=True), **kwargs)


def viewer_rows(run: Path) -> list[dict]:
    """The compressed run exported as SOG and SPZ, each file scored decoded by our readers."""
    from splatkit.app import export_run
    from splatkit.eval.evaluate import evaluate_run

    rows = []
    for fmt in ("skz", "sog", "spz"):
        res = export_run(run, fmt, out=run / "export" / f"viewer.{fmt}")
        rep = evaluate_run(run, splats=res.path, json_path=run / f"metrics_viewer_{fmt}.json")
        rows.append({"format": fmt, "bytes": res.path.stat().st_size, "psnr": rep["mean"]["psnr"]})
    return rows


def posttrain(args) -> None:
    load_before = load_average()
    start = time.perf_counter()
    runs_dir = args.out / "runs"
    seeds = POST_SEEDS[:args.seeds]
    rows = posttrain_runs(args.out, args.scene, seeds)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: real scenes skipped")
        rows = [r for r in rows if not r[1].startswith("real-")]
    results, viewers, stages = {}, {}, None
    skipped = []
    for label, name, preset, values in rows:
        run = runs_dir / name
        print(f"== {label}: {name}", flush=True)
        if name.startswith("real-") and not (run / "train_summary.json").is_file() and not args.train_real:
            print("   no finished base run: skipped (--train-real trains it)", flush=True)
            skipped.append(label)
            continue
        train_once(run, preset, values, quiet=not args.verbose)
        rep = compress_cached(run, "compressed", stages=name == "dense-3dgs")
        results[label] = [("default (keep 0.6)", rep)]
        if name == "dense-3dgs":
            stages = rep["stages"]
            for how, folder, options in STRETCH_VARIANTS:
                results[label].append((how, compress_cached(run, folder, **options)))
            viewers[label] = viewer_rows(run / "compressed")
        elif label.startswith("synthetic"):  # the last stretch setting (seed 0's best) on the other seeds too
            how, folder, options = STRETCH_VARIANTS[-1]
            results[label].append((how, compress_cached(run, folder, **options)))
        for how, r in results[label]:
            print(f"   {how}: {r['ratio']:.1f}x, {r['delta_db']:+.2f} dB, {r['time_s']:.0f} s", flush=True)
    # The in-training route: the compact preset's .skz on the same scene (seed 0), when asked for or trained.
    compact_run = runs_dir / "dense-compact"
    compact_skz = None
    if args.compact or (compact_run / "train_summary.json").is_file():
        dense = scenes(args.out, False, args.scene)["dense"]
        print("== synthetic, compact preset (in-training route)", flush=True)
        train_once(compact_run, "compact", {**dense, "device": "cpu", "background": "black"}, quiet=not args.verbose)
        compact_skz = score(compact_run, ("skz",))[0]
    total = time.perf_counter() - start

    lines = ["| scene | compress | Gaussians | plain PLY | `.skz` | ratio | test PSNR before | after | change | time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    met_all = []
    for label, items in results.items():
        for how, r in items:
            met = r["ratio"] >= TARGET_RATIO and -r["delta_db"] <= TARGET_LOSS_DB
            if how.startswith("default"):
                met_all.append((label, met))
            lines.append(f"| {label} | {how} | {r['gaussians_before']:,} -> {r['gaussians_after']:,} | "
                         f"{r['plain_ply_bytes'] / 1e6:.2f} MB | {r['skz_bytes'] / 1e3:.0f} kB | **{r['ratio']:.1f}x** | "
                         f"{r['psnr_before']:.2f} dB | {r['psnr_after']:.2f} dB | **{r['delta_db']:+.2f} dB** | "
                         f"{r['time_s']:.0f} s |")
    syn = [items[0][1] for label, items in results.items() if label.startswith("synthetic")]
    ratios = np.array([r["ratio"] for r in syn])
    deltas = np.array([r["delta_db"] for r in syn])
    tried = results["synthetic, seed 0"][1:]
    last_how = STRETCH_VARIANTS[-1][0]
    last_all = [r for label, items in results.items() if label.startswith("synthetic")
                for how, r in items if how == last_how]
    reached = [(how, r) for how, r in tried if r["ratio"] >= STRETCH_RATIO and -r["delta_db"] <= TARGET_LOSS_DB]
    # the best attempt: one that meets it, else the smallest loss among those at >= 40x, else the largest ratio
    at_ratio = [(how, r) for how, r in tried if r["ratio"] >= STRETCH_RATIO]
    stretch_how, stretch = (reached[0] if reached else max(at_ratio, key=lambda t: t[1]["delta_db"]) if at_ratio
                            else max(tried, key=lambda t: t[1]["ratio"]))
    base0 = results["synthetic, seed 0"][0][1]
    c_ratio = base0["plain_ply_bytes"] / compact_skz["bytes"] if compact_skz else 0.0
    c_delta = compact_skz["psnr"] - base0["psnr_before"] if compact_skz else -math.inf
    if compact_skz is None:
        verdict = ""
    elif base0["delta_db"] >= c_delta and base0["ratio"] >= c_ratio:
        verdict = "compressing after training is better on both counts (the default route)"
    elif base0["delta_db"] >= c_delta:
        verdict = "compressing after training keeps more quality, the in-training route makes the smaller file"
    else:
        verdict = "the in-training route keeps more quality"
    checks = [
        f"synthetic 400x300, {len(syn)} training seed{'s' if len(syn) > 1 else ''}, default settings: "
        f"{ratios.mean():.1f}x "
        f"(min {ratios.min():.1f}x) at {deltas.mean():+.2f} dB (worst {deltas.min():+.2f} dB); target >= "
        f"{TARGET_RATIO:.0f}x at <= {TARGET_LOSS_DB} dB lost: "
        + ("**met**" if all(m for lab, m in met_all if lab.startswith("synthetic")) else "**NOT met**"),
        f"stretch (>= {STRETCH_RATIO:.0f}x at <= {TARGET_LOSS_DB} dB), seed 0, {len(tried)} settings tried (rows "
        f"above); the best, `{stretch_how}` (keeps {stretch['keep']:.0%}): {stretch['ratio']:.1f}x at "
        f"{stretch['delta_db']:+.2f} dB: " + ("met on seed 0" if reached else "not met"),
        f"the last stretch setting on every synthetic seed ({len(last_all)}): "
        + ", ".join(f"{r['ratio']:.1f}x at {r['delta_db']:+.2f} dB" for r in last_all)
        + f"; mean {np.mean([r['ratio'] for r in last_all]):.1f}x at {np.mean([r['delta_db'] for r in last_all]):+.2f} dB, "
        "compress time " + ", ".join(f"{r['time_s']:.0f} s" for r in last_all) + "; the stretch on every seed: "
        + ("**met**" if all(r["ratio"] >= STRETCH_RATIO and -r["delta_db"] <= TARGET_LOSS_DB for r in last_all)
           else "**not met**"),
        *[f"{lab}: target {'met' if m else 'NOT met'}" for lab, m in met_all if not lab.startswith("synthetic")],
        *[f"{lab}: not measured in this call (its base run had not finished training)" for lab in skipped],
        "compress time at 400x300 (target <= 3 min): "
        + ", ".join(f"{r['time_s']:.0f} s" for r in syn),
    ]
    if compact_skz is None:
        checks.append("the in-training route (`compact` preset) was not run here (`--compact` trains it); its figures "
                      "on the same scene are in the section \"Compression: Compact-3DGS masks, R-VQ and hash-grid colour\"")
    else:
        checks.append(f"the in-training route (`compact` preset, seed 0, same scene): `.skz` {compact_skz['bytes'] / 1e3:.0f} "
                      f"kB = {c_ratio:.1f}x smaller than the plain run's PLY at {c_delta:+.2f} dB "
                      f"({compact_skz['gaussians']:,} Gaussians), against {base0['ratio']:.1f}x at {base0['delta_db']:+.2f} "
                      f"dB for `splatkit compress`: {verdict}")
    stage_lines = ["| stage | Gaussians | bytes | bytes / Gaussian | test PSNR | vs the run |", "|---|---:|---:|---:|---:|---:|"]
    stage_lines.append(f"| the trained run, plain PLY | {base0['gaussians_before']:,} | {base0['plain_ply_bytes']:,} | "
                       f"{base0['plain_ply_bytes'] / base0['gaussians_before']:.1f} | {base0['psnr_before']:.2f} dB | |")
    for st in stages or []:
        stage_lines.append(f"| {st['stage']} | {st['gaussians']:,} | {st['bytes']:,} | {st['bytes'] / st['gaussians']:.1f} | "
                           f"{st['psnr']:.2f} dB | {st['psnr'] - base0['psnr_before']:+.2f} dB |")
    view_lines = ["| file (seed 0, compressed run) | size | vs plain PLY | test PSNR (decoded by our reader) | vs `.skz` |",
                  "|---|---:|---:|---:|---:|"]
    for label, vrows in viewers.items():
        skz_psnr = vrows[0]["psnr"]
        for v in vrows:
            view_lines.append(f"| {v['format']} | {v['bytes'] / 1e3:.0f} kB | {base0['plain_ply_bytes'] / v['bytes']:.1f}x | "
                              f"{v['psnr']:.2f} dB | {v['psnr'] - skz_psnr:+.2f} dB |")
    load_note = "machine load unknown" if load_before is None else f"load average {load_before:.1f} at the start"
    text = f"""## Compression after training: `splatkit compress`

`python scripts/bench_compression.py --posttrain --write` on {machine_info()}; {load_note}; {total / 60:.0f} min in all
(finished base runs and compressions reused; each compression's time was measured when it ran, on a machine
shared with other jobs: upper bounds). Base runs: plain 3DGS, the `fast` schedule with SH degree 3 (the baseline of the
section above), on the 400x300 synthetic scene at training seeds {', '.join(map(str, seeds))}, the real DTU
scan 65 (42 of its 49 views for training, every 8th held out, 400x300) and LLFF fern (x8, 17 training views);
the synthetic runs on black as above, the real ones on the colour `background auto` picked.
`splatkit compress` with its defaults: prune to the 60% most important Gaussians (sum of blending weights over
the training views), 300 fine-tune steps, the SH rest bands coded by a 256-entry codebook (sensitivity-weighted
k-means, Compressed 3DGS), 200 quantisation-aware steps with the assignments frozen, positions at 14 bits and
scales, rotations, DC colour and codebook at 8 bits on per-column grids, opacity 8-bit, Morton order, each
per-Gaussian section delta-coded along that order where that is smaller (`.skz` version 3), zstd.
Ratios are against the run's plain PLY; PSNR is on the held-out views, the compressed model read back from
its `.skz`. For the 40x stretch, seed 0 was also compressed with each setting in its rows below (fewer
Gaussians, fewer bits, longer fine-tunes: the chain's three levers; `--target-ratio` only picks the share
kept), and the last of them on every seed.

{chr(10).join(lines)}

{chr(10).join('* ' + c for c in checks)}

Per stage (synthetic, seed 0; each row's size is the `.skz` of that stage's model: fp16 values before the
quantised rows, SH codes once coded):

{chr(10).join(stage_lines)}

Viewer formats of the compressed run (SOG: PlayCanvas' WebP-packed format, the SH codebook reused as its
palette; SPZ version 3), scored as our readers decode them:

{chr(10).join(view_lines)}
"""
    print(text)
    if args.write:
        print(f"wrote {write_section(POST_SECTION, text)}")


if __name__ == "__main__":
    main()
