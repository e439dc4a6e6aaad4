"""``splatkit eval``: score a trained run on its held-out views and write ``metrics.json``.

Renders and scores go through :func:`splatkit.methods.scoring.score_views`, the path the trainer's
own test scores take. How backgrounds enter the numbers:

* Renders use the run's own background (:func:`splatkit.methods.scoring.background_for`: the
  ``black`` / ``white`` it trained with; for ``random`` training, white with masks, else black).
* The ground truth is what the model was trained to reproduce: the image as loaded, or, for runs
  trained with ``use_masks``, the image composited over that same background outside the mask.
  ``psnr`` / ``ssim`` / ``lpips`` compare the render with that target, so a run that trained on a
  white background is scored on a white background.
* When the scene has masks, ``masked_*`` follow the DTU sparse-view protocol (RegNeRF,
  :mod:`splatkit.metrics`): ``masked_psnr`` averages the error over object pixels only
  (mask == 1) of the *loaded* ground truth, and ``masked_ssim`` / ``masked_lpips`` composite both
  render and loaded ground truth on white outside the mask. They depend on the background only
  through semi-transparent object pixels, so they compare across runs with different backgrounds.

Means are per-view averages (benchmarks average per-image values). A non-finite value (PSNR of
bit-identical images is +inf) is written as ``null`` and left out of the mean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from splatkit.methods.scoring import METRIC_KEYS


def evaluate_run(run_dir, split: str = "test", checkpoint=None, json_path: Optional[str | Path] = None,
                 batch_size: int = 4, device: Optional[str] = None, splats: Optional[str | Path] = None) -> dict:
    """Render the run's ``split`` views, score them and write the report (default ``RUN/metrics.json``,
    or ``RUN/metrics_<file name>.json`` with ``splats``).

    ``splats``: score the model decoded from this exported file (ply, compressed ply, splat, spz)
    instead of the checkpoint's. Returns the report dict (also what is written)."""
    import splatkit
    from splatkit.methods.scoring import score_views, settings_for
    from splatkit.train.run import Run
    from splatkit.utils.atomic import write_text_atomic

    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    ckpt_path = run.checkpoint(checkpoint)
    model, payload = run.load_model(ckpt_path)
    if splats is not None:
        from splatkit.export import model_from_splats_file
        from splatkit.methods.base import payload_normalization

        model = model_from_splats_file(splats, payload_normalization(payload))
    scene, ids, positions = run.views(split)
    settings = settings_for(run.config, batch_size, device)
    bg = settings.background.astype(np.float32)
    has_masks = scene.masks is not None
    composite_gt = bool(run.config.use_masks and has_masks)

    rows, lpips_reason = score_views(model, scene, positions, settings, composite_gt=composite_gt)
    views = [{k: v for k, v in r.items() if k != "position"} for r in rows]

    keys = [k for k in METRIC_KEYS if k in views[0]]
    means = {}
    for k in keys:
        vals = [v[k] for v in views if v[k] is not None]
        means[k] = float(np.mean(vals)) if vals else None
    report = {
        "splatkit_version": splatkit.__version__,
        "run": str(run.path),
        "checkpoint": str(ckpt_path),
        "splats_file": None if splats is None else str(Path(splats).resolve()),
        "method": run.config.method,
        "num_primitives": int(model.num_primitives),
        **({"num_gaussians": int(model.num_gaussians)} if hasattr(model, "num_gaussians") else {}),
        "step": int(payload.get("step", -1)),
        "split": split,
        "num_views": len(views),
        "background": [float(c) for c in bg],
        "gt_composited_on_background": composite_gt,
        "masked_metrics": has_masks,
        "lpips_available": lpips_reason is None,
        "lpips_unavailable": lpips_reason,
        "mean": means,
        "views": views,
    }
    if json_path is not None:
        out = Path(json_path)
    elif splats is not None:
        out = run.path / f"metrics_{Path(splats).name.replace('.', '_')}.json"
    else:
        out = run.metrics_path
    write_text_atomic(out, json.dumps(report, indent=2, allow_nan=False) + "\n")
    report["json_path"] = str(out)
    return report


def print_report(report: dict, console=None) -> None:
    """A rich table: one row per view, then the means."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    keys = [k for k in METRIC_KEYS if k in report["mean"]]
    table = Table(title=f"{report['split']} views, step {report['step']}")
    table.add_column("view")
    for k in keys:
        table.add_column(k.replace("_", " "), justify="right")

    def fmt(k, v):
        if v is None:
            return "-"
        return f"{v:.2f}" if k.endswith("psnr") else f"{v:.4f}"

    for v in report["views"]:
        table.add_row(escape(f"{v['id']} {v['name']}"), *[fmt(k, v[k]) for k in keys])
    table.add_section()
    table.add_row("mean", *[fmt(k, report["mean"][k]) for k in keys], style="bold")
    console.print(table)
    if not report["lpips_available"]:
        console.print(f"[yellow]{escape(report['lpips_unavailable'])}[/yellow]")
    console.print(f"wrote {escape(report['json_path'])}")
