"""A hash-grid NeRF as a method (``--method nerf``): Instant-NGP's field
(:mod:`splatkit.models.nerf_field`) trained on random pixel rays with nerfacc's occupancy grid, as
nerfacc 0.5.3's ``examples/train_ngp_nerf_occ.py`` trains it: Adam (lr 1e-2, eps 1e-15, weight
decay 1e-6 on the MLPs), linear warm-up over 100 steps from 1%, then x0.33 at 1/2, 3/4 and 9/10 of
the run; occupancy-grid update every 16 steps (threshold 0.01, every cell during the first 256
steps); stratified samples.

Each step draws ``nerf_rays`` pixels uniformly from the step's views (:meth:`Nerf.prepare_batch`);
the loop's photometric loss and plugins then see ``[1, 1, N, C]`` "images" of those rays. The
background is composited per ray (``random``: a colour per ray, as Instant-NGP trains).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from splatkit.errors import SplatkitError
from splatkit.methods import register_method
from splatkit.methods.base import Batch, Method, ParamHook, RenderOutputs, load_optimizer_state
from splatkit.models import hollow
from splatkit.models.hashgrid import HashGridConfig
from splatkit.models.nerf_field import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, NerfConfig, NerfModel, camera_rays, \
    scene_box
from splatkit.models.table_prune import TablePruner
from splatkit.render import volume

# nerfacc examples/train_ngp_nerf_occ.py: lr schedule and optimiser.
WARMUP_STEPS = 100
WARMUP_START = 0.01
LR_MILESTONES = (1 / 2, 3 / 4, 9 / 10)
LR_GAMMA = 0.33
ADAM_EPS = 1e-15
MLP_WEIGHT_DECAY = 1e-6
OCC_THRESHOLD = 1e-2
OCC_WARMUP_STEPS = 256


def lr_factor(step: int, steps: int) -> float:
    """nerfacc's ``ChainedScheduler(LinearLR(0.01 -> 1, 100 steps), MultiStepLR(1/2, 3/4, 9/10, x0.33))``."""
    warm = WARMUP_START + (1 - WARMUP_START) * min(step, WARMUP_STEPS) / WARMUP_STEPS
    return warm * LR_GAMMA ** sum(step >= int(steps * m) for m in LR_MILESTONES)


def nerf_config(cfg, aabb: list[float]) -> NerfConfig:
    return NerfConfig(
        aabb=[float(v) for v in aabb],
        grid=HashGridConfig(n_levels=cfg.nerf_levels, n_features_per_level=2,
                            log2_hashmap_size=cfg.nerf_log2_hashmap_size, base_resolution=16,
                            max_resolution=cfg.nerf_max_resolution, seed=cfg.seed),
        occ_resolution=cfg.nerf_occ_resolution, near=float(cfg.near_plane), far=float(cfg.far_plane),
        march_steps=cfg.nerf_march_steps, cone_angle=float(cfg.nerf_cone_angle),
        hollow_resolution=cfg.hollow_resolution if cfg.hollow else 0, hollow_threshold=float(cfg.hollow_threshold),
        hollow_init=float(cfg.hollow_init))


@register_method
class Nerf(Method):
    name = "nerf"
    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_version = CHECKPOINT_VERSION
    auto_presets = {"cpu": "nerf", "cuda": "nerf"}

    def __init__(self, config, device: torch.device):
        super().__init__(config, device)
        self.model: Optional[NerfModel] = None
        self.last_samples = 0
        self.pruner: Optional[TablePruner] = None

    @classmethod
    def check_config(cls, config) -> None:
        if config.ssim_lambda != 0:
            raise SplatkitError("the nerf method trains on scattered pixel rays, where SSIM is undefined: "
                                f"set ssim_lambda=0 (got {config.ssim_lambda}; the nerf presets do)")
        # Signs of the nerf_* numbers are checked with every other key (TrainConfig.resolved).
        if not 1 <= config.nerf_log2_hashmap_size <= 30:
            raise SplatkitError(f"nerf_log2_hashmap_size must be in 1..30, got {config.nerf_log2_hashmap_size}")
        if config.nerf_max_resolution < 16:
            raise SplatkitError(f"nerf_max_resolution must be >= 16 (the base resolution), got "
                                f"{config.nerf_max_resolution}")
        if config.nerf_aabb is not None:
            NerfConfig(aabb=list(config.nerf_aabb)).validate()
        if config.nerf_impl not in volume.IMPLS:
            raise SplatkitError(f"nerf_impl must be one of {', '.join(volume.IMPLS)}; got {config.nerf_impl!r}")

    # -- set-up ---------------------------------------------------------------------------------
    def initialize(self, scene, *, scene_scale: float) -> str:
        cfg = self.config
        if cfg.nerf_aabb is not None:
            aabb, how = list(cfg.nerf_aabb), "--set nerf_aabb"
        else:
            aabb, how = scene_box(scene, scene_scale)
        self.model = NerfModel(nerf_config(cfg, aabb)).to(self.device)
        self.model.impl = cfg.nerf_impl
        cams = scene.cameras
        sizes = {(int(w), int(h)) for w, h in zip(cams.widths, cams.heights)}
        for w, h in sorted(sizes):
            idx = [i for i in range(len(cams)) if (int(cams.widths[i]), int(cams.heights[i])) == (w, h)]
            sub = cams[idx]
            self.model.mark_invisible_cells(sub.viewmats(self.device), sub.intrinsics(self.device), w, h)
        box = ", ".join(f"{v:.2f}" for v in aabb)
        return f"hash-grid NeRF in the box [{box}] from {how}"

    def restore(self, payload: dict, *, scene_scale: float) -> None:
        model = NerfModel.from_payload(payload, map_location=self.device)
        want = nerf_config(self.config, model.config.aabb)
        if model.config.grid != want.grid or model.config.occ_resolution != want.occ_resolution:
            raise SplatkitError("the checkpoint's hash grid / occupancy grid differ from the config's; "
                                "they cannot change on resume")
        def hollow_of(c):
            return c.hollow_resolution, c.hollow_threshold if c.hollow_resolution else None

        if hollow_of(model.config) != hollow_of(want):
            raise SplatkitError("the checkpoint's HollowNeRF saliency grid (hollow, hollow_resolution, "
                                "hollow_threshold) differs from the config's; it cannot change on resume")
        model.impl = self.config.nerf_impl
        self.model = model

    def build_optimizers(self) -> None:
        f = self.model.field
        mlps = [p for n, p in f.named_parameters() if not n.startswith(("grid.", "saliency."))]
        groups = [{"params": [f.grid.table], "lr": self.config.nerf_lr, "name": "table"},
                  {"params": mlps, "lr": self.config.nerf_lr, "weight_decay": MLP_WEIGHT_DECAY, "name": "mlp"}]
        if f.saliency is not None:  # the paper trains G with W and H (one Adam; our own LR, hollow_lr)
            groups.append({"params": [f.saliency.logits], "lr": self.config.hollow_lr, "name": "saliency",
                           "base_lr": self.config.hollow_lr})
        self.optimizers = {"field": torch.optim.Adam(groups, eps=ADAM_EPS, foreach=True)}
        cfg = self.config
        self.pruner = None
        if cfg.nerf_prune_keep < 1:
            grid = f.grid
            self.pruner = TablePruner(grid.table, cfg.steps, cfg.nerf_prune_keep, cfg.nerf_prune_start,
                                      cfg.nerf_prune_end, cfg.nerf_prune_every, cfg.nerf_prune_scope,
                                      [grid.level_slice(level) for level in range(grid.n_levels)])

    def load_training_state(self, state: dict) -> None:
        load_optimizer_state(self.optimizers["field"], state["optimizers"]["field"])

    def training_state(self) -> dict:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    # -- a step ---------------------------------------------------------------------------------
    def prepare_batch(self, step: int, batch: Batch) -> Batch:
        cfg = self.config
        B, H, W = batch.images.shape[:3]
        n = cfg.nerf_rays
        # The global torch RNG (saved in checkpoints): a resumed run draws the same rays.
        pix = torch.stack([torch.randint(B, (n,)), torch.randint(H, (n,)), torch.randint(W, (n,))], dim=-1)
        pix = pix.to(self.device)
        b, y, x = pix.unbind(-1)

        def take(t):
            return None if t is None else t[b, y, x][None, None]

        images, masks = take(batch.images), take(batch.masks)
        if cfg.background == "random":
            bg = torch.rand(n, 3).to(self.device)
        else:
            bg = batch.backgrounds[b]
        target = images
        if cfg.use_masks and masks is not None:
            target = images * masks + bg[None, None] * (1 - masks)
        return Batch(step=batch.step, positions=batch.positions, view_ids=batch.view_ids, images=images,
                     target=target, viewmats=batch.viewmats, Ks=batch.Ks, width=batch.width, height=batch.height,
                     backgrounds=bg, masks=masks, depths=take(batch.depths), pixels=pix)

    def render_train(self, step: int, batch: Batch, *, with_depth: bool,
                     param_hooks: Sequence[ParamHook] = ()) -> RenderOutputs:
        if batch.pixels is None:
            raise SplatkitError("the nerf method trains on pixel rays (Nerf.prepare_batch was not called)")
        model = self.model
        if model.field.saliency is not None:
            model.field.saliency.set_alpha(step, self.config.steps)
        model.update_occupancy(step, self.config.nerf_occ_every, OCC_THRESHOLD, OCC_WARMUP_STEPS)
        rays_o, rays_d, zscale = camera_rays(batch.viewmats, batch.Ks, batch.width, batch.height, batch.pixels)
        out, samples = model.render_rays_train(rays_o, rays_d)
        self.last_samples = len(samples)
        colors = out.colors + (1.0 - out.opacities)[:, None] * batch.backgrounds
        depths = None
        if with_depth:
            depths = (out.depths / out.opacities.clamp_min(1e-10) * zscale)[None, None, :, None]
        return RenderOutputs(colors=colors[None, None], alphas=out.opacities[None, None, :, None],
                             meta={"samples": self.last_samples}, depths=depths, extras={"samples": samples})

    def render(self, viewmats, Ks, width, height, backgrounds, *, with_depth=True, step=None) -> RenderOutputs:
        renders, alphas, meta = self.model.render(viewmats, Ks, width, height, backgrounds=backgrounds,
                                                  render_mode="RGB+ED" if with_depth else "RGB")
        return RenderOutputs(colors=renders[..., :3], alphas=alphas, meta=meta,
                             depths=renders[..., 3:4] if with_depth else None)

    def loss_terms(self, step: int, batch: Batch, outputs: RenderOutputs) -> dict[str, torch.Tensor]:
        sal = self.model.field.saliency
        if sal is None:
            return {}
        cfg = self.config
        if cfg.hollow_solver == "decoupled":  # applied beside Adam in optimizer_step
            return {}
        return {"hollow_admm": hollow.admm_penalty(sal.mass(), sal.gamma, cfg.hollow_budget, cfg.hollow_rho)}

    def optimizer_step(self, step: int, outputs: RenderOutputs) -> None:
        opt = self.optimizers["field"]
        factor = lr_factor(step, self.config.steps)
        for group in opt.param_groups:
            group["lr"] = group.get("base_lr", self.config.nerf_lr) * factor
        if self.pruner is not None:
            self.pruner.before_step(step, opt)
        for o in (opt, *self.aux_optimizers.values()):
            o.step()
            o.zero_grad(set_to_none=True)
        sal = self.model.field.saliency
        if sal is not None and self.config.hollow_solver == "decoupled":
            hollow.decoupled_step(sal, self.config.hollow_lr * factor, self.config.hollow_budget,
                                  self.config.hollow_rho)
        if sal is not None:  # ADMM: the dual ascent step after the primal one (paper)
            hollow.dual_step(sal.gamma, sal.mass().detach(), self.config.hollow_budget, self.config.hollow_rho)

    def train_stats(self) -> dict[str, float]:
        occ = self.model.estimator.binaries
        stats = {"samples": self.last_samples, "occupied": float(occ.float().mean()),
                 "lr": self.optimizers["field"].param_groups[0]["lr"]}
        if self.pruner is not None:
            stats.update(self.pruner.stats())
        sal = self.model.field.saliency
        if sal is not None:
            with torch.no_grad():
                stats.update({"saliency_mass": float(sal.mass()), "admm_gamma": float(sal.gamma),
                              "kept_cells": float(sal.kept_cells().float().mean())})
        return stats

    def summary_stats(self, eval_model) -> dict:
        """Pruned models (HollowNeRF, table pruning): what a compact export keeps (table rows, parameters)."""
        if eval_model.field.saliency is None and self.config.nerf_prune_keep >= 1:
            return {}
        return {"compact_export": eval_model.to_payload(0, None, self.name, compact=True)["compact_export"]}

    @property
    def num_primitives(self) -> int:
        return self.model.num_primitives

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.model.field.named_parameters())

    # -- checkpoints and evaluation ---------------------------------------------------------------
    def checkpoint_payload(self, step: int, normalization: Optional[dict]) -> dict:
        return self.model.to_payload(step, normalization, self.name)

    def eval_model(self) -> NerfModel:
        return self.model

    @classmethod
    def load_model(cls, payload: dict, map_location="cpu", raw: bool = False) -> NerfModel:
        return NerfModel.from_payload(payload, map_location=map_location)
