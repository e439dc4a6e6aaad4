"""Diffusion repair (GaussianObject-style, ``diffusion_repair``): the ``sparse-repair`` preset
against the same preset without the repair (``sparse``), on the synthetic suite (200x150, the
suite's degraded depth priors) and the real DTU scans of ``../shared/data`` (masked DTU protocol),
at 3 / 4 / 9 training views, several seeds; the time each stage of the repair takes; and the
repair model's effect on its own: the ``sparse`` run's renders of the test views, repaired by the
model the ``sparse-repair`` run fine-tuned, scored against the photos, with pictures
(render | repaired | ground truth).

Runs are ``splatkit benchmark`` runs (``run_one``: same configs, same scoring, finished runs
reused, so an interrupted measurement continues where it stopped). With ``--write`` each seed's
figures also go into ``docs/results/bench_repair.json`` (committed), and a seed recorded there whose
run folders are not on this machine is reported from it, not retrained (``--fresh``: retrain).

    .venv/bin/python scripts/bench_repair.py [--scenes object0,scan65] [--views 3,4] [--seeds 0,1,2]
        [--steps 1000] [--set KEY=VALUE ...] [--write] [--pictures]

Runs go to ``OUT/<views>v/[<steps>steps/][<settings>/]runs/`` (the ``sparse`` runs without the
settings folder), so other lengths and settings never reuse each other's runs. ``--pictures`` writes
``docs/images/<section>.jpg`` from the first seed: ground truth | ``sparse`` | repaired |
``sparse-repair``, one row per scene.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import load_average, load_results, machine_info, mean_std, record_result, write_section  # noqa: E402

SECTION = "bench_repair"
SHARED = ROOT.parent / "shared" / "data"
BASE, REPAIR = "sparse", "sparse-repair"


def json_or_text(value: str):
    """A ``--set`` value: JSON (numbers, true, lists) or, when it is not, the text itself (mix=additive)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def tag_value(value) -> str:
    """A setting's value as it names folders and sections: a weights path (model=ours:PATH) by its
    file's stem, so the tag stays one folder name."""
    text = str(value)
    head, sep, path = text.partition(":")
    if sep and ("/" in path or path.endswith(".safetensors")):
        return f"{head}-{Path(path).stem}"
    return text.replace("/", "-")


def repair_settings(sets: list[str]) -> dict:
    """``--set KEY=VALUE ...`` as the plugin's settings."""
    return {k: json_or_text(v) for k, v in (kv.split("=", 1) for kv in sets)}


def setting_tag(sets: list[str]) -> str:
    """The ``--set`` values as one folder and section name (empty for the preset as it is)."""
    return "_".join(f"{k}-{tag_value(v)}" for k, v in sorted(repair_settings(sets).items()))


def effective_setting(sets: list[str], key: str):
    """A ``diffusion_repair`` setting as the ``sparse-repair`` runs use it: ``--set``, else the
    preset's, else the plugin's default."""
    from splatkit.train.config import resolve_config

    return resolve_config({"plugins": {"diffusion_repair": repair_settings(sets)}},
                          preset=REPAIR).plugins["diffusion_repair"].get(key, _plugin_default(key))


def _plugin_default(key: str):
    from splatkit.priors.repair.plugin import DiffusionRepair

    return getattr(DiffusionRepair.Config(), key)


def run_folder(out: Path, views, steps: int, tag: str) -> Path:
    """Where a benchmark's runs of one view count go: other lengths and repair settings get their own
    folders (a finished run is only reused by the benchmark that asked for it)."""
    return out / f"{views}v" / (f"{steps}steps" if steps != 1000 else "") / tag


def case_for(name: str, views: int, out: Path):
    from splatkit.eval.benchmark import dtu_cases, synthetic_cases

    if name.startswith("object"):
        (case,) = synthetic_cases(out / "data", [name[len("object"):]], views)
        return "synthetic", case
    if name.startswith("scan"):
        folder = SHARED / f"dtu_{name}"
        if not folder.is_dir():
            return None, None
        (case,) = dtu_cases(SHARED, [name[len("scan"):]], views)
        return "dtu", dataclasses.replace(case, name=name)
    raise SystemExit(f"unknown scene {name!r} (objectN or scanN)")


def run_repair_model(repair_run: Path):
    """The repair model as the ``sparse-repair`` run left it (its checkpoint's plugin state)."""
    from splatkit.priors.repair.base import load_repair_model
    from splatkit.train.run import Run
    from splatkit.utils.checkpoint import read_payload

    state = read_payload(Run.open(repair_run).checkpoints()[-1], "cpu")["trainer"]["plugins"]["diffusion_repair"]
    settings = json.loads((repair_run / "config.json").read_text()).get("plugins", {}).get("diffusion_repair", {})
    model = load_repair_model(settings.get("model", "ours"), device="cpu")
    model.load_state_dict(state["model"] or {})
    return model


def post_repair(repair_run: Path, base_run: Path, pictures: Path, limit: int = 4) -> dict:
    """The repair model fine-tuned in ``repair_run``, applied to ``base_run``'s test renders:
    PSNR (masked on DTU-style scenes) before and after against the photos; pictures."""
    import torch

    from splatkit.data.imageio_utils import write_image
    from splatkit.eval.benchmark import render_test_views
    from splatkit.metrics import masked_psnr, psnr

    model = run_repair_model(repair_run)
    before, after = [], []
    gen = torch.Generator().manual_seed(0)
    for k, (vid, scene, pos, rgb) in enumerate(render_test_views(base_run)):
        fixed = model.repair(torch.as_tensor(rgb, dtype=torch.float32)[None], strength=0.5, generator=gen)[0].numpy()
        gt = scene.images[pos]
        score = (lambda x: masked_psnr(x, gt, scene.masks[pos])) if scene.masks is not None else (lambda x: psnr(x, gt))
        before.append(score(rgb))
        after.append(score(fixed))
        if k < limit:
            write_image(pictures / f"view{vid:03d}.png", np.concatenate([rgb, fixed, gt], axis=1))
    return {"before": float(np.mean(before)), "after": float(np.mean(after))}


PICTURE_TILE = (300, 225)  # every tile's (width, height): the synthetic objects' and DTU's 4:3


def docs_picture(path: Path, shown: list[tuple[Path, Path]]) -> Path:
    """``path``: one row per (``sparse`` run, ``sparse-repair`` run) pair, their first test view:
    ground truth | ``sparse``'s render | that render repaired by the run's repair model |
    ``sparse-repair``'s render (trained on repaired pseudo views)."""
    import torch

    from splatkit.data.imageio_utils import resize_image, write_image
    from splatkit.eval.benchmark import render_test_views

    rows = []
    for base_run, rep_run in shown:
        ((vid, scene, pos, rgb),) = render_test_views(base_run, limit=1)
        ((rep_vid, _, _, rep_rgb),) = render_test_views(rep_run, limit=1)
        assert rep_vid == vid, "both runs of a seed test the same views"
        fixed = run_repair_model(rep_run).repair(torch.as_tensor(rgb, dtype=torch.float32)[None], strength=0.5,
                                                 generator=torch.Generator().manual_seed(0))[0].numpy()
        tiles = [scene.images[pos], rgb, fixed, rep_rgb]
        rows.append(np.concatenate([resize_image(np.clip(t, 0, 1), *PICTURE_TILE) for t in tiles], axis=1))
    write_image(path, np.concatenate(rows, axis=0))
    return path


def main() -> None:
    from splatkit.eval.benchmark import _run_done

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default="object0,object1,scan65,scan37")
    parser.add_argument("--views", default="3,4")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", nargs="*", default=[], help="extra diffusion_repair settings KEY=VALUE (JSON, or plain text)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "repair")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the scenes, views and seeds whose two runs have finished "
                             "or that docs/results/bench_repair.json records")
    parser.add_argument("--fresh", action="store_true",
                        help="retrain seeds docs/results/bench_repair.json records but this machine lacks")
    parser.add_argument("--pictures", action="store_true",
                        help="write docs/images/<section>.jpg from the first seed's runs (both finished here): "
                             "ground truth | sparse | repaired | sparse-repair, one row per scene and view count")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    views_list = [int(v) for v in args.views.split(",") if v]
    extra = repair_settings(args.set)
    tag = setting_tag(args.set)
    # Each schedule length gets its own section (the presets' own length keeps the plain name).
    section = SECTION + (f"_{tag}" if tag else "") + (f"_{args.steps}steps" if args.steps != 1000 else "")
    load = load_average()
    ledger = load_results(SECTION)
    rows: dict[tuple[str, int], dict] = {}
    shown: list[tuple[Path, Path]] = []  # (sparse, sparse-repair) run folders the picture shows
    for scene in [s for s in args.scenes.split(",") if s]:
        for views in views_list:
            suite, case = case_for(scene, views, args.out)
            if case is None:
                print(f"{scene}: not found under {SHARED}; skipped")
                continue
            metric = "masked_psnr" if suite in ("dtu", "synthetic") else "psnr"
            row = rows.setdefault((scene, views), {"metric": metric, BASE: [], REPAIR: [], "post": [], "times": []})

            def out_for(preset: str) -> Path:
                return run_folder(args.out, views, args.steps, tag if preset == REPAIR else "")

            for seed in seeds:
                key = f"{section}/{scene}/{views}v/seed{seed}"
                done = all(_run_done(out_for(p) / "runs" / case.name / p / f"seed{seed}") for p in (BASE, REPAIR))
                if key in ledger and not done and not args.fresh:
                    entry = ledger[key]  # measured on a machine whose run folders are gone
                elif args.report_only and not done:
                    continue
                else:
                    entry = measure_seed(args, suite, case, seed, out_for, extra, metric, scene, views)
                    # A reused pair is recorded once; re-reading it must not churn the committed ledger.
                    if args.write and (not done or key not in ledger):
                        ledger = record_result(SECTION, key, entry)
                for preset in (BASE, REPAIR):
                    row[preset].append(entry[preset])
                if entry.get("times"):
                    row["times"].append(tuple(entry["times"]))
                row["post"].append(entry["post"])
                text = report(args, rows, load)
                if args.write:  # one section per setting of the repair, so variants stand side by side
                    write_section(section, text)
            first = [out_for(p) / "runs" / case.name / p / f"seed{seeds[0]}" for p in (BASE, REPAIR)] if seeds else []
            if args.pictures and first and all(_run_done(r) for r in first):
                shown.append(tuple(first))
    print(report(args, rows, load))
    if args.pictures:
        if not shown:
            raise SystemExit(f"--pictures: no scene has both runs of seed {seeds[0] if seeds else '-'} on this machine")
        print(f"wrote {docs_picture(ROOT / 'docs' / 'images' / f'{section}.jpg', shown)}")


def measure_seed(args, suite, case, seed, out_for, extra, metric, scene, views) -> dict:
    """Both runs of one seed (trained unless finished), the repair stage times and the repair
    model's effect on the ``sparse`` run's test renders: the seed's ledger entry."""
    from splatkit.eval.benchmark import BenchmarkSpec, run_one

    recs = {}
    for preset in (BASE, REPAIR):
        over = {"preview_every": 0}
        if preset == REPAIR and extra:
            over["plugins"] = {"diffusion_repair": extra}
        spec = BenchmarkSpec(suite=suite, out=out_for(preset), views=views, steps=args.steps, device="cpu",
                             overrides=over)
        recs[preset] = run_one(spec, case, preset, seed, print)
    rep_run, base_run = Path(recs[REPAIR]["run"]), Path(recs[BASE]["run"])
    report_file = rep_run / "repair" / "report.json"
    times = None
    if report_file.is_file():
        rep = json.loads(report_file.read_text())
        times = [rep["pair_seconds"], rep["tune_seconds"], float(np.mean(rep["repair_seconds_per_view"])),
                 recs[REPAIR]["train_time_s"], recs[BASE]["train_time_s"]]
    post = post_repair(rep_run, base_run, out_for(REPAIR) / "pictures" / f"{scene}_{views}v_seed{seed}")
    return {"metric": metric, BASE: recs[BASE]["mean"][metric], REPAIR: recs[REPAIR]["mean"][metric],
            "post": post, "times": times}


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def report(args, rows, load) -> str:
    lines = ["| scene | views | metric | `sparse` | `sparse-repair` | gain | repair alone: before -> after (test renders of `sparse`) |",
             "|---|---|---|---|---|---|---|"]
    tlines = ["| scene | views | pairs (s) | fine-tune (s) | repair per view (s) | run with repair (min) | run without (min) |",
              "|---|---|---|---|---|---|---|"]
    for (scene, views), r in rows.items():
        base, rep = r[BASE], r[REPAIR]
        if not base or not rep:  # --report-only: nothing finished for this scene and view count
            continue
        n = min(len(base), len(rep))
        gains = [b - a for a, b in zip(base[:n], rep[:n])]
        post = "; ".join(f"{p['before']:.2f} -> {p['after']:.2f}" for p in r["post"])
        lines.append(f"| {scene} | {views} | {r['metric'].replace('_', ' ')} | {mean_std(base)} | {mean_std(rep)} | "
                     f"{('+' if np.mean(gains) >= 0 else '') + mean_std(gains) if gains else '-'} | {post or '-'} |")
        if r["times"]:
            t = np.mean(np.array(r["times"], dtype=float), axis=0)
            tlines.append(f"| {scene} | {views} | {t[0]:.0f} | {t[1]:.0f} | {t[2]:.2f} | {t[3] / 60:.1f} | {t[4] / 60:.1f} |")
    title = f" ({', '.join(args.set)})" if args.set else ""
    seeds_note = (" Each row has the seeds whose two runs had finished or that the ledger records (`--report-only`)."
                  if args.report_only else "")
    tuned = (", as pretrained: no per-scene fine-tune" if effective_setting(args.set, "tune_steps") == 0
             else ", fine-tuned per scene on the scene's own pairs")
    weights = next((v.split("=", 1)[1] for v in args.set if v.startswith("model=")), None)
    model = (f"the model `{weights}` (ours: the compact network, with the weights of that file{tuned})" if weights
             else f"the model `ours` (the compact network shipped with splatkit{tuned})")
    pictures = f"{_shown(run_folder(args.out, '<views>', args.steps, setting_tag(args.set)) / 'pictures')}/"
    return f"""## Diffusion repair (GaussianObject-style) against the same preset without it{title}

`python scripts/bench_repair.py --scenes {args.scenes} --views {args.views} --steps {args.steps} --seeds
{args.seeds}{' --set ' + ' '.join(args.set) if args.set else ''}{' --report-only' if args.report_only else ''} --write` on {machine_info()}; load average
{'unknown' if load is None else f'{load:.1f}'} at the start (a shared machine: times are upper bounds).
`sparse-repair` is `sparse` plus `diffusion_repair` with
{model}; both {args.steps} steps, same seeds;
mean ± std over seeds; gain = per-seed difference. Synthetic objects: 200x150, the suite's degraded
depth priors; DTU: 400x300, protocol views, masked PSNR over the protocol's test views. "Repair alone":
the `sparse` run's test renders repaired by the run's repair model (strength 0.5) against the photos,
one entry per seed; pictures render | repaired | ground truth in `{pictures}`; per-seed
figures: `docs/results/{SECTION}.json`.{seeds_note}

{chr(10).join(lines)}

Time per stage (mean over seeds):

{chr(10).join(tlines)}
"""


if __name__ == "__main__":
    main()
