"""Exporting a trained run to a splat file (any format of :mod:`splatkit.export`), with the
test PSNR that baking a colour field to SH costs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from splatkit.errors import SplatkitError
from splatkit.export import (DEFAULT_NAMES, FORMAT_SH_DEGREE, SKZ_TABLE_BITS, FormatExport, _write_skz,
                             check_format, check_output_name, compact_from_model, sog_palette,
                             splats_to_original_frame, with_baked_sh, write_splats)
from splatkit.methods.base import payload_normalization
from splatkit.train.run import Run


def export_run(run_dir, fmt: str = "ply", out: Optional[str | Path] = None, checkpoint=None,
               report_bake: bool = False, table_bits: int = SKZ_TABLE_BITS) -> FormatExport:
    """Export a run's latest (or given) checkpoint; default file ``RUN/export/`` + ``DEFAULT_NAMES[fmt]``.

    The normalisation comes from the checkpoint itself (the frame its parameters live in). The
    model is the compacted one (learnable masks applied, R-VQ attributes as codes); a colour field
    is baked to SH for every format but ``skz``. The result carries ``notes``: one line on what
    the format loses, and with ``report_bake`` (a colour-field run, not ``skz``) ``bake``: what
    :func:`bake_report` measures, from the model and bake this export used. ``table_bits``: bits
    per hash-table value in ``skz`` (1..8)."""
    import splatkit
    from splatkit.compress.skz import levels_for_bits

    fmt = check_format(fmt)
    levels_for_bits(table_bits, "table_bits (bits per hash-table value in skz)")  # fail before loading anything
    target = Path(out) if out is not None else None
    if target is not None:
        check_output_name(fmt, target)  # before loading anything: a typo fails fast
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, payload = run.load_model(checkpoint)
    if not hasattr(model, "splats"):
        raise SplatkitError(f"a {run.config.method!r} run has no Gaussians to write as a splat file", run.path)
    normalization = payload_normalization(payload)
    if target is None:
        target = run.path / "export" / DEFAULT_NAMES[fmt]
    if fmt == "skz":
        meta = {"splatkit_version": splatkit.__version__, "step": int(payload.get("step", -1))}
        # A `splatkit compress` checkpoint holds values on its .skz grids: written on the same grids
        # they come back exactly (no second quantisation).
        bits = (payload.get("compression") or {}).get("bits")
        return _write_skz(target, compact_from_model(model, normalization, meta, table_bits, bits=bits))
    baked, rms = _baked_for_format(model, fmt)
    original = splats_to_original_frame(dict(baked.splats), normalization, baked.sh_degree)
    # SOG: a model with SH codes (splatkit compress) gives its codebook as the palette (no second clustering).
    palette = sog_palette(baked, normalization) if fmt == "sog" else None
    res = write_splats(target, fmt, original, baked.sh_degree, palette=palette)
    if model.color_field is not None:
        res.notes += f"; colour field baked to SH degree {baked.sh_degree} (RMS colour error {rms:.4f})"
        if report_bake:
            res.bake = _bake_scores(run, model, baked, rms)
    return res


def _baked_for_format(model, fmt: str):
    """:func:`with_baked_sh` to the SH degree format ``fmt`` stores (at most the model's)."""
    return with_baked_sh(model, min(model.sh_degree, FORMAT_SH_DEGREE.get(fmt, model.sh_degree)))


def bake_report(run_dir, checkpoint=None, split: str = "test", device: Optional[str] = None,
                fmt: str = "ply") -> dict:
    """What baking a run's colour field to SH for format ``fmt`` costs: mean PSNR on ``split`` of
    the field model and of the baked one (same targets as ``splatkit eval``; before the format's
    own quantisation), their difference ``loss_db``, and the bake's RMS colour error. ``{}`` for a
    run without a colour field."""
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, _ = run.load_model(checkpoint)
    if getattr(model, "color_field", None) is None:
        return {}
    baked, rms = _baked_for_format(model, check_format(fmt))
    return _bake_scores(run, model, baked, rms, split, device)


def _bake_scores(run, model, baked, rms: float, split: str = "test", device: Optional[str] = None) -> dict:
    """:func:`bake_report`'s dict for a field ``model`` and its ``baked`` SH version, scored as
    ``splatkit eval`` scores (:func:`splatkit.methods.scoring.score_views`)."""
    import numpy as np

    from splatkit.methods.scoring import score_views, settings_for

    scene, _, positions = run.views(split)
    settings = settings_for(run.config, device=device)
    composite = bool(run.config.use_masks and scene.masks is not None)
    scores = {}
    for label, m in (("field", model), ("baked", baked)):
        rows, _ = score_views(m, scene, positions, settings, composite_gt=composite)
        scores[label] = float(np.mean([r["psnr"] for r in rows]))
    return {"psnr_field": scores["field"], "psnr_baked": scores["baked"],
            "loss_db": scores["field"] - scores["baked"], "rms": rms, "sh_degree": baked.sh_degree,
            "split": split, "num_views": len(positions)}
