"""3D Gaussian Splatting as a method (``--method 3dgs``), following gsplat's
``examples/simple_trainer.py`` (gsplat 1.5.3): one Adam per parameter group (what gsplat's
strategies edit), exponential position-LR decay, the 3DGS SH-degree schedule, and a densification
strategy object (:mod:`splatkit.methods.strategies`) driven by the rasteriser's ``meta``.
Compact-3DGS's parts are plugins it adds when the config switches them on
(:mod:`splatkit.methods.compact_plugins`).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.methods import register_method
from splatkit.methods.base import (Batch, Method, ParamHook, RenderOutputs, load_optimizer_state, lr_scaled_adam,
                                   to_cpu, to_device)
from splatkit.methods.strategies import make_strategy
from splatkit.models.gaussians import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, GaussianModel


@register_method
class GaussianSplatting(Method):
    name = "3dgs"
    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_version = CHECKPOINT_VERSION

    def __init__(self, config, device: torch.device):
        super().__init__(config, device)
        self.model: Optional[GaussianModel] = None
        self.strategy = make_strategy(config)
        self.strategy_state: dict = {}
        self.scene_scale = 1.0
        self.backend: Optional[str] = None  # what the rasteriser's "auto" picked, for the summary

    # -- set-up ---------------------------------------------------------------------------------
    def initialize(self, scene, *, scene_scale: float) -> str:
        from splatkit.models.init import initial_points

        from splatkit.data.depth_io import resolve_depth_kind

        cfg = self.config
        self.scene_scale = scene_scale
        # Maps fitted to triangulated points are metric whatever the files were declared.
        kind, note = resolve_depth_kind(None if scene.depth_aligned else cfg.depth_prior_kind, scene.depth_kind)
        if note is not None and scene.depths is not None and cfg.init != "sfm":
            warnings.warn(note, stacklevel=2)
        pts, cols, how = initial_points(scene, init=cfg.init, num_points=cfg.init_num_points, seed=cfg.seed,
                                        carve=cfg.use_masks and cfg.init_carve_with_masks, scene_scale=scene_scale,
                                        depths_are_metric=kind == "metric")
        self.model = GaussianModel.from_points(torch.from_numpy(np.asarray(pts, dtype=np.float32)),
                                               torch.from_numpy(np.asarray(cols, dtype=np.float32)),
                                               sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
                                               init_scale=cfg.init_scale).to(self.device)
        return how

    def restore(self, payload: dict, *, scene_scale: float) -> None:
        cfg = self.config
        self.scene_scale = scene_scale
        model = GaussianModel.from_payload(payload, map_location=self.device, raw=True)
        if model.sh_degree != cfg.sh_degree:
            raise SplatkitError(f"checkpoint has SH degree {model.sh_degree}, the config asks for "
                                f"{cfg.sh_degree}; the SH degree cannot change on resume")
        if (model.color_field is not None) != cfg.color_field:
            raise SplatkitError(f"checkpoint {'has' if model.color_field is not None else 'has no'} colour field "
                                f"but the config has color_field={cfg.color_field}; it cannot change on resume")
        if "mask" in model.splats and not cfg.gaussian_masks:
            raise SplatkitError("checkpoint has learnable masks but the config has gaussian_masks=false; "
                                "they cannot be turned off on resume")
        self.model = model

    def default_plugins(self):
        from splatkit.methods.compact_plugins import compact_plugins

        return compact_plugins(self.config)

    @property
    def base_lrs(self) -> dict[str, float]:
        cfg = self.config
        return {"means": cfg.means_lr * self.scene_scale, "scales": cfg.scales_lr, "quats": cfg.quats_lr,
                "opacities": cfg.opacities_lr, "sh0": cfg.sh0_lr, "shN": cfg.shN_lr, "mask": cfg.mask_lr}

    def build_optimizers(self) -> None:
        lrs, bs = self.base_lrs, self.config.batch_size
        # Frozen entries (SH under a colour field) have no optimiser; gsplat's strategies expect that.
        self.optimizers = {name: lr_scaled_adam([p], lrs[name], bs, name) for name, p in self.model.splats.items()
                           if p.requires_grad}
        self._means_lr0 = self.optimizers["means"].param_groups[0]["lr"]
        if self.strategy is not None:
            self.strategy.check_sanity(self.model.splats, self.optimizers)
            self.strategy_state = self.strategy.initialize_state(self.scene_scale)

    def load_training_state(self, state: dict) -> None:
        for group, opts in (("optimizers", self.optimizers), ("aux_optimizers", self.aux_optimizers)):
            saved = state.get(group, {})
            for name, opt in opts.items():
                if name in saved:  # "mask" is new for checkpoints from before masks
                    load_optimizer_state(opt, saved[name])
        if self.strategy is not None and state.get("strategy_state"):
            self.strategy_state = to_device(state["strategy_state"], self.device)
            if "scene_scale" in self.strategy_state:
                self.strategy_state["scene_scale"] = self.scene_scale

    def training_state(self) -> dict:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "aux_optimizers": {k: o.state_dict() for k, o in self.aux_optimizers.items()},
                "strategy_state": to_cpu(self.strategy_state)}

    # -- a step ---------------------------------------------------------------------------------
    def sh_degree_at(self, step: int) -> int:
        return min(step // self.config.sh_degree_interval, self.model.sh_degree)

    def render_train(self, step: int, batch: Batch, *, with_depth: bool,
                     param_hooks: Sequence[ParamHook] = ()) -> RenderOutputs:
        params = self.model.activated()
        for hook in param_hooks:
            params = hook(step, params)
        return self._render(batch.viewmats, batch.Ks, batch.width, batch.height, batch.backgrounds,
                            with_depth=with_depth, sh_degree=self.sh_degree_at(step), params=params,
                            absgrad=self.config.absgrad and self.strategy is not None)

    def render(self, viewmats, Ks, width, height, backgrounds, *, with_depth=True, step=None) -> RenderOutputs:
        degree = self.model.sh_degree if step is None else self.sh_degree_at(step)
        return self._render(viewmats, Ks, width, height, backgrounds, with_depth=with_depth, sh_degree=degree)

    def _render(self, viewmats, Ks, width, height, backgrounds, *, with_depth: bool, sh_degree: int,
                params=None, absgrad: bool = False) -> RenderOutputs:
        cfg = self.config
        renders, alphas, meta = self.model.render(
            viewmats, Ks, width, height, sh_degree=sh_degree, backgrounds=backgrounds,
            render_mode="RGB+ED" if with_depth else "RGB", near_plane=cfg.near_plane, far_plane=cfg.far_plane,
            absgrad=absgrad, backend=cfg.backend, params=params)
        self.backend = meta.get("backend", self.backend)
        return RenderOutputs(colors=renders[..., :3], alphas=alphas, meta=meta, sh_degree=sh_degree,
                             depths=renders[..., 3:4] if with_depth else None)

    def pre_backward(self, step: int, outputs: RenderOutputs) -> None:
        if self.strategy is not None:
            self.strategy.step_pre_backward(self.model.splats, self.optimizers, self.strategy_state, step,
                                            outputs.meta)

    def loss_terms(self, step: int, batch: Batch, outputs: RenderOutputs) -> dict[str, torch.Tensor]:
        return {} if self.strategy is None else self.strategy.loss_terms(self.model.splats)

    def optimizer_step(self, step: int, outputs: RenderOutputs) -> None:
        cfg = self.config
        # 3DGS position LR: exponential decay from means_lr to means_lr_final over the run.
        ratio = cfg.means_lr_final / cfg.means_lr if cfg.means_lr > 0 else 1.0
        self.optimizers["means"].param_groups[0]["lr"] = self._means_lr0 * ratio ** (step / cfg.steps)
        for opt in (*self.optimizers.values(), *self.aux_optimizers.values()):
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.strategy is not None:
            self.strategy.step_post_backward(self.model.splats, self.optimizers, self.strategy_state, step,
                                             outputs.meta, lr=self.optimizers["means"].param_groups[0]["lr"])

    def train_stats(self) -> dict[str, float]:
        return {"num_gaussians": self.model.num_gaussians, "lr_means": self.optimizers["means"].param_groups[0]["lr"]}

    def summary_stats(self, eval_model) -> dict:
        return {"num_gaussians": eval_model.num_gaussians}

    @property
    def num_primitives(self) -> int:
        return self.model.num_gaussians

    def named_tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.model.splats.items())
        if self.model.color_field is not None:
            out.update({f"color_field.{k}": v for k, v in self.model.color_field.named_parameters()})
        return out

    # -- checkpoints and evaluation ---------------------------------------------------------------
    def checkpoint_payload(self, step: int, normalization: Optional[dict]) -> dict:
        return self.model.to_payload(step, normalization, method=self.name)

    def eval_model(self) -> GaussianModel:
        return self.model.compacted()

    @classmethod
    def load_model(cls, payload: dict, map_location="cpu", raw: bool = False) -> GaussianModel:
        return GaussianModel.from_payload(payload, map_location=map_location, raw=raw)
