"""``splatkit compress``: compress a finished 3DGS run after training (issue #16).

The chain (maths in :mod:`splatkit.compress.posttrain`): importance of every Gaussian over the
training views, pruning to a share of them, a short fine-tune, k-means of the SH rest bands into a
codebook weighted by their sensitivity (Compressed 3DGS, Niedermayr et al. 2024), a
quantisation-aware fine-tune with the assignments frozen (the codebook and every other attribute
train, rendered on the grids ``.skz`` stores them on), then ``.skz`` with ``q_affine`` sections.

Both fine-tunes are the run's own method and training loop: the pruned model is written as a
checkpoint of a new run folder (``RUN/compressed`` by default) and the loop resumes it for a few
hundred more steps without densification, as ``splatkit train --resume`` would; the
quantisation-aware step is a plugin of that loop. The folder ends as an ordinary run: its latest
checkpoint holds exactly what its ``export/splats.skz`` holds (read back from the file), so
``splatkit eval / render / export --run RUN/compressed`` work on the compressed model, and its
``.skz`` export writes the same grids again instead of quantising a second time.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

import splatkit
from splatkit.compress import posttrain
from splatkit.app.run_start import save_payload, write_start
from splatkit.compress.skz import read_skz, write_skz
from splatkit.errors import SplatkitError
from splatkit.methods.base import Plugin, TrainState, lr_scaled_adam, payload_normalization
from splatkit.train import run as runfiles
from splatkit.train.run import Run
from splatkit.utils.atomic import write_text_atomic

DEFAULT_KEEP = 0.6
PRUNE_STEPS = 300  # the probe's fine-tune after pruning (issue #16)
QAT_STEPS = 200  # ... and after clustering
REPORT_NAME = "compress_report.json"


class QuantizeAwarePlugin(Plugin):
    """Renders the model as its ``.skz`` will hold it: SH rest from a learnable codebook through
    frozen assignments, every other attribute on its ``q_affine`` grid (straight-through). On save,
    the Gaussians' own SH rest get their codebook entries and the model the codebook, so its
    compacted form carries the codes."""

    name = "quantize_aware"
    applies_to = ("3dgs",)

    def __init__(self, config, codebook: Optional[torch.Tensor], labels: Optional[torch.Tensor], bits: dict):
        super().__init__(config)
        self.codebook0, self.labels, self.bits = codebook, labels, dict(bits)

    def setup(self, state: TrainState) -> None:
        self.state = state
        method = state.method
        self.codebook = None
        if self.codebook0 is not None:
            self.codebook = torch.nn.Parameter(self.codebook0.detach().clone().to(state.device))
            self.labels = self.labels.to(state.device)
            method.model.splats["shN"].requires_grad_(False)  # coded: its own values are not rendered
            # An entry stands for many Gaussians' SH: it learns at their LR (as the R-VQ plugin's do).
            method.aux_optimizers["sh_codebook"] = lr_scaled_adam([self.codebook], method.base_lrs["shN"],
                                                                  self.config.batch_size)

    def render_params(self, step: int, params: dict) -> dict:
        sp = self.state.method.model.splats
        b = self.bits
        fq = posttrain.fake_quantize
        means = fq(sp["means"], b["means"]) if "means" in b else sp["means"]
        quats = posttrain.canonical_quats(sp["quats"])
        quats = fq(quats, b["quats"]) if "quats" in b else quats
        scales = fq(sp["scales"], b["scales"]) if "scales" in b else sp["scales"]
        sh0 = fq(sp["sh0"], b["sh0"]) if "sh0" in b else sp["sh0"]
        if self.codebook is not None:
            cb = fq(self.codebook, b["shN"]) if "shN" in b else self.codebook
            shN = cb[self.labels].reshape(sp["shN"].shape)
        else:
            shN = sp["shN"]
        out = dict(params)
        # Opacity: .skz always stores round(255 * sigmoid); the 8-bit grid of the activated value.
        op = torch.sigmoid(sp["opacities"])
        out.update(means=means, quats=quats, scales=torch.exp(scales),
                   opacities=op + (torch.round(op * 255) / 255 - op).detach(),
                   colors=torch.cat([sh0, shN], dim=1))
        return out

    def on_save(self, state: TrainState) -> None:
        if self.codebook is None:
            return
        model = state.method.model
        with torch.no_grad():
            model.splats["shN"].copy_(self.codebook[self.labels].reshape(model.splats["shN"].shape))
        model.codebooks = {"shN": self.codebook.detach().clone()[None]}

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.codebook is None else {"sh_codebook": self.codebook}


def compress_run(run_dir, *, keep: Optional[float] = None, target_ratio: Optional[float] = None,
                 sh_codebook: Optional[int] = None, bits: Optional[dict] = None, prune_steps: int = PRUNE_STEPS,
                 qat_steps: int = QAT_STEPS, out: Optional[str | Path] = None, checkpoint=None,
                 device: Optional[str] = None, quiet: bool = False, stages: bool = False,
                 say: Optional[Callable[[str], None]] = None) -> dict:
    """Compress the run's latest (or given) checkpoint into ``out`` (default ``RUN/compressed``, a
    new run folder); returns the report also written to ``out/compress_report.json``.

    ``keep``: share of the Gaussians kept; ``target_ratio``: instead, the share that makes the
    ``.skz`` about that many times smaller than the run's plain PLY (estimated before the
    fine-tunes; the report gives what was reached); neither: :data:`DEFAULT_KEEP`.
    ``sh_codebook``: SH codebook entries (default from the count); ``bits``: ``{attribute: bits}``
    (default :data:`splatkit.compress.posttrain.DEFAULT_BITS`). ``stages``: also score the test
    views and size the file after every stage (slower; the benchmark's per-stage table)."""
    from splatkit.export import compact_from_model, model_from_compact, with_baked_sh
    from splatkit.train.trainer import Trainer

    say = say or ((lambda msg: None) if quiet else (lambda msg: print(msg, flush=True)))
    t_start = time.perf_counter()
    if keep is not None and target_ratio is not None:
        raise SplatkitError("give --keep or --target-ratio, not both")
    if keep is not None and not 0 < keep <= 1:
        raise SplatkitError(f"--keep must be in (0, 1], got {keep}")
    if target_ratio is not None and not target_ratio > 1:
        raise SplatkitError(f"--target-ratio must be above 1, got {target_ratio}")
    if sh_codebook is not None and not 1 <= sh_codebook <= 65536:
        raise SplatkitError(f"--sh-codebook must be in 1..65536, got {sh_codebook}")
    if prune_steps < 0 or qat_steps < 0:
        raise SplatkitError("fine-tune steps must be >= 0")
    bits = dict(posttrain.DEFAULT_BITS if bits is None else bits)
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    target = Path(out) if out is not None else run.path / "compressed"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SplatkitError("output folder exists and is not empty; remove it or choose another --out", target)
    model, payload = run.load_model(checkpoint)
    if not hasattr(model, "splats"):
        raise SplatkitError(f"a {run.config.method!r} run has no Gaussians to compress", run.path)
    if payload.get("compression"):
        raise SplatkitError("this checkpoint is already the output of splatkit compress", run.path)
    normalization = payload_normalization(payload)
    step0 = int(payload.get("step", 0))
    config = _finetune_config(run.config, target, device)
    dev = torch.device(config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    notes = []
    if model.color_field is not None:
        model, rms = with_baked_sh(model)
        notes.append(f"colour field baked to SH degree {model.sh_degree} (RMS colour error {rms:.4f})")
    model = model.to(dev)
    degree = model.sh_degree
    n0 = model.num_gaussians
    report: dict = {"source_run": str(run.path.resolve()), "source_step": step0, "gaussians_before": n0,
                    "sh_degree": degree, "bits": bits, "notes": notes, "stages": []}

    ply_bytes = _plain_ply_bytes(model)
    report["plain_ply_bytes"] = ply_bytes
    scorer = _Scorer(run, device)
    report["psnr_before"] = scorer(model)
    say(f"compress: {n0:,} Gaussians, SH degree {degree}; plain PLY {ply_bytes / 1e6:.2f} MB; "
        f"test PSNR {report['psnr_before']:.2f} dB")

    # 1. importance and SH sensitivity over the training views
    scene, _, positions = run.views("train")
    cams = scene.cameras[positions]
    t = time.perf_counter()
    act = model.activated()
    with _progress("importance", len(positions), quiet) as tick:
        importance, sens = posttrain.importance_and_sensitivity(
            act["means"], act["quats"], act["scales"], act["opacities"], degree, cams.viewmats(dev),
            cams.intrinsics(dev), [int(w) for w in cams.widths], [int(h) for h in cams.heights],
            backend=config.backend, near_plane=config.near_plane, far_plane=config.far_plane, progress=tick)
    report["importance_s"] = time.perf_counter() - t

    # 2. how many to keep
    k_sh = sh_codebook
    if keep is None:
        if target_ratio is not None:
            keep = _keep_for_ratio(model, importance, sens, ply_bytes / target_ratio, bits, k_sh, normalization)
            say(f"compress: keeping {keep:.0%} of the Gaussians for about {target_ratio:g}x")
        else:
            keep = DEFAULT_KEEP
    report["keep"] = keep
    mask = posttrain.keep_mask(importance.to(dev), keep)
    pruned = _subset(model, mask)
    sens = sens.to(dev)[mask]
    if stages:
        _stage(report, "pruned", pruned, scorer, normalization, {})

    # 3. fine-tune the pruned model (the run's own loop, resumed from it)
    target.mkdir(parents=True, exist_ok=True)
    write_start(target, run, config, pruned, step0, normalization)
    step = step0
    trainer = None
    if prune_steps:
        say(f"compress: fine-tuning {pruned.num_gaussians:,} Gaussians for {prune_steps} steps")
        step += prune_steps
        trainer = Trainer(dataclasses.replace(config, steps=step), resume=True, quiet=quiet)
        trainer.train()
        tuned = trainer.method.model
    else:
        tuned = pruned
    if stages:
        _stage(report, "pruned + fine-tune", tuned, scorer, normalization, {})

    # 4. SH rest -> sensitivity-weighted codebook
    codebook = labels = None
    k_rest = (degree + 1) ** 2 - 1
    if k_rest:
        k_sh = k_sh or posttrain.codebook_size_for(tuned.num_gaussians)
        t = time.perf_counter()
        x = tuned.splats["shN"].detach().reshape(tuned.num_gaussians, -1)
        codebook, labels = posttrain.weighted_kmeans(x, sens.max(dim=1).values, k_sh, seed=config.seed)
        report["kmeans_s"] = time.perf_counter() - t
        report["sh_codebook"] = int(codebook.shape[0])
        say(f"compress: SH rest bands -> {codebook.shape[0]} codebook entries")
        if stages:
            coded = _with_codes(tuned, codebook, labels)
            _stage(report, "+ SH codebook", coded, scorer, normalization, {})
            _stage(report, "+ quantised (no fine-tune)", coded, scorer, normalization, bits)

    # 5. quantisation-aware fine-tune, assignments frozen
    plugin = QuantizeAwarePlugin(config, codebook, labels, bits)
    if qat_steps:
        say(f"compress: quantisation-aware fine-tune, {qat_steps} steps")
        step += qat_steps
        trainer = Trainer(dataclasses.replace(config, steps=step), resume=True, quiet=quiet, plugins=[plugin])
        trainer.train()
        final = trainer.eval_model()
    else:
        final = _with_codes(tuned, codebook, labels) if codebook is not None else tuned
    # 6. the file, and the run's checkpoint read back from it
    final = final.compacted()
    with torch.no_grad():
        final.splats["quats"].copy_(posttrain.canonical_quats(final.splats["quats"]))
    meta = {"splatkit_version": splatkit.__version__, "step": step, "compressed_from": str(run.path.resolve())}
    skz_path = target / "export" / "splats.skz"
    file_report = write_skz(skz_path, compact_from_model(final, normalization, meta, bits=bits))
    stored = model_from_compact(read_skz(skz_path))
    if "shN" in stored.rvq:
        stored.codebooks = {"shN": torch.from_numpy(stored.rvq["shN"].codebooks)}
    _save_checkpoint(target, stored, step, normalization, {"bits": bits, "source_run": str(run.path.resolve()),
                                                           "source_step": step0, "keep": keep})
    report["skz_bytes"] = file_report["file_bytes"]
    report["sections"] = file_report["sections"]
    report["gaussians_after"] = stored.num_gaussians
    report["ratio"] = ply_bytes / file_report["file_bytes"]
    report["psnr_after"] = scorer(stored)
    report["delta_db"] = report["psnr_after"] - report["psnr_before"]
    if stages:
        report["stages"].append({"stage": "+ quantisation-aware fine-tune (the .skz)",
                                 "gaussians": stored.num_gaussians,
                                 "bytes": file_report["file_bytes"], "psnr": report["psnr_after"]})
    report["skz"] = str(skz_path)
    report["run"] = str(target.resolve())
    report["steps"] = {"prune_finetune": prune_steps, "quantize_aware": qat_steps}
    report["time_s"] = time.perf_counter() - t_start - report.get("stages_s", 0.0)
    write_text_atomic(target / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    say(f"compress: {report['gaussians_after']:,} Gaussians, .skz {report['skz_bytes'] / 1e3:.0f} kB = "
        f"{report['ratio']:.1f}x smaller than the plain PLY; test PSNR {report['psnr_before']:.2f} -> "
        f"{report['psnr_after']:.2f} dB ({report['delta_db']:+.2f}); {report['time_s']:.0f} s; run folder {target}")
    return report


# -- pieces ----------------------------------------------------------------------------------------
def _finetune_config(config, target: Path, device: Optional[str]):
    """The run's config for fine-tuning in ``target``: no densification, no in-training
    compression (its result is already in the model; the colour field was baked), the full SH
    degree from the first step, no intermediate checkpoints or previews."""
    return dataclasses.replace(
        config, out=target, densify=False, gaussian_masks=False, rvq=False, color_field=False,
        sh_degree_interval=1, checkpoint_every=0, preview_every=0, keep_checkpoints=1,
        device=device or config.device)


def _save_checkpoint(target: Path, model, step: int, normalization, compression: dict) -> None:
    payload = model.to_payload(step, normalization.to_dict())
    payload["compression"] = compression
    for old in sorted((target / runfiles.CHECKPOINT_DIR).glob("ckpt_*.pt")):
        old.unlink(missing_ok=True)
    save_payload(target, payload, step)


def _subset(model, mask: torch.Tensor):
    from splatkit.models.gaussians import GaussianModel

    return GaussianModel({k: v.detach()[mask] for k, v in model.splats.items()}, model.sh_degree)


def _with_codes(model, codebook: torch.Tensor, labels: torch.Tensor):
    """``model`` with its SH rest replaced by their codebook entries (compacted: codes in ``rvq``)."""
    from splatkit.models.gaussians import GaussianModel

    splats = {k: v.detach() for k, v in model.splats.items()}
    splats["shN"] = codebook[labels].reshape(splats["shN"].shape)
    out = GaussianModel(splats, model.sh_degree)
    out.codebooks = {"shN": codebook[None]}
    return out.compacted()


def _plain_ply_bytes(model) -> int:
    """Size of the model as the Inria 3DGS PLY (``splatkit export --format ply``)."""
    from splatkit.export import write_ply

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plain.ply"
        write_ply(path, {k: v.detach().cpu() for k, v in model.splats.items()}, model.sh_degree)
        return path.stat().st_size


def _skz_size(model, normalization, bits: dict) -> int:
    from splatkit.compress.skz import skz_to_bytes
    from splatkit.export import compact_from_model

    m = model.compacted()
    if bits:
        m = _canonical(m)
    data, _ = skz_to_bytes(compact_from_model(m, normalization, bits=bits))
    return len(data)


def _canonical(model):
    from splatkit.models.gaussians import GaussianModel

    splats = {k: v.detach() for k, v in model.splats.items()}
    splats["quats"] = posttrain.canonical_quats(splats["quats"])
    out = GaussianModel(splats, model.sh_degree)
    out.rvq = dict(model.rvq)
    return out


def _keep_for_ratio(model, importance, sens, budget: float, bits: dict, k_sh: Optional[int], normalization) -> float:
    """Share of the Gaussians whose ``.skz`` fits ``budget`` bytes: the file of the whole model
    with a quick codebook, measured, scaled linearly in the count (fixed parts kept apart)."""
    n = model.num_gaussians
    k_rest = (model.sh_degree + 1) ** 2 - 1
    coded = model
    fixed = 0
    if k_rest:
        k = k_sh or posttrain.codebook_size_for(n)
        x = model.splats["shN"].detach().reshape(n, -1)
        cb, lab = posttrain.weighted_kmeans(x, sens.max(dim=1).values, k, iters=3)
        coded = _with_codes(model, cb, lab)
        fixed = cb.numel() * (1 if bits.get("shN", 16) <= 8 else 2)
    total = _skz_size(coded, normalization, bits)
    per = (total - fixed) / n
    keep = (budget - fixed) / (per * n)
    if keep <= 0:
        raise SplatkitError(f"no share of the Gaussians fits the target: the fixed parts alone take {fixed} bytes")
    return float(min(1.0, keep))


class _Scorer:
    """Mean test PSNR of a model, scored as ``splatkit eval`` scores."""

    def __init__(self, run: Run, device: Optional[str]):
        from splatkit.methods.scoring import settings_for

        self.scene, _, self.positions = run.views("test")
        self.settings = settings_for(run.config, device=device)
        self.composite = bool(run.config.use_masks and self.scene.masks is not None)

    def __call__(self, model) -> float:
        from splatkit.methods.scoring import score_views

        rows, _ = score_views(model, self.scene, self.positions, self.settings, composite_gt=self.composite)
        return float(np.mean([r["psnr"] for r in rows]))


def _stage(report: dict, name: str, model, scorer: _Scorer, normalization, bits: dict) -> None:
    """Score ``model`` as ``.skz`` with ``bits`` would store it (file size measured)."""
    from splatkit.compress.skz import skz_from_bytes, skz_to_bytes
    from splatkit.export import compact_from_model, model_from_compact

    t = time.perf_counter()
    m = _canonical(model.compacted()) if bits else model.compacted()
    data, _ = skz_to_bytes(compact_from_model(m, normalization, bits=bits))
    decoded = model_from_compact(skz_from_bytes(data))
    report["stages"].append({"stage": name, "gaussians": decoded.num_gaussians, "bytes": len(data),
                             "psnr": scorer(decoded)})
    report["stages_s"] = report.get("stages_s", 0.0) + time.perf_counter() - t  # not part of the command's work


class _progress:
    """A rich progress bar (plain lines without a terminal, nothing when quiet): ``tick(i, total)``."""

    def __init__(self, label: str, total: int, quiet: bool):
        self.label, self.total, self.quiet = label, total, quiet

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console()
        self.plain = not self.quiet and not console.is_terminal
        self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=console, disable=self.quiet or self.plain, transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task(self.label, total=self.total)

        def tick(i: int, total: int) -> None:
            self.bar.update(self.task, completed=i)
            if self.plain and (i == total or i % max(1, total // 5) == 0):
                print(f"{self.label}: {i}/{total} views", flush=True)

        return tick

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
