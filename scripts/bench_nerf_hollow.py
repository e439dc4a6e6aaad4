"""HollowNeRF pruning vs plain hash grids (issue #13, section 3): parameters and test PSNR of the
hash-grid NeRF at several hash-table sizes, with and without ``hollow=true``, on the dense
synthetic scene, equal step counts.

Usage: nice -n 10 .venv/bin/python scripts/bench_nerf_hollow.py [--steps 1500] [--plain 14 16 17 19]
           [--hollow 14 16 17] [--seeds 0 1 2] [--budget 0.1 0.2] [--hollow-lr 0.1] [--width 100] [--height 75]
           [--rays 512] [--march-steps 256] [--levels 16] [--max-resolution 1024] [--threads 1]
           [--section bench_nerf_hollow]
           [--out /tmp/bench_nerf_hollow] [--write]

The scene is the demo's (``splatkit data synthetic --preset test``: seed 0, 49 views, every 8th held
out), as ``scripts/bench_nerf.py`` uses, rendered at ``--width`` x ``--height`` (default 100x75, a
quarter of the demo's pixels, so that a table fits a few CPU minutes). Every run is the ``nerf`` preset with
``nerf_log2_hashmap_size`` set, ``--rays`` rays per step, ``--march-steps`` and ``--steps`` steps
(nerfacc's LR schedule fitted to them);
HollowNeRF runs add ``hollow=true hollow_budget=B``. Parameters: the trained field's (hash table +
MLPs, + the saliency grid for HollowNeRF), and for HollowNeRF also what its compact export keeps
(table rows only pruned cells reach and saliency values no kept cell reads dropped; the rendered
views are unchanged by it, tests/test_nerf_hollow.py). Every run's row is kept in
``docs/results/bench_nerf_hollow.json`` under its settings: the table gathers the rows of every
invocation with the same settings (runs side by side, machines since gone), and a restarted one
skips what is there. Issue #13's target (the paper's claim):
HollowNeRF at <= 31% of the parameters of the 2^19 plain grid scores >= its PSNR - 0.1 dB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchdoc import load_average, load_results, machine_info, mean_std, record_result, write_section  # noqa: E402

from bench_nerf import train_within  # noqa: E402
from splatkit.render.cpu_backend import set_kernel_threads  # noqa: E402
from splatkit.train import resolve_config  # noqa: E402
from splatkit.train.trainer import Trainer  # noqa: E402

SECTION = "bench_nerf_hollow"
# Every run's row goes into docs/results/bench_nerf_hollow.json (committed) under its settings, so
# a table survives the machine its runs were measured on and a restarted invocation skips them.
LEDGER = "bench_nerf_hollow"


def settings_key(args) -> str:
    """What makes rows comparable: the scene, the schedule and HollowNeRF's shared settings."""
    return (f"{torch.device(args.device).type}/{args.steps}steps/{args.width}x{args.height}/{args.rays}rays/"
            f"{args.march_steps}march/{args.levels}levels-{args.max_resolution}/lr{args.hollow_lr:g}/"
            f"init{args.hollow_init:g}/rho{args.rho if args.rho is not None else 'default'}/"
            f"rhodec{args.rho_decoupled if args.rho_decoupled is not None else 'default'}")


def row_key(settings: str, r: dict) -> str:
    what = (f"hollow{r['budget']:g}-{r.get('solver') or 'adam'}" if r["hollow"]
            else f"prune{r['prune']:g}-{r['scope']}-{r['window']}" if r.get("prune") else "plain")
    return f"{settings}/{what}-2^{r['log2_t']}/seed{r.get('seed', 0)}"


def _scene(root: Path, width: int, height: int) -> Path:
    from splatkit.data.synthetic import write_synthetic_scene

    path = root / f"scene-{width}x{height}"
    if not (path / "meta.json").is_file():
        write_synthetic_scene(path, seed=0, width=width, height=height)
    return path


def run_one(scene: Path, out: Path, log2_t: int, steps: int, hollow: bool, budget: float, seed: int,
            rays: int, march_steps: int, hollow_lr: float, rho: float | None, hollow_init: float, levels: int,
            max_resolution: int, solver: str = "adam", device: str = "cpu", max_seconds: float | None = None,
            prune: tuple[float, str, float, float] | None = None) -> dict:
    values = {"data": scene, "method": "nerf", "steps": steps, "seed": seed, "out": out, "device": device,
              "checkpoint_every": 0, "preview_every": 0, "log_every": 25, "nerf_log2_hashmap_size": log2_t,
              "nerf_rays": rays, "nerf_march_steps": march_steps,
              "nerf_levels": levels, "nerf_max_resolution": max_resolution}
    if hollow:
        values.update({"hollow": True, "hollow_budget": budget, "hollow_lr": hollow_lr, "hollow_init": hollow_init,
                       "hollow_solver": solver})
        if rho is not None:
            values["hollow_rho"] = rho
    if prune is not None:  # gradual magnitude pruning of the table (splatkit/models/table_prune.py)
        keep, scope, start, end = prune
        values.update({"nerf_prune_keep": keep, "nerf_prune_scope": scope, "nerf_prune_start": start,
                       "nerf_prune_end": end})
    trainer = Trainer(resolve_config(values, preset="nerf"), quiet=True)
    t0 = time.process_time()
    summary = train_within(trainer, max_seconds)  # a wall-clock guard for leased GPU time
    cpu_s = time.process_time() - t0
    log = [json.loads(line) for line in (trainer.run.path / "train_log.jsonl").read_text().splitlines()]
    late = [r for r in log if r["step"] > steps // 2] or log
    row = {"log2_t": log2_t, "hollow": hollow, "steps": trainer.step, "train_s": summary["train_time_s"],
           "cpu_s": cpu_s, "psnr": summary["mean"]["psnr"], "ssim": summary["mean"]["ssim"],
           "params": trainer.method.num_primitives,
           # (a run the wall-clock guard stopped before its first log record: the last step's count)
           "samples": sum(r["samples"] for r in late) / len(late) if late else trainer.method.last_samples}
    if hollow or prune is not None:
        exp = summary["compact_export"]
        row.update({"params_export": exp["parameters"], "table_rows": exp["table_rows"],
                    "table_rows_total": exp["table_rows_total"]})
    if hollow:
        sal = trainer.method.model.field.saliency  # its state at the last step
        with torch.no_grad():
            row.update({"mass": float(sal.mass()), "kept_cells": float(sal.kept_cells().float().mean())})
    if prune is not None:
        row.update({"prune": prune[0], "scope": prune[1], "window": f"{prune[2]:g}-{prune[3]:g}"})
    return row


def model_of(r: dict) -> tuple:
    """A row's model: (kind, its settings); kinds in table order (0 plain, 1 HollowNeRF, 2 pruned)."""
    if r["hollow"]:
        return 1, r.get("budget") or 0, r.get("solver") or "adam"
    if r.get("prune"):
        return 2, r["prune"], f"{r['scope']} {r['window']}"
    return 0, 0, "adam"


def summarize(rows: list[dict], gpu: bool = False) -> tuple[dict, list[str], list[str], float | None]:
    """The table of ``rows`` (one line per table size and model, means over seeds), the rows that
    meet issue #13's target, and the 2^19 plain grid's mean PSNR (``None`` without one)."""
    groups: dict[tuple, list[dict]] = {}
    def order(r):
        kind, setting, variant = model_of(r)
        return kind, variant, setting, r["log2_t"], r.get("seed", 0)

    for r in sorted(rows, key=order):
        groups.setdefault((*model_of(r), r["log2_t"]), []).append(r)
    ref_rows = groups.get((0, 0, "adam", 19))

    def mean_of(rs, field):
        return sum(r[field] for r in rs) / len(rs)

    ref_psnr = mean_of(ref_rows, "psnr") if ref_rows else None
    ref_params = ref_rows[0]["params"] if ref_rows else None

    def pct(n):
        return f"{100 * n / ref_params:.0f}%" if ref_params else "n/a"

    def paired(rs, base):
        """PSNR difference to ``base`` on the seeds both have (a seed moves these runs by up to a few
        tenths of a dB), and its label: the seeds named when they are not both rows' seeds."""
        by_seed = {r.get("seed", 0): r["psnr"] for r in base}
        diffs = {r.get("seed", 0): r["psnr"] - by_seed[r.get("seed", 0)] for r in rs if r.get("seed", 0) in by_seed}
        if not diffs:
            return None, "n/a"
        d = sum(diffs.values()) / len(diffs)
        common = sorted(diffs)
        same = len(common) == len(rs) == len(base)
        return d, f"{d:+.2f}" if same else f"{d:+.2f} at seed{'s' if len(common) > 1 else ''} {', '.join(map(str, common))}"

    table, met = [], []
    for (kind, budget, solver, k), rs in groups.items():
        hollow, compact = kind == 1, kind != 0
        final = round(mean_of(rs, "params_export")) if compact else rs[0]["params"]
        what = (f"HollowNeRF, budget {budget:g}{', decoupled' if solver == 'decoupled' else ''}" if hollow
                else f"magnitude-pruned to {100 * budget:g}% of rows ({solver})" if compact else "plain")
        rows_kept = (f"{100 * mean_of(rs, 'table_rows') / rs[0]['table_rows_total']:.1f}%" if compact else "all")
        pruned = (f"{mean_of(rs, 'mass'):.3f} / {100 * mean_of(rs, 'kept_cells'):.0f}%" if hollow else "-")
        ref_diff, delta = paired(rs, ref_rows) if ref_rows else (None, "n/a")
        same_t = groups.get((0, 0, "adam", k)) if compact else None  # the plain grid of the same size
        vs_plain = paired(rs, same_t)[1] if same_t else "-"
        seeds = ", ".join(str(r.get("seed", 0)) for r in rs)
        trained = f"{mean_of(rs, 'train_s'):.0f} s"
        if gpu:  # GPU runs stop at a wall-clock guard: say how far each got
            trained = "/".join(format(r["steps"], ",") for r in rs) + f" steps, {trained}"
        table.append(f"| 2^{k} | {what} | {seeds} | {trained} | {mean_std([r['psnr'] for r in rs])} "
                     f"({delta}) | {vs_plain} | {rs[0]['params']:,} | {rows_kept} | {final:,} ({pct(final)}) | {pruned} | "
                     f"{mean_of(rs, 'samples'):,.0f} |")
        if compact and ref_diff is not None and final <= 0.31 * ref_params and ref_diff >= -0.1:
            how = f"at budget {budget:g}, {solver} solver" if hollow else f"magnitude-pruned to {100 * budget:g}% ({solver})"
            met.append(f"2^{k} {how} ({pct(final)} of the parameters, {delta} dB)")
    return groups, table, met, ref_psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--plain", type=int, nargs="*", default=[14, 16, 17, 19], help="log2 table sizes, plain grids")
    ap.add_argument("--hollow", type=int, nargs="*", default=[14, 16, 17], help="log2 table sizes, HollowNeRF")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="a run per seed and size")
    ap.add_argument("--budget", type=float, nargs="+", default=[0.1], help="hollow_budget (a row per value)")
    ap.add_argument("--hollow-lr", type=float, default=0.1, help="hollow_lr (default of the option: 0.05)")
    ap.add_argument("--hollow-init", type=float, default=0.5, help="hollow_init (initial saliency)")
    ap.add_argument("--rho", type=float, default=None, help="hollow_rho of the adam solver (default: the option's)")
    ap.add_argument("--solver", nargs="+", default=["adam"], choices=["adam", "decoupled"],
                    help="hollow_solver (a row per value)")
    ap.add_argument("--rho-decoupled", type=float, default=None,
                    help="hollow_rho of the decoupled solver (default: the option's)")
    ap.add_argument("--pruned", type=int, nargs="*", default=[],
                    help="log2 table sizes, plain grids with gradual magnitude pruning (nerf_prune_keep < 1)")
    ap.add_argument("--keep", type=float, nargs="+", default=[0.3],
                    help="nerf_prune_keep of the --pruned rows (a row per value; 0.3 of the 2^19 grid's rows is "
                    "30%% of its parameters)")
    ap.add_argument("--scope", nargs="+", default=["global"], choices=["global", "level"],
                    help="nerf_prune_scope (a row per value)")
    ap.add_argument("--prune-window", type=float, nargs=2, default=[0.2, 0.5], metavar=("START", "END"),
                    help="nerf_prune_start, nerf_prune_end")
    ap.add_argument("--width", type=int, default=100, help="scene width (the demo's: 200)")
    ap.add_argument("--height", type=int, default=75, help="scene height (the demo's: 150)")
    ap.add_argument("--rays", type=int, default=512, help="nerf_rays (preset: 1024)")
    ap.add_argument("--march-steps", type=int, default=256, help="nerf_march_steps (preset: 512)")
    # The paper compares table sizes on a 16-level grid (the nerf preset's, sized for a CPU: 12 / 512).
    ap.add_argument("--levels", type=int, default=16, help="nerf_levels (preset: 12)")
    ap.add_argument("--max-resolution", type=int, default=1024, help="nerf_max_resolution (preset: 512)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (nerfacc's kernels)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop a run after this much training (its steps column says where); default: none")
    ap.add_argument("--section", default=SECTION, help="docs/benchmarks.md section to write")
    ap.add_argument("--title", default="", help="words added to the section's heading (another section than the "
                    "main one: what sets its runs apart)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and kernel threads per run (1: runs side by side, one per core)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_nerf_hollow"))
    ap.add_argument("--reuse", type=Path, nargs="*", default=[],
                    help="rows.json files of earlier runs: their rows are reused (same settings assumed)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: the table of the --reuse rows (runs gathered from parallel invocations)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_kernel_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # invocations may start side by side
    scene = _scene(args.out, args.width, args.height)
    load = load_average()
    t_start = time.time()

    window = f"{args.prune_window[0]:g}-{args.prune_window[1]:g}"

    def key(r):  # a row: table size, model, seed
        return r["log2_t"], model_of(r), r.get("seed", 0)

    settings = settings_key(args)
    rows: list[dict] = [r for k, r in load_results(LEDGER).items() if k.startswith(settings + "/")]
    if rows:
        print(f"the ledger has {len(rows)} rows with these settings")
    for path in args.reuse:  # rows of earlier runs of this script (same scene and settings)
        got = [r for r in json.loads(path.read_text()) if key(r) not in {key(q) for q in rows}]
        rows += got
        for r in got:
            record_result(LEDGER, row_key(settings, r), r)
        print(f"reusing {len(got)} rows from {path}")
    done = {key(r) for r in rows}
    ran = 0
    root.mkdir(parents=True, exist_ok=True)
    for seed in [] if args.report_only else args.seeds:
        runs = ([((0, 0, "adam"), k) for k in args.plain]
                + [((1, b, s), k) for s in args.solver for b in args.budget for k in args.hollow]
                + [((2, keep, f"{scope} {window}"), k) for scope in args.scope for keep in args.keep
                   for k in args.pruned])
        for model, k in runs:  # models as model_of names them
            if (k, model, seed) in done:
                continue
            kind, setting, variant = model
            hollow, pruning = kind == 1, kind == 2
            budget, solver = (setting, variant) if hollow else (None, None)
            scope = variant.split()[0]
            label = (f"hollow{budget:g}{'' if solver == 'adam' else '-' + solver}" if hollow
                     else f"prune{setting:g}-{scope}" if pruning else "plain")
            rho = args.rho if solver == "adam" else args.rho_decoupled
            r = run_one(scene, root / f"{label}-2^{k}-seed{seed}", k, args.steps, hollow, budget, seed, args.rays,
                        args.march_steps, args.hollow_lr, rho, args.hollow_init, args.levels, args.max_resolution,
                        solver or "adam", args.device, args.max_minutes and args.max_minutes * 60,
                        prune=(setting, scope, *args.prune_window) if pruning else None)
            r.update(seed=seed, budget=budget, solver=solver)
            rows.append(r)
            ran += 1
            record_result(LEDGER, row_key(settings, r), r)
            print(label, k, seed, r, flush=True)
            (root / "rows.json").write_text(json.dumps(rows, indent=1))
    gpu = torch.device(args.device).type == "cuda"
    groups, table, met, ref_psnr = summarize(rows, gpu)
    verdict = ("n/a (no plain 2^19 run)" if ref_psnr is None
               else "**met** by " + ", ".join(met) if met else "not met in these runs")
    from splatkit.models.hollow import RHO_BY_SOLVER

    rho_used = RHO_BY_SOLVER["adam"] if args.rho is None else args.rho
    rho_decoupled = RHO_BY_SOLVER["decoupled"] if args.rho_decoupled is None else args.rho_decoupled
    minutes = (time.time() - t_start) / 60
    earlier = len(rows) - ran  # rows of the ledger or of --reuse files, measured by earlier invocations
    when = (f"load average {load if load is None else round(load, 1)} at the start, {minutes:.0f} min in all"
            if not earlier else f"{ran} of the {len(rows)} rows run by this invocation, the others gathered from "
            "earlier ones with the same settings (docs/results/bench_nerf_hollow.json; runs side by side, one "
            "per core)")
    cpu_min = sum(r["cpu_s"] for r in rows) / 60  # process CPU time of each run (training + scoring)
    all_seeds = sorted({r.get("seed", 0) for r in rows})
    plain_sizes = sorted({k for h, _, _, k in groups if h == 0})
    hollow_sizes = sorted({k for h, _, _, k in groups if h == 1})
    budgets = sorted({b for h, b, _, _ in groups if h == 1}) or args.budget
    solvers = sorted({s for h, _, s, _ in groups if h == 1}) or args.solver
    pruned_sizes = sorted({k for h, _, _, k in groups if h == 2})
    keeps = sorted({b for h, b, _, _ in groups if h == 2})
    scopes = sorted({s.split()[0] for h, _, s, _ in groups if h == 2})
    windows = sorted({s.split()[1] for h, _, s, _ in groups if h == 2})
    prune_args = (f" --pruned {' '.join(map(str, pruned_sizes))} --keep {' '.join(f'{v:g}' for v in keeps)}"
                  f"{' --scope ' + ' '.join(scopes) if scopes != ['global'] else ''}"
                  f"{' --prune-window ' + windows[0].replace('-', ' ') if windows != ['0.2-0.5'] else ''}"
                  if pruned_sizes else "")
    guard = f" --device {args.device}{f' --max-minutes {args.max_minutes:g}' if args.max_minutes else ''}"
    if gpu:
        guarded = f", each stopped after at most {args.max_minutes:g} min of training" if args.max_minutes else ""
        when = (f"{len(args.reuse)} runs side by side on the one GPU (one process each, gathered with "
                f"--reuse){guarded}" if args.reuse else when)
    # The main CPU section carries the provenance and tuning notes; other sections point to it.
    brief = gpu or args.section != SECTION
    title = ", ".join(t for t in ("synthetic scene", args.device if gpu else "", args.title) if t)
    header = f"## HollowNeRF pruning vs plain hash grids ({title})"
    text = "\n".join([
        header,
        "",
        f"`{'' if gpu else 'nice -n 10 '}python scripts/bench_nerf_hollow.py --steps {args.steps} --plain "
        f"{' '.join(map(str, plain_sizes))} --hollow {' '.join(map(str, hollow_sizes))} --seeds "
        f"{' '.join(map(str, all_seeds))} --budget {' '.join(f'{b:g}' for b in budgets)} "
        f"--hollow-lr {args.hollow_lr:g} --width {args.width} --height {args.height} --threads {args.threads} "
        f"--rays {args.rays} --march-steps {args.march_steps} --levels {args.levels} --max-resolution "
        f"{args.max_resolution}{' --rho ' + format(args.rho, 'g') if args.rho else ''}"
        f"{' --solver ' + ' '.join(solvers) if solvers != ['adam'] else ''}"
        f"{' --rho-decoupled ' + format(args.rho_decoupled, 'g') if args.rho_decoupled else ''}{prune_args}"
        f"{guard if gpu else ''}{'' if args.section == SECTION else ' --section ' + args.section}"
        f"{' --title ' + repr(args.title) if args.title else ''} --write` on {machine_info()}; {when}{'. ' if gpu else '; '}"
        + ("" if gpu else f"{cpu_min:.0f} CPU-min of training and scoring for these rows (a shared machine: training "
           "times are wall-clock and noisy). ")
        + "The demo's scene (seed 0, 42 train / "
        "7 test views) rendered at "
        f"{args.width}x{args.height} (the demo's: 200x150), preset "
        f"`nerf` with {args.levels} levels up to {args.max_resolution} cells (64^3 occupancy grid), "
        f"`nerf_log2_hashmap_size` = log2 T and{'' if gpu else ', to fit a shared 2-core CPU,'} {args.rays} rays "
        f"per step and {args.march_steps} steps along the box diagonal (preset: 1024, 512), **{args.steps} steps "
        "per run** (nerfacc's LR schedule over them"
        + ("; a run the guard stopped earlier ends with its LR undecayed" if gpu else "")
        + "), one run per seed (the seeds column); the rows' figures are means "
        "over their seeds. Test PSNR as `splatkit eval` scores it (mean ± std), and its difference to the 2^19 "
        "plain grid, paired by seed (the mean of the per-seed differences on the seeds both rows have, named when "
        "they are not all of both rows' seeds). Parameters: of the trained field (HollowNeRF: + the 64^3 saliency grid); after export: "
        "HollowNeRF's compact export (hash-table rows that only pruned cells reach and saliency values that no "
        "kept cell reads dropped; renders unchanged), as a share of the 2^19 plain grid. "
        + (f"Magnitude-pruned rows: a plain grid trained with `nerf_prune_keep` (gradual magnitude pruning, Zhu & "
           f"Gupta 2018: the table rows with the smallest norms zeroed on a cubic schedule between "
           f"{windows[0].split('-')[0]} and {windows[0].split('-')[1]} of the run until the kept share is left, "
           "splatkit/models/table_prune.py), its export dropping the zero rows (the bit mask of kept rows, 1 bit "
           "per row, is not counted as parameters, as for HollowNeRF's export). " if pruned_sizes else "")
        + "Saliency: the grid's "
        "mean sigmoid (the ADMM-constrained L1 mass) / kept saliency cells at the end. Samples: marched samples "
        "per step, mean over the second half. Per-run figures: `docs/results/bench_nerf_hollow.json`, "
        f"settings `{settings}`.",
        "",
        "| T | model | seeds | training time | test PSNR (vs 2^19 plain) | vs plain, same T | parameters trained "
        "| table rows kept | parameters after export | saliency mass / kept cells | samples / step |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *table,
        "",
        f"Issue #13's target (the paper's claim: HollowNeRF at <= 31% of the 2^19 grid's parameters within 0.1 dB "
        f"of its PSNR): {verdict}. A plain grid of HollowNeRF's size is itself below the 2^19 grid (the plain rows of "
        "smaller T), so the target asks the saliency grid to win that difference back: the paper's mechanism is "
        "collision mitigation (hash-table rows shared with empty space stop serving it once its saliency is "
        "zero). The 'vs plain, same T' column is that gain, paired by seed in the same way; single-"
        "seed rows are indicative only, since a seed moves one of these runs by about the std shown. "
        + ("The section \"HollowNeRF pruning vs plain hash grids (synthetic scene)\" says which details "
           "came from the paper and which are ours, and how the settings were tuned." if brief else
           "These are short CPU runs (the paper trains 300k steps on a GPU); they compare the models at equal "
           "steps. From the paper: the saliency grid "
        "(64^3, trilinear + sigmoid, multiplying the hash features), the soft zero-skip gate tanh(alpha ||v||) "
        "with alpha 1e4 then 1e5, the ADMM pruner's augmented-Lagrangian loss and dual ascent, the budget "
        "C = 0.04 of the paper (a mean; this table's budget is ours, see below). Ours: the budget here, "
        f"rho = {rho_used:g}, "
        f"the saliency LR (here {args.hollow_lr:g}, on the nerf schedule; the option's default is 0.05), "
        f"initial saliency {args.hollow_init:g}, the 0.01 keep threshold (samples below "
        "it are skipped by the C++ kernel), the gate switch at a third of the run, the gate's gradient "
        "reaching the saliency but not the hash features, and the exact AND into the "
        "occupancy grid and row dropping at export. The `decoupled` rows (`hollow_solver=decoupled`, ours, "
        f"rho = {rho_decoupled:g}) apply the augmented Lagrangian's pull on the logits beside Adam, as AdamW "
        "decouples weight decay, instead of through it (splatkit/models/hollow.py says why); every other row "
        "uses the paper's single Adam."),
    ] + ([] if brief else [
        "",
        "Tuning before this table (16 levels up to 1024, 100x75, 512 rays, 300 steps; not rows here). "
        "rho, at 2^14: rho = 1 pruned 99.9% of the "
        "cells (9.9 dB), rho = 0.1 / 0.01 / 0.001 scored 15.4 / 18.1 / 18.7 dB: the render loss's gradients on "
        "the saliency logits are ~1e-9, so a dual variable of even 0.1 drives the mass (through Adam, at the "
        "saliency LR) far below the budget everywhere. The gate, at 2^17 (plain 2^17 / 2^19: 22.73 / 22.75 dB, "
        "seed 0): with the paper's gate differentiated through the hash features as well, HollowNeRF "
        "scored 22.02 dB (initial saliency 0.5) and 22.36-22.44 (0.95 or 0.99, saliency LR 0.02 to 0.1, budget "
        "0.1 or 0.2); with the saliency frozen at 0.99 and no pruning (only the gate left) still 22.35, and, "
        "pruning on, 21.63 at seed 1 (plain 22.57), while with a hard 0/1 gate (saliency frozen, or pruning on) it scored 22.74. The gate's "
        "gradient through the features (~1e4 times the render loss's while the features are small) steers "
        "the table's Adam updates; with it routed to the saliency only (the value unchanged): 22.74 / 22.76 "
        "dB (initial saliency 0.99 / 0.5), pruning on, and at seed 1 with the saliency frozen at 0.99 22.56 (plain "
        "22.57). Rows kept: even with every cell kept some rows of the "
        "hashed levels are reached by no vertex (1.3% at 2^17), which a plain grid carries too.",
        "",
        "The decoupled solver (1500 steps, 2^17, budget 0.1, seed 0; plain 2^17 scores 28.85 at that seed, the "
        "paper's solver 27.40): it was tried because with the paper's single Adam the saliency is squeezed "
        "uniformly (7% of the values above 0.5 at budget 0.1) rather than split into kept and pruned cells. "
        "Beside Adam the pull did not split it either, and cost more: 25.91 dB at rho = 0.01 and 25.42 at "
        "rho = 0.05 (`--rho-decoupled 0.05`), with 0.4% / 0.1% of the values above 0.9 and 8.6% / 15.2% above "
        "0.1 at the end (mass 0.043 / 0.053, under the budget). Read: the render loss does not hold a cell's "
        "saliency up, because v = p f is what it sees and the hash features grow as p shrinks; the shrunken p "
        "then slows how fast v learns there. A toy problem where the saliency alone serves the loss behaves as "
        "designed (tests/test_nerf_hollow.py), the field does not.",
    ]))
    print(text)
    if args.write:
        section = args.section if not gpu or args.section != SECTION else f"{SECTION}_{torch.device(args.device).type}"
        print(f"wrote {write_section(section, text)}")


if __name__ == "__main__":
    main()
