"""Exporting a trained run to a splat file (any format of :mod:`splatkit.export`), with the
test PSNR that baking a colour field to SH costs; a NeRF run to a coloured triangle mesh
(:mod:`splatkit.export.nerf_mesh`) or, for the splat formats, to Gaussians made from its surface
(:mod:`splatkit.export.nerf_to_gaussians`, an approximation; the PSNR it costs is measured the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from splatkit.errors import SplatkitError
from splatkit.export import (DEFAULT_NAMES, FORMAT_SH_DEGREE, SKZ_TABLE_BITS, FormatExport, _write_skz,
                             check_format, check_output_name, compact_from_model, sog_palette,
                             splats_to_original_frame, with_baked_sh, write_splats)
from splatkit.export.nerf_mesh import DEFAULT_RESOLUTION, MESH_SUFFIXES
from splatkit.methods.base import payload_normalization
from splatkit.train.run import Run

MESH_FORMAT = "mesh"
DEFAULT_MESH_NAME = "mesh.ply"


@dataclass
class MeshExport:
    """What a mesh export wrote (the CLI prints it)."""

    path: Path
    num_vertices: int
    num_faces: int
    notes: str = ""


@dataclass
class NerfSurface:
    """How a NeRF's surface is extracted: lattice points along the box's longest side, density
    threshold (None: :func:`splatkit.export.nerf_mesh.auto_threshold`), how many largest connected
    components to keep (0: all), SH degree of the Gaussians."""

    resolution: int = DEFAULT_RESOLUTION
    threshold: Optional[float] = None
    keep_largest: int = 0
    sh_degree: int = 0
    quiet: bool = False
    finetune_steps: int = 0
    """Splat formats: train the Gaussians made from the surface this many 3DGS steps on the run's
    training views before writing them (0: write them as converted)."""


# Where a NeRF run's fine-tuned Gaussians train (a 3DGS run folder inside the NeRF run, rewritten
# by every export that fine-tunes).
FINETUNE_DIR = "gaussians"


def export_run(run_dir, fmt: str = "ply", out: Optional[str | Path] = None, checkpoint=None,
               report_bake: bool = False, table_bits: int = SKZ_TABLE_BITS,
               surface: Optional[NerfSurface] = None) -> Union[FormatExport, MeshExport]:
    """Export a run's latest (or given) checkpoint; default file ``RUN/export/`` + ``DEFAULT_NAMES[fmt]``.

    The normalisation comes from the checkpoint itself (the frame its parameters live in). The
    model is the compacted one (learnable masks applied, R-VQ attributes as codes); a colour field
    is baked to SH for every format but ``skz``. The result carries ``notes``: one line on what
    the format loses, and with ``report_bake`` (a colour-field run, not ``skz``) ``bake``: what
    :func:`bake_report` measures, from the model and bake this export used. ``table_bits``: bits
    per hash-table value in ``skz`` (1..8).

    A NeRF run: ``fmt`` ``"mesh"`` writes its surface (:func:`export_mesh`); a splat format writes
    Gaussians made from that surface (``surface`` says how), and ``report_bake`` scores them
    against the NeRF itself."""
    import splatkit
    from splatkit.compress.skz import levels_for_bits

    surface = surface or NerfSurface()
    if fmt.lower() == MESH_FORMAT:
        return export_mesh(run_dir, out, checkpoint, surface)
    fmt = check_format(fmt)
    levels_for_bits(table_bits, "table_bits (bits per hash-table value in skz)")  # fail before loading anything
    target = Path(out) if out is not None else None
    if target is not None:
        check_output_name(fmt, target)  # before loading anything: a typo fails fast
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, payload = run.load_model(checkpoint)
    source = None  # a NeRF model the Gaussians are made from
    if not hasattr(model, "splats"):
        if not _is_nerf(model):
            raise SplatkitError(f"a {run.config.method!r} run has no Gaussians to write as a splat file", run.path)
        source = model
        model, nerf_notes, nerf_rms = _nerf_gaussians(source, surface, FORMAT_SH_DEGREE.get(fmt, 3))
    normalization = payload_normalization(payload)
    if source is not None and surface.finetune_steps:
        model = finetune_nerf_gaussians(run, model, normalization, surface.finetune_steps, surface.quiet)
        nerf_notes += (f"; then {surface.finetune_steps} 3DGS steps on the training views (no densification; "
                       f"run folder {run.path / FINETUNE_DIR})")
    if target is None:
        target = run.path / "export" / DEFAULT_NAMES[fmt]
    if source is not None:
        if fmt == "skz":
            meta = {"splatkit_version": splatkit.__version__, "step": int(payload.get("step", -1)),
                    "source": "nerf"}
            res = _write_skz(target, compact_from_model(model, normalization, meta, table_bits))
        else:
            original = splats_to_original_frame(dict(model.splats), normalization, model.sh_degree)
            res = write_splats(target, fmt, original, model.sh_degree)
        res.notes += f"; {nerf_notes}"
        if report_bake:
            res.bake = dict(_bake_scores(run, source, model, nerf_rms), source="nerf")
        return res
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


def _is_nerf(model) -> bool:
    from splatkit.models.nerf_field import NerfModel

    return isinstance(model, NerfModel)


def export_mesh(run_dir, out: Optional[str | Path] = None, checkpoint=None,
                surface: Optional[NerfSurface] = None) -> MeshExport:
    """A NeRF run's iso-surface as a coloured triangle mesh (PLY or OBJ by ``out``'s suffix; default
    ``RUN/export/mesh.ply``) in the dataset's original world frame."""
    from splatkit.export.nerf_mesh import write_mesh

    surface = surface or NerfSurface()
    target = Path(out) if out is not None else None
    if target is not None and target.suffix.lower() not in MESH_SUFFIXES:
        raise SplatkitError(f"a mesh export must end in .ply or .obj, got {target.name!r}")
    _check_surface(surface)
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, payload = run.load_model(checkpoint)
    if not _is_nerf(model):
        raise SplatkitError(f"--format mesh needs a NeRF run (a density field); this is a {run.config.method!r} run",
                            run.path)
    mesh = _surface_mesh(model, surface).to_original_frame(payload_normalization(payload))
    target = target if target is not None else run.path / "export" / DEFAULT_MESH_NAME
    write_mesh(target, mesh)
    kept = f", the {surface.keep_largest} largest components" if surface.keep_largest else ""
    notes = (f"marching cubes at density {_threshold_note(mesh.threshold, surface)} on a lattice of "
             f"{surface.resolution} points along the box's longest side{kept}; vertex colours from the colour MLP "
             "looking along -normal")
    return MeshExport(target, mesh.num_vertices, mesh.num_faces, notes)


def _check_surface(surface: NerfSurface) -> None:
    if surface.resolution < 8:
        raise SplatkitError(f"--mesh-resolution must be >= 8, got {surface.resolution}")
    if surface.threshold is not None and not surface.threshold > 0:
        raise SplatkitError(f"--mesh-threshold must be a positive density, got {surface.threshold}")
    if surface.keep_largest < 0:
        raise SplatkitError(f"--mesh-keep-largest must be >= 0, got {surface.keep_largest}")
    if not 0 <= surface.sh_degree <= 3:
        raise SplatkitError(f"--nerf-sh-degree must be 0..3, got {surface.sh_degree}")


def _nerf_gaussians(nerf, surface: NerfSurface, max_degree: int):
    """``(GaussianModel in the normalised frame, notes, RMS colour error)`` from a NeRF's surface."""
    from splatkit.export.nerf_to_gaussians import NOTE, gaussians_from_nerf

    _check_surface(surface)
    mesh = _surface_mesh(nerf, surface)
    conv = gaussians_from_nerf(nerf, mesh, min(surface.sh_degree, max_degree))
    notes = (f"{mesh.num_vertices} Gaussians from the NeRF's surface (density "
             f"{_threshold_note(mesh.threshold, surface)}, lattice {surface.resolution}, SH degree "
             f"{conv.model.sh_degree}, RMS colour error {conv.rms:.4f}): {NOTE}")
    return conv.model, notes, conv.rms


def finetune_nerf_gaussians(run: Run, model, normalization, steps: int, quiet: bool = False):
    """Gaussians made from a NeRF, trained ``steps`` more by the 3DGS method on the NeRF run's own
    training views (3DGS' losses and learning rates, the run's background and masks, no
    densification: the surface gave them their places) in ``RUN/gaussians``; returns the trained
    model. The discs approximate a soft volume by a surface; a short fine-tune lets their colours,
    opacities and shapes fit the photos instead."""
    import dataclasses
    import shutil

    from splatkit.app.run_start import write_start
    from splatkit.train.trainer import Trainer

    if steps < 0:
        raise SplatkitError(f"--finetune-steps must be >= 0, got {steps}")
    target = run.path / FINETUNE_DIR
    if target.exists():
        shutil.rmtree(target)  # only this function writes there
    config = dataclasses.replace(
        run.config, method="3dgs", preset=None, out=target, steps=steps, densify=False, ssim_lambda=0.2,
        regularizers=[], plugins={}, sh_degree=model.sh_degree, sh_degree_interval=1, checkpoint_every=0,
        preview_every=0, keep_checkpoints=1, color_field=False, gaussian_masks=False, rvq=False).resolved()
    write_start(target, run, config, model, 0, normalization)
    trainer = Trainer(config, resume=True, quiet=quiet)
    trainer.train()
    return trainer.eval_model()


def _surface_mesh(nerf, surface: NerfSurface):
    """The NeRF's iso-surface in its normalised frame, with a progress bar."""
    from splatkit.export.nerf_mesh import extract_mesh

    with _progress("density lattice", "slabs", surface.quiet) as tick:
        return extract_mesh(nerf, surface.resolution, surface.threshold, surface.keep_largest, progress=tick)


def _threshold_note(value: float, surface: NerfSurface) -> str:
    return f"{value:.3g}" + (" (the occupancy grid's median)" if surface.threshold is None else "")


class _progress:
    """A rich progress bar with an ETA (plain lines with an ETA without a terminal, nothing when
    quiet): ``tick(done, total)``."""

    def __init__(self, label: str, unit: str, quiet: bool):
        self.label, self.unit, self.quiet = label, unit, quiet

    def __enter__(self):
        import time

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console()
        plain = not self.quiet and not console.is_terminal
        self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=console, disable=self.quiet or plain, transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=None)
        start = time.perf_counter()
        last = [-1]

        def tick(done: int, total: int) -> None:
            self.bar.update(task, completed=done, total=total)
            step = done * 5 // max(total, 1)
            if plain and step != last[0] and (step > 0 or done == total):
                last[0] = step
                rate = done / max(time.perf_counter() - start, 1e-9)
                eta = (total - done) / max(rate, 1e-9)
                print(f"{self.label}: {done}/{total} {self.unit}  ETA {int(eta) // 60}:{int(eta) % 60:02d}",
                      flush=True)

        return tick

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


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
