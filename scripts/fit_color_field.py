"""How much of a trained run's per-Gaussian SH colour can a Compact-3DGS colour field hold?

The geometry is held fixed (the run's final Gaussians); a fresh hash-grid colour field is fitted to
the colours the run's SH give each Gaussian as seen from its training cameras (opacity-weighted L1,
one camera per step, Adam at a constant rate with the trainer's eps), and the test views are
rendered with the field's colours instead of the SH. The PSNR drop is what the field costs when
geometry is not the issue: it separates the field's capacity from the joint-training effects that
bench_compression.py measures.

    .venv/bin/python scripts/fit_color_field.py [--run outputs/bench_compression/runs/dense-3dgs]
        [--log2-table 13] [--bound 1.0] [--output sigmoid|sh0] [--steps 1500] [--write]

``--write`` adds the result as a row of the ``color_field_fit`` section of docs/benchmarks.md (rows are
keyed by run and settings, so several calls build one table).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTION = "color_field_fit"
ROW_KEYS = ("run", "log2_table", "bound", "output", "steps")


def fit(run_dir: Path, log2_table: int, bound: float, output: str, steps: int, lr: float, seed: int) -> dict:
    from splatkit.metrics.image import psnr
    from splatkit.models.color_field import ColorField, ColorFieldConfig, sh_colors
    from splatkit.models.hashgrid import HashGridConfig
    from splatkit.methods.scoring import render_views, settings_for
    from splatkit.train.run import Run

    torch.manual_seed(seed)
    run = Run.open(run_dir)
    model, _ = run.load_model(None)
    if model.color_field is not None:
        raise SystemExit(f"{run_dir} already has a colour field; fit one to a run with per-Gaussian SH")
    splats = {k: v.detach() for k, v in model.splats.items()}
    scene, _, train_pos = run.views("train")
    centers = torch.as_tensor(scene.cameras[train_pos].centers, dtype=torch.float32)
    weight = torch.sigmoid(splats["opacities"])
    grid = HashGridConfig(n_levels=16, log2_hashmap_size=log2_table, seed=seed)
    field = ColorField(ColorFieldConfig(grid=grid, scene_bound=bound, output=output))
    opt = torch.optim.Adam(field.parameters(), lr=lr, eps=1e-15)  # eps as the trainer's field optimiser
    t0 = time.perf_counter()
    for _ in range(steps):
        to_gaussians = splats["means"] - centers[torch.randint(len(centers), (1,))]
        target = sh_colors(splats["sh0"], splats["shN"], to_gaussians / to_gaussians.norm(dim=-1, keepdim=True))
        loss = ((field(splats["means"], to_gaussians) - target).abs().mean(-1) * weight).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fit_s = time.perf_counter() - t0

    test_pos = scene.index_of(run.split()[1])  # the scene run.views("train") loaded holds both splits
    settings = settings_for(run.config, 4, "cpu")

    def mean_test_psnr() -> float:
        with torch.no_grad():
            return float(np.mean([float(psnr(rgb, scene.images[test_pos[i]]))
                                  for i, rgb, _, _ in render_views(model, scene.cameras[test_pos], settings)]))

    sh_psnr = mean_test_psnr()
    model.color_field = field  # render() colours from the field when it has one
    field_psnr = mean_test_psnr()
    return {"run": run_dir.name, "log2_table": log2_table, "bound": bound, "output": output, "steps": steps,
            "gaussians": int(model.num_gaussians), "sh_psnr": sh_psnr, "field_psnr": field_psnr,
            "fit_s": fit_s}


def _doc_rows() -> list[dict]:
    from benchdoc import DOC

    if not DOC.is_file():
        return []
    return [json.loads(m) for m in re.findall(r"<!-- fit-row (\{.*?\}) -->", DOC.read_text())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "outputs" / "bench_compression" / "runs" / "dense-3dgs")
    ap.add_argument("--log2-table", type=int, default=13, help="hash-table size per level (compact preset: 13)")
    ap.add_argument("--bound", type=float, default=1.0, help="radius of the grid's linear part (compact preset: 1)")
    ap.add_argument("--output", choices=("sigmoid", "sh0"), default="sigmoid")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    row = fit(args.run, args.log2_table, args.bound, args.output, args.steps, args.lr, args.seed)
    print(json.dumps(row))
    if not args.write:
        return
    from benchdoc import machine_info, write_section

    rows = [r for r in _doc_rows() if any(r[k] != row[k] for k in ROW_KEYS)] + [row]
    table = ["| run | Gaussians | table | linear radius | output | fit steps | test PSNR, SH | test PSNR, field | "
             "field - SH |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['run']} | {r['gaussians']:,} | 2^{r['log2_table']} | {r['bound']:g} | {r['output']} | "
                     f"{r['steps']:,} | {r['sh_psnr']:.2f} dB | {r['field_psnr']:.2f} dB | "
                     f"{r['field_psnr'] - r['sh_psnr']:+.2f} dB | <!-- fit-row {json.dumps(r)} -->")
    text = f"""## Colour field fitted to a trained run's colours (geometry fixed)

`python scripts/fit_color_field.py [--log2-table T] [--bound R] [--output O] --write`, last run on
{machine_info()}. A fresh Compact-3DGS colour field (16 levels x 2 features) is fitted to the per-Gaussian
SH colours of a finished plain-3DGS run, seen from its training cameras, with its Gaussians held fixed;
the test views are then rendered with the field's colours. The drop is what the field alone costs
at that geometry, apart from joint training (see the compression section for the trained pipelines).

{chr(10).join(table)}
"""
    print(f"wrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
