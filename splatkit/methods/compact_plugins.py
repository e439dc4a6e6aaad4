"""Compact-3DGS (Lee et al., CVPR 2024) as three plugins of the 3DGS method, one per config switch.
They work on the method's parameters, optimisers and strategy state; the loop knows nothing of
them. Constants and the maths are in :mod:`splatkit.compress.compact` and
:mod:`splatkit.models.color_field`.

* :class:`ColorFieldPlugin` (``color_field``): a hash-grid colour field colours the Gaussians
  instead of their SH (frozen); its own Adam with the authors' warm-up and step decay.
* :class:`RVQPlugin` (``rvq``): from ``rvq_start`` on, renders use the R-VQ-coded attributes
  (learnable codebooks, straight-through); checkpoints and evaluation get the codebooks.
* :class:`GaussianMaskPlugin` (``gaussian_masks``): a learnable mask per Gaussian on scale and
  opacity, its loss, and pruning of masked-out Gaussians.

The 3DGS method adds them in this order (field, R-VQ, masks: the masks multiply the coded
scales) before the config's own plugins.
"""

from __future__ import annotations

import warnings

import torch

from splatkit.compress import compact
from splatkit.methods.base import Batch, LossTerms, Plugin, RenderOutputs, TrainState, lr_scaled_adam, to_cpu


class _GaussianPlugin(Plugin):
    applies_to = ("3dgs",)

    def setup(self, state: TrainState) -> None:
        self.state = state

    @property
    def splats(self):
        return self.state.method.model.splats  # re-read: strategies replace its entries


class ColorFieldPlugin(_GaussianPlugin):
    name = "color_field"

    def setup(self, state: TrainState) -> None:
        from splatkit.models.color_field import ColorField, ColorFieldConfig, view_hemisphere_axis
        from splatkit.models.hashgrid import HashGridConfig

        super().setup(state)
        cfg, model = self.config, state.method.model
        if not state.resumed:
            grid = HashGridConfig(n_levels=cfg.color_field_levels, log2_hashmap_size=cfg.color_field_log2_hashmap_size,
                                  seed=cfg.seed)
            model.color_field = ColorField(ColorFieldConfig(grid=grid, scene_bound=cfg.color_field_bound,
                                                            output=cfg.color_field_output)).to(state.device)
            model.bake_axis = view_hemisphere_axis(state.scene.cameras.centers)
        # The field colours the Gaussians; their SH only hold the initial colours.
        for name in ("sh0", "shN"):
            model.splats[name].requires_grad_(False)
        optimizer = lr_scaled_adam(list(model.color_field.parameters()), cfg.color_field_lr, cfg.batch_size)
        state.method.aux_optimizers["color_field"] = optimizer
        self.lr0 = optimizer.param_groups[0]["lr"]

    def after_backward(self, step: int, state: TrainState) -> None:
        from splatkit.models.color_field import color_field_lr_factor

        cfg = self.config
        state.method.aux_optimizers["color_field"].param_groups[0]["lr"] = self.lr0 * color_field_lr_factor(
            step, cfg.color_field_warmup, cfg.color_field_lr_milestones, cfg.color_field_lr_gamma)


class RVQPlugin(_GaussianPlugin):
    name = "rvq"

    def setup(self, state: TrainState) -> None:
        super().setup(state)
        cfg, method = self.config, state.method
        shapes = {k: tuple(v.shape[1:]) for k, v in self.splats.items()}
        self.quantizers = {k: q.to(state.device) for k, q in compact.make_quantizers(
            cfg.rvq_attributes, shapes, cfg.rvq_stages, cfg.rvq_codebook_size).items()}
        for name, q in self.quantizers.items():
            # A codebook entry stands for many Gaussians' values: it learns at their LR.
            method.aux_optimizers[f"rvq/{name}"] = lr_scaled_adam(list(q.parameters()), method.base_lrs[name],
                                                                  cfg.batch_size)

    def render_params(self, step: int, params: dict) -> dict:
        if step < self.config.rvq_start:
            return params
        splats = self.splats
        out = dict(params)
        for name, q in self.quantizers.items():
            coded = q(compact.rvq_input(name, splats[name]))
            if name == "scales":
                out["scales"] = torch.exp(coded)
            elif name == "quats":
                out["quats"] = coded
            else:  # shN
                out["colors"] = torch.cat([splats["sh0"], coded.reshape(splats["shN"].shape)], dim=1)
        return out

    def on_save(self, state: TrainState) -> None:
        state.method.model.codebooks = {name: q.codebooks.detach().clone() for name, q in self.quantizers.items()
                                        if q.initialized}

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {f"rvq/{k}": q.codebooks for k, q in self.quantizers.items()}

    def state_dict(self) -> dict:
        return {"quantizers": {k: to_cpu(q.state_dict()) for k, q in self.quantizers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, q in self.quantizers.items():
            if name in state.get("quantizers", {}):
                q.load_state_dict(state["quantizers"][name])


class GaussianMaskPlugin(_GaussianPlugin):
    name = "gaussian_mask"

    def setup(self, state: TrainState) -> None:
        super().setup(state)
        model = state.method.model
        if "mask" not in model.splats:
            # A new run, or a checkpoint from before masks were on: every Gaussian starts on.
            model.splats["mask"] = torch.nn.Parameter(
                torch.full((model.num_gaussians,), compact.MASK_INIT_LOGIT, device=state.device))
        model.mask_threshold = self.config.mask_threshold
        self.warned_floor = False

    def render_params(self, step: int, params: dict) -> dict:
        m = compact.straight_through_mask(self.splats["mask"], self.config.mask_threshold)
        return {**params, "scales": params["scales"] * m[:, None], "opacities": params["opacities"] * m}

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs) -> LossTerms:
        stop = self.config.mask_loss_stop_iter
        if stop is not None and step >= stop:
            return {}
        return compact.mask_loss(self.splats["mask"], self.config.mask_lambda)

    def on_step_end(self, step: int, state: TrainState) -> None:
        """Remove masked-out Gaussians at densification steps (as Compact-3DGS' densify_and_prune
        does) and every ``mask_prune_every`` steps once densification has stopped."""
        from gsplat.strategy.ops import remove

        from splatkit.methods.strategies import refines_at

        cfg = self.config
        if cfg.densify and step < cfg.refine_stop_iter:
            due = refines_at(cfg, step)  # pruned at the densification steps
        else:
            due = step > 0 and step % cfg.mask_prune_every == 0
        if not due:
            return
        drop, floored = compact.prune_selection(self.splats["mask"], cfg.mask_threshold, cfg.mask_min_gaussians)
        if floored and not self.warned_floor:
            self.warned_floor = True
            warnings.warn(f"learnable masks turned off nearly every Gaussian at step {step + 1}; keeping the "
                          f"{cfg.mask_min_gaussians} with the largest masks (mask_min_gaussians). Consider a "
                          "smaller mask_lambda", stacklevel=2)
        if bool(drop.any()):
            method = state.method
            remove(params=self.splats, optimizers=method.optimizers, state=method.strategy_state, mask=drop)


def compact_plugins(config) -> list[Plugin]:
    """The Compact-3DGS plugins a config switches on, in the order they must run."""
    out: list[Plugin] = []
    if config.color_field:
        out.append(ColorFieldPlugin(config))
    if config.rvq:
        out.append(RVQPlugin(config))
    if config.gaussian_masks:
        out.append(GaussianMaskPlugin(config))
    return out
