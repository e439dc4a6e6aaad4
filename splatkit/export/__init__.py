"""Exporting trained splats to files other tools read, in the user's original world frame."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from splatkit.errors import DataError, SplatkitError
from splatkit.export import dotsplat, ply_compressed, spz
from splatkit.export._shared import FormatExport
from splatkit.export.dotsplat import read_splat, write_splat
from splatkit.export.ply import PlyExport, export_ply, read_ply, splats_to_original_frame, write_ply
from splatkit.export.ply_compressed import is_compressed_ply_header, read_ply_compressed, write_ply_compressed
from splatkit.export.spz import read_spz, write_spz

SUPPORTED_FORMATS = ("ply", "splat", "ply-compressed", "spz")
# Accepted names that a later issue will implement; asking for them is a clear error, not "unknown".
PLANNED_FORMATS = ("skz",)

# Default file name under RUN/export/ and the suffix an explicit --out must have.
DEFAULT_NAMES = {"ply": "splats.ply", "splat": "splats.splat", "ply-compressed": "splats.compressed.ply",
                 "spz": "splats.spz"}
SUFFIXES = {"ply": ".ply", "splat": ".splat", "ply-compressed": ".ply", "spz": ".spz"}

__all__ = ["SUPPORTED_FORMATS", "PLANNED_FORMATS", "DEFAULT_NAMES", "FormatExport", "PlyExport", "check_format",
           "check_output_name",
           "export_ply", "export_run", "format_notes", "read_ply", "read_ply_compressed", "read_splat", "read_splats_file",
           "read_spz", "model_from_splats_file", "splats_to_original_frame", "write_ply", "write_ply_compressed", "write_splat", "write_spz",
           "write_splats"]


def check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt in SUPPORTED_FORMATS:
        return fmt
    if fmt in PLANNED_FORMATS:
        raise SplatkitError(f"export format {fmt!r} is not supported yet (available: "
                            f"{', '.join(SUPPORTED_FORMATS)})")
    raise SplatkitError(f"unknown export format {fmt!r} (available: {', '.join(SUPPORTED_FORMATS)})")


def format_notes(fmt: str) -> str:
    """One line on what a format loses, for the CLI to print after an export."""
    fmt = check_format(fmt)
    if fmt == "ply":
        return "lossless: float32 parameters and every SH band"
    if fmt == "splat":
        return dotsplat.NOTES
    if fmt == "ply-compressed":
        return ply_compressed.NOTES
    return spz.notes()


def check_output_name(fmt: str, target: Path) -> None:
    name = target.name.lower()
    if not name.endswith(SUFFIXES[fmt]):
        label = {"ply": "a PLY", "splat": "a .splat", "ply-compressed": "a compressed PLY", "spz": "an .spz"}[fmt]
        hint = " (splats.compressed.ply by convention)" if fmt == "ply-compressed" else ""
        raise SplatkitError(f"{label} export must end in {SUFFIXES[fmt]}{hint}, got {target.name!r}")
    if fmt == "ply" and name.endswith(".compressed.ply"):
        # Tools such as splat-transform pick the compressed layout from that name.
        raise SplatkitError(f"{target.name!r} names a compressed PLY; use --format ply-compressed or another name")


def write_splats(path: str | Path, fmt: str, splats: dict, sh_degree: int) -> FormatExport:
    """Write gsplat-named parameters (already in the frame wanted) in any supported format."""
    fmt = check_format(fmt)
    path = Path(path)
    if fmt == "ply":
        res = write_ply(path, splats, sh_degree)
        return FormatExport(res.path, "ply", res.num_written, res.num_dropped, res.sh_degree, format_notes("ply"))
    writer = {"splat": write_splat, "ply-compressed": write_ply_compressed, "spz": write_spz}[fmt]
    return writer(path, splats, sh_degree)


def export_run(run_dir, fmt: str = "ply", out: Optional[str | Path] = None, checkpoint=None) -> FormatExport:
    """Export a run's latest (or given) checkpoint; default file ``RUN/export/`` + ``DEFAULT_NAMES[fmt]``.

    The normalisation comes from the checkpoint itself (the frame its parameters live in). The
    result carries ``notes``: one line on what the format loses."""
    from splatkit.models.gaussians import checkpoint_normalization
    from splatkit.train.run import Run

    fmt = check_format(fmt)
    target = Path(out) if out is not None else None
    if target is not None:
        check_output_name(fmt, target)  # before loading anything: a typo fails fast
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, payload = run.load_model(checkpoint)
    normalization = checkpoint_normalization(payload)
    if target is None:
        target = run.path / "export" / DEFAULT_NAMES[fmt]
    original = splats_to_original_frame(dict(model.splats), normalization, model.sh_degree)
    return write_splats(target, fmt, original, model.sh_degree)


def read_splats_file(path: str | Path):
    """Read any supported splat file into ``(splats, sh_degree)`` (gsplat-named float32 tensors).

    Chooses by name and content: ``.splat``, ``.spz``, and ``.ply`` (compressed when its header
    declares a ``chunk`` element, whatever the name, else the Inria 3DGS layout)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("splat file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".splat":
        return read_splat(path)
    if suffix == ".spz":
        return read_spz(path)
    if suffix == ".ply":
        try:
            compressed = is_compressed_ply_header(path)
        except OSError as exc:
            raise DataError(f"cannot read PLY file ({exc.strerror or exc})", path)
        return read_ply_compressed(path) if compressed else read_ply(path)
    raise DataError(f"unknown splat file type {path.suffix!r} (expected .ply, .compressed.ply, .splat or .spz)",
                    path)


def model_from_splats_file(path: str | Path, normalization):
    """A renderable :class:`GaussianModel` in a run's normalised frame from an exported file (any
    format :func:`read_splats_file` reads, in the user's frame, as exports are written)."""
    import torch

    from splatkit.models.gaussians import GaussianModel

    splats, degree = read_splats_file(path)
    # Exports hold the user's frame; the run renders in its normalised one: apply the inverse.
    ours = splats_to_original_frame(splats, normalization.inverse(), degree)
    return GaussianModel({k: v.to(torch.float32) for k, v in ours.items()}, sh_degree=degree)
