"""Exporting trained splats to files other tools read, in the user's original world frame."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from splatkit.errors import SplatkitError
from splatkit.export.ply import PlyExport, export_ply, read_ply, splats_to_original_frame, write_ply

SUPPORTED_FORMATS = ("ply",)
# Accepted names that a later issue will implement; asking for them is a clear error, not "unknown".
PLANNED_FORMATS = ("splat", "ply-compressed", "spz", "skz")

__all__ = ["SUPPORTED_FORMATS", "PLANNED_FORMATS", "PlyExport", "export_ply", "export_run",
           "read_ply", "splats_to_original_frame", "write_ply"]


def check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt in SUPPORTED_FORMATS:
        return fmt
    if fmt in PLANNED_FORMATS:
        raise SplatkitError(f"export format {fmt!r} is not supported yet (available: "
                            f"{', '.join(SUPPORTED_FORMATS)})")
    raise SplatkitError(f"unknown export format {fmt!r} (available: {', '.join(SUPPORTED_FORMATS)})")


def export_run(run_dir, fmt: str = "ply", out: Optional[str | Path] = None, checkpoint=None) -> PlyExport:
    """Export a run's latest (or given) checkpoint; default file ``RUN/export/splats.ply``.

    The normalisation comes from the checkpoint itself (the frame its parameters live in)."""
    from splatkit.models.gaussians import checkpoint_normalization
    from splatkit.train.run import Run

    fmt = check_format(fmt)
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, payload = run.load_model(checkpoint)
    normalization = checkpoint_normalization(payload)
    target = Path(out) if out is not None else run.path / "export" / "splats.ply"
    if target.suffix.lower() != ".ply":
        raise SplatkitError(f"a PLY export must end in .ply, got {target.name!r}")
    return export_ply(model, normalization, target)
