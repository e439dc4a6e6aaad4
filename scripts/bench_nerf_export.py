"""NeRF exports measured (issue #13): the mesh and the Gaussians `splatkit export` makes from a
finished NeRF run, and the test PSNR of those Gaussians (decoded from their files) beside the NeRF's.

    .venv/bin/python scripts/bench_nerf_export.py --run RUN [--resolution 256] [--finetune-steps 500]
        [--write]

``RUN`` is any finished ``--method nerf`` run (training a NeRF on this CPU takes tens of minutes, so
the script measures a run it is given; its config and training time are quoted in the section).
Files go to ``RUN/export/bench_*``; PSNR is scored as ``splatkit eval`` scores (``evaluate_run``),
masked PSNR where the scene has masks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import load_average, machine_info, write_section  # noqa: E402  (scripts/ is on sys.path)

SECTION = "bench_nerf_export"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished --method nerf run folder")
    parser.add_argument("--resolution", type=int, default=256, help="lattice points along the box's longest side")
    parser.add_argument("--finetune-steps", type=int, nargs="*", default=[],
                        help="also export with `--finetune-steps N` (3DGS steps on the run's training views) for each N")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    from splatkit.app.export import NerfSurface, export_mesh, export_run
    from splatkit.eval.evaluate import evaluate_run
    from splatkit.train.run import Run

    load = load_average()
    run = Run.open(args.run)
    summary = json.loads(run.summary_path.read_text()) if run.summary_path.is_file() else {}
    nerf = evaluate_run(run, json_path=run.path / "metrics_bench_nerf.json")["mean"]
    surface = NerfSurface(resolution=args.resolution, quiet=True)
    rows = []
    t = time.perf_counter()
    mesh = export_mesh(run, run.path / "export" / "bench_mesh.ply", surface=surface)
    mesh_s = time.perf_counter() - t
    largest = export_mesh(run, run.path / "export" / "bench_mesh_largest.obj",
                          surface=NerfSurface(resolution=args.resolution, keep_largest=1, quiet=True))
    for fmt in ("ply", "skz"):
        t = time.perf_counter()
        res = export_run(run, fmt, out=run.path / "export" / f"bench_splats.{fmt}", surface=surface)
        secs = time.perf_counter() - t
        score = evaluate_run(run, splats=res.path, json_path=run.path / f"metrics_bench_splats_{fmt}.json")["mean"]
        rows.append(("Gaussians from its surface", fmt, res.path.stat().st_size, secs, score))
    for n in args.finetune_steps:
        t = time.perf_counter()
        res = export_run(run, "ply", out=run.path / "export" / f"bench_splats_ft{n}.ply",
                         surface=NerfSurface(resolution=args.resolution, finetune_steps=n, quiet=True))
        secs = time.perf_counter() - t
        score = evaluate_run(run, splats=res.path, json_path=run.path / f"metrics_bench_splats_ft{n}.json")["mean"]
        rows.append((f"those Gaussians + {n} 3DGS steps", "ply", res.path.stat().st_size, secs, score))
    cfg = run.config
    minutes = summary.get("train_time_s")
    load_note = "load average unknown" if load is None else f"load average {load:.1f} at the start"
    masked = "masked_psnr" in nerf
    text = ["## NeRF exports: mesh and Gaussians from a NeRF run", "",
            f"`python scripts/bench_nerf_export.py --run RUN --resolution {args.resolution}"
            + (f" --finetune-steps {' '.join(map(str, args.finetune_steps))}" if args.finetune_steps else "")
            + f" --write` on {machine_info()}; "
            f"{load_note}", "",
            f"The run: `--method nerf` on `{Path(str(cfg.data)).name}` ({cfg.steps} steps of the `nerf` preset"
            + (f", {minutes / 60:.0f} min of training on this CPU" if minutes else "") + "). "
            "Mesh: marching cubes at the default threshold (the median density of the occupancy grid's occupied "
            f"cells) on a lattice of {args.resolution} points along the box's longest side. Gaussians: one disc per "
            "mesh vertex (splatkit/export/nerf_to_gaussians.py), SH degree 0, scored decoded from each file; "
            "`+ N 3DGS steps`: `--finetune-steps N` (3DGS' losses and learning rates on the run's training "
            "views, no densification; its time is in the export time). "
            "Times are wall-clock on a shared machine.", "",
            f"* mesh: {mesh.num_vertices:,} vertices, {mesh.num_faces:,} triangles in {mesh_s:.0f} s; largest "
            f"component {largest.num_vertices:,} / {largest.num_faces:,}; {mesh.notes}", "",
            "| model | file | size | test PSNR | " + ("masked PSNR | " if masked else "") + "export time |",
            "|---|---|---:|---:|" + ("---:|" if masked else "") + "---:|",
            f"| the NeRF (checkpoint) | - | - | {nerf['psnr']:.2f} dB | "
            + (f"{nerf['masked_psnr']:.2f} dB | " if masked else "") + "- |"]
    for what, fmt, size, secs, score in rows:
        text.append(f"| {what} | {fmt} | {size / 1e6:.1f} MB | {score['psnr']:.2f} dB | "
                    + (f"{score['masked_psnr']:.2f} dB | " if masked else "") + f"{secs:.0f} s |")
    text.append("")
    body = "\n".join(text)
    print(body)
    if args.write:
        print(f"wrote {write_section(SECTION, body)}")


if __name__ == "__main__":
    main()
