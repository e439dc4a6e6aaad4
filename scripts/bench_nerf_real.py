"""The hash-grid NeRF beside 3DGS on the real DTU scans of ``../shared/data``: 3 and 9 views of
the DTU protocol and dense (every view that is not a protocol test view), masked PSNR over the
protocol's test views, one table row per method and view count.

Rows (``--rows``, comma separated; default every one):

* ``3dgs``: the Gaussian method's preset for the view count: at 3 and 9 views ``sparse`` as
  ``scripts/bench_sparse_real.py`` runs it (variant ``all``; its run folders are shared, so runs
  finished there are reused here and the other way round), dense ``cpu`` (what ``splatkit train``
  gives on a CPU without ``--preset``);
* ``nerf``: the ``nerf`` preset; ``nerf-sparse``: the ``nerf-sparse`` preset (coarser, smaller grid);
* ``nerf-sparse+free``: ``nerf-sparse`` with FreeNeRF's frequency and occlusion regularisers
  (``frequency_reg``, ``occlusion_reg`` with its DTU black/white prior).

Every run takes ``--lock`` while it trains and is reused once finished. Pictures (ground truth |
render | error) in ``OUT/<views>/<row>/images``.

    .venv/bin/python scripts/bench_nerf_real.py [--scenes scan65,scan37] [--views 3,9,dense]
        [--rows 3dgs,nerf-sparse,nerf-sparse+free,nerf] [--seeds 0] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_sparse_real import BASE_PRESET, LOCK, SHARED, cases, default_out, heavy_lock, variant_spec  # noqa: E402
from benchdoc import load_average, machine_info, mean_std, write_section  # noqa: E402

SECTION = "bench_nerf_real"
SCENES = ("scan65", "scan37")
GAUSSIAN_STEPS = 3000  # bench_sparse_real's runs (the `sparse` preset's length)
FREE_NERF = {"regularizers": ["frequency_reg", "occlusion_reg"], "plugins": {"occlusion_reg": {"wb_prior": True}}}
# Which rows run at which view counts: the sparse presets at 3 and 9 views, the dense ones on dense.
ROWS = {"3dgs": ("3", "9", "dense"), "nerf-sparse": ("3", "9"), "nerf-sparse+free": ("3", "9"), "nerf": ("dense",)}


def dense_case(case):
    """Every DTU view the protocol does not test on."""
    from splatkit.data.readers._common import list_images

    n, tested = len(list_images(case.data / "image")), set(case.test_ids)
    return dataclasses.replace(case, train_ids=[i for i in range(n) if i not in tested])


def row_preset(row: str, views: str) -> str:
    """The preset a row trains (its name in the table, whether or not it has run yet)."""
    if row == "3dgs":
        return "cpu" if views == "dense" else BASE_PRESET
    return {"nerf-sparse+free": "nerf-sparse"}.get(row, row)


def plan_run(scene: str, views: str, row: str, out: Path):
    """``(spec, case, preset)`` of one cell."""
    from splatkit.eval.benchmark import BenchmarkSpec

    _, case = cases(scene, 3 if views == "dense" else int(views))
    if views == "dense":
        case = dense_case(case)
    if row == "3dgs" and views != "dense":
        # bench_sparse_real's own folder and config, so its finished runs serve both tables.
        return variant_spec("dtu", "all", int(views), GAUSSIAN_STEPS, default_out(int(views), GAUSSIAN_STEPS)), \
            case, BASE_PRESET
    preset = row_preset(row, views)
    overrides = {**(FREE_NERF if row == "nerf-sparse+free" else {}), "preview_every": 0}
    spec = BenchmarkSpec(suite="dtu", out=out / views / row, views=len(case.train_ids), steps=None, device="cpu",
                         overrides=overrides)
    return spec, case, preset


def report(args, results: dict, load) -> str:
    views = [v for v in args.views.split(",") if v]
    scenes = [s for s in args.scenes.split(",") if s]
    lines = ["| views | method | preset | " + " | ".join(f"{s} masked psnr" for s in scenes)
             + " | steps | minutes per run |", "|---|---|---|" + "---|" * (len(scenes) + 2)]
    for v in views:
        for row in [r for r in args.rows.split(",") if v in ROWS[r]]:
            cells, minutes, steps = [], [], set()
            for s in scenes:
                rs = results.get((v, row, s), [])
                vals = [r["mean"]["masked_psnr"] for r in rs]
                cells.append(f"{mean_std(vals)} [{len(vals)}]" if vals else "-")
                minutes += [r["train_time_s"] / 60 for r in rs if r.get("train_time_s")]
                steps |= {r["steps"] for r in rs}
            lines.append(f"| {v} | `{row}` | `{row_preset(row, v)}` | " + " | ".join(cells)
                         + f" | {'/'.join(map(str, sorted(steps))) or '-'} | "
                         + (f"{np.mean(minutes):.1f} |" if minutes else "- |"))
    return f"""## Hash-grid NeRF beside 3DGS on real DTU scans

`python scripts/bench_nerf_real.py --scenes {args.scenes} --views {args.views} --rows {args.rows} --seeds {args.seeds}
--write` on {machine_info()}; load average {'unknown' if load is None else f'{load:.1f}'} at the start (the
machine is shared: times are upper bounds). DTU protocol at 400x300: 3 / 9 views are the protocol's
first 3 / 9 of 25, 22, 28, 40, 44, 48, 0, 8, 13; dense is every view the protocol does not test on
(24 views); masked PSNR over the 25 protocol test views, mean ± std over seeds [how many]. `3dgs` at
3 / 9 views is `scripts/bench_sparse_real.py`'s `all` (the `sparse` preset, same run folders), dense the
`cpu` preset (a plain `splatkit train` on a CPU); `nerf-sparse+free` adds FreeNeRF's frequency and
occlusion regularisers (black/white prior on) to `nerf-sparse`. Each method at its preset's own step
count; minutes: training time (runs shared the 2 cores, 1 thread each). Pictures: `OUT/<views>/<row>/images/`.

{chr(10).join(lines)}
"""


def main() -> None:
    from splatkit.eval.benchmark import _run_done, run_one

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default=",".join(SCENES))
    parser.add_argument("--views", default="3,9,dense", help="comma separated: 3, 9, dense")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "nerf_real")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    parser.add_argument("--lock", type=Path, default=LOCK, help="file locked while a run trains")
    args = parser.parse_args()
    scenes = [s for s in args.scenes.split(",") if s]
    bad = [s for s in scenes if s not in SCENES] + [r for r in args.rows.split(",") if r not in ROWS] + [
        v for v in args.views.split(",") if v not in ("3", "9", "dense")]
    if bad:
        parser.error(f"unknown {bad}: scenes {SCENES}, rows {tuple(ROWS)}, views 3, 9, dense")
    missing = [s for s in scenes if not (SHARED / f"dtu_{s}").is_dir()]
    if missing:
        parser.error(f"{', '.join(missing)} not found under {SHARED}")
    load = load_average()
    results: dict = {}
    for views in args.views.split(","):
        for row in [r for r in args.rows.split(",") if views in ROWS[r]]:
            for scene in scenes:
                spec, case, preset = plan_run(scene, views, row, args.out)
                for seed in (int(s) for s in args.seeds.split(",")):
                    # --report-only never touches a run another process may be training.
                    if args.report_only and not _run_done(spec.out / "runs" / case.name / preset / f"seed{seed}"):
                        continue
                    with nullcontext() if args.report_only else heavy_lock(args.lock):
                        record = run_one(spec, case, preset, seed, print)
                    results.setdefault((views, row, scene), []).append(record)
                    if args.write:
                        write_section(SECTION, report(args, results, load))
    print(report(args, results, load))


if __name__ == "__main__":
    main()
