"""Sparse views on real photos: each network-free technique added to plain 3DGS, and all of them
together, on the real scenes of ``../shared/data`` (DTU scans 65 and 37, masked DTU protocol;
LLFF fern at x8, LLFF protocol), scored as ``splatkit benchmark`` scores (same runs, same pictures).

Variants (``--variants``), all on the ``sparse`` preset's schedule and initialisation with its
plugins removed (``plain``: random init of 10k points in the sphere every camera sees, SH degree 1,
densification from steps/60 to steps/2, no depth prior):

* ``plain``; ``+opacity_decay`` (Binocular3DGS x0.995 per step, densifying to the end as its
  authors do); ``+warp`` (Binocular3DGS warp consistency); ``+dark_backdrop`` (DTU only);
  ``+triangulated`` (``init="triangulated"``); ``+dropout`` (DropGaussian); ``all`` (every one of
  these that applies to the scene);
* measured apart and not in ``all``: ``+co_reg`` (CoR-GS: a second field, co-pruning, pseudo-view
  co-regularisation, about twice a plain run's time; DTU settings of its authors, LLFF's on fern);
  ``+dark_exclude`` (DTU only: ``dark_backdrop`` with the backdrop also left out of the
  photometric loss, as CoR-GS does on DTU).

Each run takes ``/tmp/splatkit-heavy.lock`` while it trains (the machine is shared), finished runs
are reused, so an interrupted measurement continues where it stopped. Pictures (ground truth |
render | error) are in ``OUT/<variant>/images``.

    .venv/bin/python scripts/bench_sparse_real.py [--scenes scan65,scan37,fern] [--steps 600]
        [--seeds 0,1,2] [--variants plain,+warp] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import load_average, machine_info, mean_std, write_section  # noqa: E402

SECTION = "bench_sparse_real"
SHARED = ROOT.parent / "shared" / "data"
LOCK = Path("/tmp/splatkit-heavy.lock")
BASE_PRESET = "sparse"
SCENES = {"scan65": ("dtu", "dtu_scan65"), "scan37": ("dtu", "dtu_scan37"), "fern": ("llff", "llff_fern")}


def variants(steps: int, dtu: bool) -> dict[str, dict]:
    decay = {"regularizers": ["opacity_decay"], "refine_stop_iter": steps}
    out = {"plain": {"regularizers": []}, "+opacity_decay": decay,
           "+warp": {"regularizers": ["warp_consistency"]}, "+triangulated": {"regularizers": [], "init": "triangulated"},
           "+dropout": {"regularizers": ["dropout"]}}
    if dtu:
        out["+dark_backdrop"] = {"regularizers": ["dark_backdrop"]}
    regs = [r for v in out.values() for r in v.get("regularizers", [])]
    out["all"] = {"regularizers": list(dict.fromkeys(regs)), "refine_stop_iter": steps, "init": "triangulated"}
    # Measured apart (not in "all"): CoR-GS' second field, and the backdrop left out of the loss.
    from splatkit.priors.co_regularization import PRUNE_THRESHOLD_LLFF, PSEUDO_START_LLFF

    out["+co_reg"] = {"regularizers": ["co_reg"]} if dtu else {
        "regularizers": ["co_reg"],
        "plugins": {"co_reg": {"start": PSEUDO_START_LLFF, "prune_threshold": PRUNE_THRESHOLD_LLFF}}}
    if dtu:
        out["+dark_exclude"] = {"regularizers": ["dark_backdrop"],
                                "plugins": {"dark_backdrop": {"exclude_from_loss": True}}}
    return out


@contextmanager
def heavy_lock():
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cases(name: str, views: int):
    from splatkit.eval.benchmark import dtu_cases, llff_cases

    suite, folder = SCENES[name]
    if suite == "dtu":
        (case,) = dtu_cases(SHARED, [folder.split("scan")[-1]], views)
    else:
        (case,) = llff_cases(SHARED, [folder], views)
    return suite, dataclasses.replace(case, name=name)


def main() -> None:
    from splatkit.eval.benchmark import BenchmarkSpec, run_one

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default="scan65,scan37,fern")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=None, help="comma separated (default: every one)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "sparse_real")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    scenes = [s for s in args.scenes.split(",") if s]
    unknown = sorted(set(scenes) - set(SCENES))
    if unknown:
        parser.error(f"unknown scenes {unknown}; choose from {', '.join(SCENES)}")
    missing = [s for s in scenes if not (SHARED / SCENES[s][1]).is_dir()]
    if missing:
        parser.error(f"{', '.join(missing)} not found under {SHARED}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    load = load_average()
    results: dict[tuple[str, str], list[dict]] = {}
    plan = []
    for scene in scenes:
        suite, case = cases(scene, args.views)
        table = variants(args.steps, suite == "dtu")
        chosen = [v for v in (args.variants.split(",") if args.variants else table) if v in table]
        plan += [(scene, suite, case, v, table[v]) for v in chosen]
    order = list(dict.fromkeys(v for _, _, _, v, _ in plan))
    for scene, suite, case, variant, overrides in plan:
        spec = BenchmarkSpec(suite=suite, out=args.out / variant, views=args.views, steps=args.steps,
                             device="cpu", overrides={**overrides, "preview_every": 0})
        for seed in seeds:
            with heavy_lock():
                record = run_one(spec, case, BASE_PRESET, seed, print)
            results.setdefault((scene, variant), []).append(record)
            # The section is rewritten after every run: a long measurement shows what has finished.
            text = report(args, scenes, order, results, load, len(plan) * len(seeds))
            if args.write:
                write_section(SECTION, text)
    print(text)


def report(args, scenes, order, results, load, planned: int) -> str:
    lines = ["| scene | metric | " + " | ".join(f"`{v}`" for v in order) + " |", "|---|---|" + "---|" * len(order)]
    for scene in scenes:
        metric = "masked_psnr" if SCENES[scene][0] == "dtu" else "psnr"
        base = [r["mean"][metric] for r in results.get((scene, "plain"), [])]
        cells = []
        for v in order:
            vals = [r["mean"][metric] for r in results.get((scene, v), [])]
            delta = "" if v == "plain" or not vals or not base else f" ({np.mean(vals) - np.mean(base):+.2f})"
            cells.append(mean_std(vals) + delta)
        lines.append(f"| {scene} | {metric.replace('_', ' ')} | " + " | ".join(cells) + " |")
    times = [f"{scene} `{v}` {np.mean([r['train_time_s'] for r in rs]) / 60:.1f}"
             for (scene, v), rs in results.items() if all(r.get("train_time_s") for r in rs)]
    done = sum(len(rs) for rs in results.values())
    return f"""## Sparse views on real photos: each technique added to plain 3DGS

`python scripts/bench_sparse_real.py --scenes {args.scenes} --steps {args.steps} --seeds {args.seeds}
{'' if args.variants is None else f'--variants {args.variants} '}--write` on {machine_info()}; load
average {'unknown' if load is None else f'{load:.1f}'} at the start (the machine is shared: times are
upper bounds). {args.views} training views (DTU: ids 25, 22, 28, masked PSNR over the 25 protocol test
views; fern: x8, every 8th image held out, PSNR), {args.steps} steps, seed(s) {args.seeds}, mean ± std
over seeds, difference to `plain` in brackets; {done} of {planned} planned runs finished ("-": not
run yet). `plain` is the `sparse` preset without its plugins (random init of 10k points, SH degree 1,
no depth prior); every other column adds one technique (see the script's doc), `all` adds all of
them but `+co_reg` and `+dark_exclude`. Pictures (ground truth | render | error): `OUT/<variant>/images/`.

{chr(10).join(lines)}

Training minutes per run: {'; '.join(times) or '-'}.
"""


if __name__ == "__main__":
    main()
