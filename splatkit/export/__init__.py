"""Exporting trained splats to files other tools read, in the user's original world frame, and
splatkit's own compact ``.skz`` (:mod:`splatkit.compress.skz`), which keeps the run's normalised
frame plus the matrix to the user's, R-VQ codes and the hash-grid colour field.

Runs trained with a colour field (Compact-3DGS) are baked to SH of the run's ``sh_degree``
(:func:`splatkit.models.color_field.bake_to_sh`) for every format but ``.skz``;
:func:`bake_report` measures what that costs in test PSNR."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from splatkit.errors import DataError, SplatkitError
from splatkit.export import dotsplat, ply_compressed, sog, spz
from splatkit.export._shared import FormatExport
from splatkit.export.dotsplat import read_splat, write_splat
from splatkit.export.ply import PlyExport, export_ply, read_ply, splats_to_original_frame, write_ply
from splatkit.export.ply_compressed import is_compressed_ply_header, read_ply_compressed, write_ply_compressed
from splatkit.export.sog import read_sog, sog_palette, write_sog
from splatkit.export.spz import read_spz, write_spz

SUPPORTED_FORMATS = ("ply", "splat", "ply-compressed", "spz", "sog", "skz")
# Accepted names that a later issue will implement; asking for them is a clear error, not "unknown".
PLANNED_FORMATS: tuple[str, ...] = ()

# Default file name under RUN/export/ and the suffix an explicit --out must have.
DEFAULT_NAMES = {"ply": "splats.ply", "splat": "splats.splat", "ply-compressed": "splats.compressed.ply",
                 "spz": "splats.spz", "sog": "splats.sog", "skz": "splats.skz"}
SUFFIXES = {"ply": ".ply", "splat": ".splat", "ply-compressed": ".ply", "spz": ".spz", "sog": ".sog", "skz": ".skz"}
# Directions a colour field is baked over (bake_to_sh's default count): on the hemisphere the
# training cameras saw the scene from (GaussianModel.bake_axis), else on the whole sphere.
BAKE_DIRECTIONS = 128
# Formats that keep fewer SH bands than a model may have: a field is baked straight to what they
# store (dropping the higher bands of a degree-3 fit leaves a poor degree-0 colour).
FORMAT_SH_DEGREE = {"splat": 0}

__all__ = ["SUPPORTED_FORMATS", "PLANNED_FORMATS", "DEFAULT_NAMES", "FormatExport", "PlyExport",
           "check_format", "check_output_name", "compact_from_model", "export_ply", "format_notes",
           "model_from_compact", "model_from_splats_file", "read_ply", "read_ply_compressed", "read_splat",
           "read_sog", "read_splats_file", "read_spz", "sog_palette", "splats_to_original_frame", "with_baked_sh",
           "write_ply", "write_ply_compressed", "write_sog", "write_splat", "write_splats", "write_spz"]


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
    if fmt == "sog":
        return sog.NOTES
    if fmt == "skz":
        return ("fp16 positions, 8-bit opacities, fp16 (or R-VQ-coded) scales, rotations and SH, zstd; a "
                "colour field's hash table min/max quantised")
    return spz.notes()


def check_output_name(fmt: str, target: Path) -> None:
    name = target.name.lower()
    if not name.endswith(SUFFIXES[fmt]):
        label = {"ply": "a PLY", "splat": "a .splat", "ply-compressed": "a compressed PLY", "spz": "an .spz",
                 "sog": "a .sog", "skz": "an .skz"}[fmt]
        hint = " (splats.compressed.ply by convention)" if fmt == "ply-compressed" else ""
        raise SplatkitError(f"{label} export must end in {SUFFIXES[fmt]}{hint}, got {target.name!r}")
    if fmt == "ply" and name.endswith(".compressed.ply"):
        # Tools such as splat-transform pick the compressed layout from that name.
        raise SplatkitError(f"{target.name!r} names a compressed PLY; use --format ply-compressed or another name")


def write_splats(path: str | Path, fmt: str, splats: dict, sh_degree: int, palette=None) -> FormatExport:
    """Write gsplat-named parameters (already in the frame wanted) in any supported format
    (``skz``: plain sections, no normalisation; :func:`export_run` writes R-VQ codes and fields).
    ``palette``: ``sog`` only, the SH palette and labels to store (:func:`sog_palette`)."""
    fmt = check_format(fmt)
    path = Path(path)
    if fmt == "ply":
        res = write_ply(path, splats, sh_degree)
        return FormatExport(res.path, "ply", res.num_written, res.num_dropped, res.sh_degree, format_notes("ply"))
    if fmt == "skz":
        from splatkit.compress.skz import CompactSplats

        return _write_skz(path, CompactSplats.from_splats(dict(splats), sh_degree))
    if fmt == "sog":
        return write_sog(path, splats, sh_degree, palette=palette)
    writer = {"splat": write_splat, "ply-compressed": write_ply_compressed, "spz": write_spz}[fmt]
    return writer(path, splats, sh_degree)


def _write_skz(path: Path, compact) -> FormatExport:
    from splatkit.compress.skz import RVQ, quantize_bits, write_skz

    write_skz(path, compact)
    notes = format_notes("skz")
    coded = [k for k in ("scales", "quats", "shN") if isinstance(getattr(compact, k), RVQ)]
    if coded:
        cb = getattr(compact, coded[0]).codebooks
        notes += f"; R-VQ codes ({cb.shape[0]} x {cb.shape[1]}) for {', '.join(coded)}"
    if compact.bits:
        notes += "; stored on per-column grids of " + ", ".join(f"{k} {b} bits" for k, b in compact.bits.items())
    if compact.color_field is not None:
        notes += (f"; a hash-grid colour field instead of SH (hash table at "
                  f"{quantize_bits(compact.color_field)} bits)")
    return FormatExport(path, "skz", compact.n, 0, int(compact.sh_degree), notes)


def with_baked_sh(model, degree: Optional[int] = None, num_dirs: int = BAKE_DIRECTIONS):
    """``(model with SH instead of its colour field, RMS colour error of the fit)``: the field is
    baked per Gaussian to SH of ``degree`` (default ``model.sh_degree``; least squares over
    ``num_dirs`` directions on the hemisphere around ``model.bake_axis``, or the whole sphere
    without one). A model without a field comes back unchanged (error 0)."""
    import torch

    from splatkit.models.color_field import bake_to_sh, fibonacci_sphere
    from splatkit.models.gaussians import GaussianModel

    if model.color_field is None:
        return model, 0.0
    degree = model.sh_degree if degree is None else int(degree)
    means = model.splats["means"].detach()
    dirs = None if model.bake_axis is None else fibonacci_sphere(
        num_dirs, hemisphere_axis=torch.tensor(model.bake_axis), device=means.device)
    baked = bake_to_sh(model.color_field, means, degree=degree, num_dirs=num_dirs, dirs=dirs)
    splats = {k: v.detach() for k, v in model.splats.items()}
    splats.update(sh0=baked.sh0.to(torch.float32), shN=baked.shN.to(torch.float32))
    out = GaussianModel(splats, degree)
    out.rvq = {k: v for k, v in model.rvq.items() if k != "shN"}
    return out, baked.rms


# Bits per hash-table value in .skz. Compact-3DGS stores 8; on the 400x300 synthetic scene 6 bits
# make the table a third smaller (the whole file 7 to 15%) for 0.04 to 0.10 dB of test PSNR, where
# 5 and 4 bits cost 0.2 to 0.4 and 0.8 to 1.7 dB (docs/benchmarks.md, rows "skz, N-bit table").
SKZ_TABLE_BITS = 6


def compact_from_model(model, normalization=None, meta: Optional[dict] = None, table_bits: int = SKZ_TABLE_BITS,
                       bits: Optional[dict] = None):
    """A :class:`~splatkit.compress.skz.CompactSplats` of a (compacted) model in its own frame:
    R-VQ codes where the model has them (``model.rvq``), its colour field (hash table quantised to
    ``table_bits``) instead of SH when it has one; ``normalization``: the frame's ``Normalization``;
    ``bits``: ``{attribute: bits}`` stored on ``q_affine`` grids (``splatkit compress``)."""
    import numpy as np

    from splatkit.models.color_field import color_field_to_dict
    from splatkit.compress.skz import CompactSplats

    splats = {k: v.detach().cpu() for k, v in model.splats.items() if k != "mask"}
    splats.update(model.rvq)  # scales / quats / shN as codebooks + indices
    meta = dict(meta or {})
    color_field = None
    degree = model.sh_degree
    if model.color_field is not None:
        config = color_field_to_dict(model.color_field)
        config["quantize_8bit"] = ["grid.table"]  # Compact-3DGS post-processing: a quantised hash grid
        config["quantize_bits"] = table_bits
        config["bake_axis"] = model.bake_axis
        color_field = {"config": config, "tensors": {k: v.detach().cpu().numpy().astype(np.float32)
                                                     for k, v in model.color_field.state_dict().items()}}
        # No SH in the file: the field colours the Gaussians. Readers bake to this degree.
        splats.pop("sh0", None)
        splats.pop("shN", None)
        meta["bake_sh_degree"] = degree
        degree = 0
    bits = {k: v for k, v in (bits or {}).items() if k not in ("sh0", "shN") or k in splats}
    return CompactSplats.from_splats(splats, degree, color_field=color_field, normalization=normalization,
                                     meta=meta, bits=bits)


def model_from_compact(compact):
    """A renderable :class:`GaussianModel` in the file's own frame, with the colour field and the
    R-VQ codes of a :class:`~splatkit.compress.skz.CompactSplats`."""
    import torch

    from splatkit.models.color_field import color_field_from_dict
    from splatkit.compress.skz import RVQ
    from splatkit.models.gaussians import GaussianModel

    splats = compact.decode()
    degree = compact.sh_degree
    field = None
    if compact.color_field is not None:
        field = color_field_from_dict(compact.color_field["config"], compact.color_field["tensors"])
        degree = compact.meta.get("bake_sh_degree", 0)
        if not isinstance(degree, int) or isinstance(degree, bool) or not 0 <= degree <= 4:
            raise SplatkitError(f".skz meta bake_sh_degree must be an integer 0..4, got {degree!r}")
        # Placeholders: the field colours the Gaussians (exports bake it to this degree).
        n = compact.n
        splats["sh0"] = torch.zeros(n, 1, 3)
        splats["shN"] = torch.zeros(n, (degree + 1) ** 2 - 1, 3)
    model = GaussianModel(splats, degree, color_field=field)
    model.rvq = {k: getattr(compact, k) for k in ("scales", "quats", "shN") if isinstance(getattr(compact, k), RVQ)}
    if field is not None:
        axis = compact.color_field["config"].get("bake_axis")
        if axis is not None and not (isinstance(axis, list) and len(axis) == 3
                                     and all(isinstance(v, (int, float)) for v in axis)):
            raise SplatkitError(".skz colour-field bake_axis must be null or 3 numbers")
        model.bake_axis = axis
    return model


def read_splats_file(path: str | Path):
    """Read any supported splat file into ``(splats, sh_degree)`` (gsplat-named float32 tensors),
    in the user's frame.

    Chooses by name and content: ``.splat``, ``.spz``, ``.sog`` (or a SOG's ``meta.json``), ``.skz``
    (a colour field is baked to SH,
    the normalised frame mapped back with the file's matrix), and ``.ply`` (compressed when its
    header declares a ``chunk`` element, whatever the name, else the Inria 3DGS layout)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("splat file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".splat":
        return read_splat(path)
    if suffix == ".spz":
        return read_spz(path)
    if suffix == ".sog" or path.name.lower() == "meta.json":
        return read_sog(path)
    if suffix == ".skz":
        from splatkit.compress.skz import read_skz

        return _skz_in_user_frame(read_skz(path))
    if suffix == ".ply":
        try:
            compressed = is_compressed_ply_header(path)
        except OSError as exc:
            raise DataError(f"cannot read PLY file ({exc.strerror or exc})", path)
        return read_ply_compressed(path) if compressed else read_ply(path)
    raise DataError(f"unknown splat file type {path.suffix!r} (expected .ply, .compressed.ply, .splat, .spz, "
                    ".sog (or a SOG's meta.json) or .skz)", path)


def _skz_in_user_frame(compact):
    """``(splats, sh_degree)`` of a read ``.skz``: colour field baked to SH, mapped to the user's frame."""
    import torch

    from splatkit.data.scene import normalization_from_matrix

    model, _ = with_baked_sh(model_from_compact(compact))
    splats = {k: v.detach() for k, v in model.splats.items()}
    if compact.normalization is not None:
        splats = splats_to_original_frame(splats, normalization_from_matrix(compact.normalization), model.sh_degree)
    return {k: v.to(torch.float32) for k, v in splats.items()}, model.sh_degree


def model_from_splats_file(path: str | Path, normalization):
    """A renderable :class:`GaussianModel` in a run's normalised frame from an exported file (any
    format :func:`read_splats_file` reads, in the user's frame, as exports are written). An
    ``.skz`` keeps its colour field; it is stored in a normalised frame, which must then be the
    run's (a field cannot be moved to another frame)."""
    import numpy as np
    import torch

    from splatkit.models.gaussians import GaussianModel

    path = Path(path)
    if path.suffix.lower() == ".skz" and path.is_file():
        from splatkit.compress.skz import read_skz

        compact = read_skz(path)
        # No matrix: the file holds the user's frame (ours_from_user is the identity).
        stored = np.eye(4) if compact.normalization is None else compact.normalization
        if np.allclose(stored, normalization.matrix, rtol=1e-6, atol=1e-9):
            return model_from_compact(compact)
        if compact.color_field is not None:
            raise SplatkitError("the .skz colour field lives in another scene normalisation than this run's", path)
        splats, degree = _skz_in_user_frame(compact)  # read once, not again by read_splats_file
    else:
        splats, degree = read_splats_file(path)
    # Exports hold the user's frame; the run renders in its normalised one: apply the inverse.
    ours = splats_to_original_frame(splats, normalization.inverse(), degree)
    return GaussianModel({k: v.to(torch.float32) for k, v in ours.items()}, sh_degree=degree)
