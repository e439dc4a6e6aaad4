"""The pairs a scene generates to fine-tune its repair model (GaussianObject's "self-generating
strategy"): corrupted renders of the training cameras, each paired with the real photo.

* ``loo`` — leave-one-out (``leave_one_out_stage1.py``): a model fitted on the other N-1 views
  renders the held-out camera at a few points of its fit (it never saw that photo, so its errors
  are those of a novel view).
* ``noise`` — noisy Gaussians (``dataset_lora.py``, ``GaussianModel.add_statistics_noise``): the
  run's own model with noise added to every raw parameter, drawn from the statistics of how the
  leave-one-out models' parameters moved once they were also fitted to their held-out view
  (``leave_one_out_stage2.py``: mean and std of ``before - after`` per attribute and dimension);
  each noise entry is dropped with probability 0.6-0.8 and the draw clamped to mean +- (0.6-0.8)
  std for scales, rotations and opacities, GaussianObject's ranges.
* ``identity`` — the model's render of a training view against its photo: a model fitted per
  scene without them learns to change every input, even a render that is already right (the
  issue's probe measured the over-correction).

The leave-one-out fits are short plain fits of the run's method (no plugins), in a forked RNG so
the run itself draws the same random numbers with or without them (exact resume).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, Method
from splatkit.methods.losses import photometric_loss
from splatkit.priors.repair.base import Progress, RepairPairs

# dataset_lora.py: noise_dropout and noise_scale (std_scale) drawn uniformly in [0.6, 0.8].
NOISE_DROPOUT = (0.6, 0.8)
NOISE_STD_SCALE = (0.6, 0.8)
# GaussianObject's stage 2 runs from iteration 6000 to 10000: 2/3 of stage 1's length.
STAGE2_FRACTION = 4000 / 6000
# Points of the stage-1 fit at which the held-out camera is rendered (GaussianObject keeps the
# held-out renders of many iterations, left_image/sample_{it}.png).
LOO_SNAPSHOTS = (0.5, 0.75, 1.0)
# Attributes clamped to mean +- std_scale x std (add_statistics_noise: _scaling, _opacity, _rotation).
CLAMPED = ("scales", "opacities", "quats")


@dataclasses.dataclass
class SceneTensors:
    """A scene's images (and masks) as device tensors, with its cameras, ready for batches."""

    images: torch.Tensor  # [N, H, W, 3]
    masks: Optional[torch.Tensor]  # [N, H, W, 1]
    viewmats: torch.Tensor  # [N, 4, 4]
    Ks: torch.Tensor  # [N, 3, 3]
    width: int
    height: int

    @classmethod
    def of(cls, scene, device) -> "SceneTensors":
        sizes = {(int(w), int(h)) for w, h in zip(scene.cameras.widths, scene.cameras.heights)}
        if len(sizes) != 1:
            raise SplatkitError(f"repair pairs need views of one size; this scene has {sorted(sizes)}")
        (width, height), = sizes
        images = torch.from_numpy(np.stack(scene.images).astype(np.float32)).to(device)
        masks = None if scene.masks is None else torch.from_numpy(
            np.stack(scene.masks).astype(np.float32))[..., None].to(device)
        return cls(images, masks, scene.cameras.viewmats(device).float(), scene.cameras.intrinsics(device).float(),
                   width, height)

    def targets(self, positions: Sequence[int], background: torch.Tensor, use_masks: bool) -> torch.Tensor:
        """The photos as the run's photometric loss sees them (masked ones on the background)."""
        img = self.images[list(positions)]
        if use_masks and self.masks is not None:
            m = self.masks[list(positions)]
            img = img * m + background.view(1, 1, 1, 3) * (1 - m)
        return img


def fit_config(config, steps: int, seed: int):
    """The run's config for a short plain fit of ``steps``: every step-valued schedule scaled to
    it (densification from/to, opacity reset, SH degree increments), no plugins."""
    frac = steps / max(int(config.steps), 1)
    scaled = {k: max(1, round(getattr(config, k) * frac)) for k in ("refine_stop_iter", "reset_every",
                                                                    "sh_degree_interval", "refine_every")}
    return dataclasses.replace(config, steps=steps, seed=seed, refine_start_iter=round(config.refine_start_iter * frac),
                               regularizers=[], plugins={}, **scaled)


def fit_views(method_cls: type[Method], config, scene, *, steps: int, seed: int, device, background: torch.Tensor,
              scene_scale: float, method: Optional[Method] = None, start_step: int = 0,
              snapshot_at: Sequence[int] = (), snapshot_camera: Optional[tuple] = None,
              progress: Progress = None) -> tuple[Method, list[torch.Tensor]]:
    """Fit ``method_cls`` (a new one, or ``method`` further) to ``scene``'s views for ``steps``
    plain steps (photometric loss and the method's own terms, one random view per step).
    ``snapshot_camera = (viewmat [1, 4, 4], K [1, 3, 3])`` is rendered after each step in
    ``snapshot_at`` (1-based counts). Returns the method and the snapshots ``[H, W, 3]``."""
    views = SceneTensors.of(scene, device)
    if method is None:
        method = method_cls(config, device)
        method.initialize(scene, scene_scale=scene_scale)
        method.build_optimizers()
    gen = torch.Generator().manual_seed(int(seed))
    bg = background.to(device).view(1, 3)
    snaps: list[torch.Tensor] = []
    for k in range(steps):
        step = start_step + k
        p = int(torch.randint(len(scene), (1,), generator=gen))
        target = views.targets([p], bg[0], bool(config.use_masks))
        batch = Batch(step=step, positions=[p], view_ids=[scene.ids[p]], images=views.images[[p]], target=target,
                      viewmats=views.viewmats[[p]], Ks=views.Ks[[p]], width=views.width, height=views.height,
                      backgrounds=bg, masks=None if views.masks is None else views.masks[[p]])
        outputs = method.render_train(step, batch, with_depth=False)
        method.pre_backward(step, outputs)
        loss, _ = photometric_loss(outputs.colors, batch.target, config.ssim_lambda)
        for term in method.loss_terms(step, batch, outputs).values():
            loss = loss + term
        if not bool(torch.isfinite(loss)):
            raise SplatkitError(f"a leave-one-out fit diverged at its step {k + 1} (loss {float(loss)})")
        loss.backward()
        method.optimizer_step(step, outputs)
        if snapshot_camera is not None and (k + 1) in snapshot_at:
            with torch.no_grad():
                out = method.render(snapshot_camera[0], snapshot_camera[1], views.width, views.height, bg,
                                    with_depth=False)
            snaps.append(out.colors[0].clamp(0, 1).detach())
        if progress is not None and (k + 1) % 25 == 0:
            progress(k + 1, steps, float(loss.detach()))
    return method, snaps


def parameter_shift_stats(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
                          ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """GaussianObject's ``diffs.pkl``: per attribute, the mean and std over Gaussians of
    ``before - after`` (per dimension). Both dicts must hold the same Gaussians."""
    out = {}
    for key, b in before.items():
        a = after[key]
        if a.shape != b.shape:
            raise SplatkitError(f"parameter statistics: {key} changed shape {tuple(b.shape)} -> {tuple(a.shape)}")
        diff = (b - a).detach().float()
        if diff.numel() == 0:  # e.g. shN at SH degree 0
            continue
        std = diff.std(dim=0) if diff.shape[0] > 1 else torch.zeros_like(diff[0])
        out[key] = (diff.mean(dim=0), std)
    return out


def average_stats(stats: Sequence[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean of several fits' statistics, as ``add_statistics_noise`` averages its ``diffs.pkl``s."""
    keys = set.intersection(*(set(s) for s in stats))
    return {k: (torch.stack([s[k][0] for s in stats]).mean(0), torch.stack([s[k][1] for s in stats]).mean(0))
            for k in sorted(keys)}


def noisy_params(splats: dict[str, torch.Tensor], stats: dict, generator: torch.Generator, *,
                 dropout: float, std_scale: float) -> dict[str, torch.Tensor]:
    """A copy of raw parameters ``splats`` with GaussianObject's statistics noise added:
    ``randn * std + mean``, clamped to mean +- std_scale x std for :data:`CLAMPED`, each entry
    zeroed with probability ``dropout``."""
    out = {}
    for key, p in splats.items():
        if key not in stats:
            out[key] = p.detach().clone()
            continue
        mean, std = (t.to(p.device, p.dtype) for t in stats[key])
        noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * std + mean
        if key in CLAMPED:
            noise = torch.maximum(torch.minimum(noise, mean + std_scale * std), mean - std_scale * std)
        keep = (torch.rand(p.shape, generator=generator) >= dropout).to(p.device, p.dtype)
        out[key] = p.detach() + noise * keep
    return out


def _render_with(method: Method, raw: dict[str, torch.Tensor], viewmats, Ks, width, height, bg) -> torch.Tensor:
    """Render ``method``'s model with its raw parameters temporarily replaced by ``raw``."""
    splats = method.model.splats
    saved = {k: splats[k].data.clone() for k in raw}
    try:
        with torch.no_grad():
            for k, v in raw.items():
                splats[k].data.copy_(v)
            out = method.render(viewmats, Ks, width, height, bg.expand(len(viewmats), 3), with_depth=False)
        return out.colors.clamp(0, 1)
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                splats[k].data.copy_(v)


def generate_pairs(method: Method, scene, config, *, background: torch.Tensor, scene_scale: float,
                   loo_steps: int, noise_draws: int, seed: int, stats: Optional[dict] = None,
                   progress: Progress = None, say=None) -> tuple[RepairPairs, dict]:
    """Pairs for ``scene``'s training views (module doc) from the trained ``method`` (3DGS) and
    ``loo_steps``-step leave-one-out fits. ``stats``: noise statistics to use instead of
    measuring them (``loo_steps`` 0 then skips the fits). Returns the pairs and a report
    (seconds per stage, the statistics, pair counts)."""
    n = len(scene)
    if n < 2 and loo_steps > 0:
        raise SplatkitError("leave-one-out pairs need at least two training views")
    device = method.device
    views = SceneTensors.of(scene, device)
    bg = background.to(device).view(1, 3)
    use_masks = bool(config.use_masks)
    gen = torch.Generator().manual_seed(int(seed))
    parts: list[RepairPairs] = []
    report: dict = {"seconds": {}}
    say = say or (lambda msg: None)

    t0 = time.perf_counter()
    fit_stats = []
    if loo_steps > 0:
        stage2 = max(1, round(loo_steps * STAGE2_FRACTION))
        shots = sorted({max(1, round(f * loo_steps)) for f in LOO_SNAPSHOTS})
        # The fits draw from the global RNGs (gsplat's densification): fork them so the run's
        # own random numbers stay the same as without this step.
        with torch.random.fork_rng(devices=[]):
            for held in range(n):
                rest = [p for p in range(n) if p != held]
                say(f"repair pairs: leave-one-out fit {held + 1}/{n} ({loo_steps} + {stage2} steps)")
                cfg = fit_config(config, loo_steps, int(seed) + 101 * (held + 1))
                cam = (views.viewmats[[held]], views.Ks[[held]])
                fitted, snaps = fit_views(type(method), cfg, scene.subset(rest), steps=loo_steps, seed=cfg.seed,
                                          device=device, background=bg[0], scene_scale=scene_scale,
                                          snapshot_at=shots, snapshot_camera=cam, progress=progress)
                target = views.targets([held], bg[0], use_masks)
                parts.append(RepairPairs(torch.stack(snaps), target.expand(len(snaps), -1, -1, -1).clone(),
                                         ["loo"] * len(snaps), [scene.ids[held]] * len(snaps)))
                # Stage 2: the same Gaussians fitted to every view, held-out one included, without
                # densification, so parameters can be compared one to one.
                before = {k: v.detach().clone() for k, v in fitted.model.splats.items()}
                fitted.strategy = None
                fit_views(type(method), cfg, scene, steps=stage2, seed=cfg.seed + 1, device=device, background=bg[0],
                          scene_scale=scene_scale, method=fitted, start_step=loo_steps, progress=progress)
                fit_stats.append(parameter_shift_stats(before, dict(fitted.model.splats.items())))
        report["seconds"]["leave_one_out"] = time.perf_counter() - t0
    if stats is None:
        if not fit_stats:
            raise SplatkitError("noise pairs need parameter statistics: run leave-one-out fits (loo_steps > 0)")
        stats = average_stats(fit_stats)
    report["stats"] = {k: (v[0].cpu(), v[1].cpu()) for k, v in stats.items()}

    t1 = time.perf_counter()
    all_pos = list(range(n))
    targets = views.targets(all_pos, bg[0], use_masks)
    for draw in range(noise_draws):
        lo, hi = NOISE_DROPOUT
        dropout = lo + (hi - lo) * float(torch.rand((), generator=gen))
        lo, hi = NOISE_STD_SCALE
        scale = lo + (hi - lo) * float(torch.rand((), generator=gen))
        raw = noisy_params(dict(method.model.splats.items()), stats, gen, dropout=dropout, std_scale=scale)
        renders = _render_with(method, raw, views.viewmats, views.Ks, views.width, views.height, bg)
        parts.append(RepairPairs(renders, targets.clone(), ["noise"] * n, list(scene.ids)))
    with torch.no_grad():
        clean = method.render(views.viewmats, views.Ks, views.width, views.height, bg.expand(n, 3),
                              with_depth=False).colors.clamp(0, 1)
    parts.append(RepairPairs(clean, targets.clone(), ["identity"] * n, list(scene.ids)))
    report["seconds"]["noise_and_identity"] = time.perf_counter() - t1
    pairs = RepairPairs.cat(parts)
    report["counts"] = pairs.counts()
    return pairs, report
