"""The ``backdrop_prune`` plugin: remove Gaussians that only explain the backdrop.

With a uniform backdrop rendered as the background colour (``background="auto"`` on a white
sweep, images masked to white), a Gaussian whose blending weight falls (almost) only on backdrop
pixels of the training views adds nothing those views need; from other views it floats in front
of the object as fog, the typical sparse-view failure on bright backdrops. At every densification
step (and every ``refine_every`` steps after densification stops) the plugin sums each
Gaussian's blending weights over backdrop and object pixels of all training views
(:func:`splatkit.render.contribution.blend_weight_sums`) and removes those with at least
``share`` of it on the backdrop. Backdrop pixels are those outside the object masks when the
scene has masks, else those within ``tolerance`` of the background colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Plugin, TrainState
from splatkit.methods.plugins import in_range, register_plugin

VIEW_CHUNK = 4  # training views rendered per backward pass (memory stays that of a batch of 4)


@register_plugin
class BackdropPrune(Plugin):
    name = "backdrop_prune"
    applies_to = ("3dgs",)

    @dataclass
    class Config:
        share: float = in_range(0.95, 0.5, 1.0)
        """Prune a Gaussian when at least this share of its blending weight is on backdrop pixels."""
        tolerance: float = in_range(0.06, 0.0, 1.0)
        """Without masks: a pixel is backdrop when every channel is within this of the background."""
        min_weight: float = in_range(1e-3)
        """Gaussians whose weights sum to less than this over all training views are left alone
        (the training views say nothing about them)."""

    def setup(self, state: TrainState) -> None:
        cfg = self.config
        self.state = state
        self.pruned_total = 0
        self._pixel_weights = None  # per view batch: (view indices, [C, H, W, 2] backdrop / object)
        if state.scene.masks is None and cfg.background == "random":
            raise SplatkitError("backdrop_prune needs object masks or a fixed background colour "
                                "(background auto/black/white), not background 'random' without masks")

    def _due(self, step: int) -> bool:
        from splatkit.methods.strategies import refines_at

        cfg = self.config
        if cfg.densify and step < cfg.refine_stop_iter:
            return refines_at(cfg, step)
        return step > 0 and step % cfg.refine_every == 0 and step < cfg.steps - 1

    def _batches(self) -> list[tuple[list[int], torch.Tensor]]:
        """Which pixels are backdrop, per batch of training views (fixed for the run: made once)."""
        if self._pixel_weights is None:
            from splatkit.methods.scoring import background_for, view_batches

            scene, dev = self.state.scene, self.state.device
            bg = torch.from_numpy(background_for(self.config)).to(dev)
            self._pixel_weights = []
            for idx in view_batches(scene.cameras, VIEW_CHUNK):
                if scene.masks is not None:
                    backdrop = torch.stack([1.0 - torch.as_tensor(scene.masks[i], device=dev) for i in idx])
                else:
                    images = torch.stack([torch.as_tensor(scene.images[i][..., :3], device=dev) for i in idx])
                    backdrop = ((images - bg).abs().amax(dim=-1) <= self.settings.tolerance).float()
                self._pixel_weights.append((idx, torch.stack([backdrop, 1.0 - backdrop], dim=-1)))
        return self._pixel_weights

    @torch.no_grad()
    def backdrop_share(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per Gaussian: (share of its blending weight on backdrop pixels, total weight)."""
        from splatkit.render.contribution import blend_weight_sums

        state, cfg = self.state, self.config
        scene, dev = state.scene, state.device
        params = state.method.model.activated()
        sums = torch.zeros(params["means"].shape[0], 2, device=dev)
        for idx, weights in self._batches():
            sub = scene.cameras[idx]
            sums += blend_weight_sums(params["means"], params["quats"], params["scales"], params["opacities"],
                                      sub.viewmats(dev), sub.intrinsics(dev), int(sub.widths[0]),
                                      int(sub.heights[0]), weights, near_plane=cfg.near_plane,
                                      far_plane=cfg.far_plane, backend=cfg.backend)
        total = sums.sum(dim=1)
        return sums[:, 0] / total.clamp_min(1e-12), total

    def on_step_end(self, step: int, state: TrainState) -> None:
        if not self._due(step):
            return
        from gsplat.strategy.ops import remove

        share, total = self.backdrop_share()
        drop = (share >= self.settings.share) & (total >= self.settings.min_weight)
        if bool(drop.any()):
            method = state.method
            remove(params=method.model.splats, optimizers=method.optimizers, state=method.strategy_state,
                   mask=drop)
            self.pruned_total += int(drop.sum())

    def state_dict(self) -> dict:
        return {"pruned_total": self.pruned_total}

    def load_state_dict(self, state: dict) -> None:
        self.pruned_total = int(state.get("pruned_total", 0))
