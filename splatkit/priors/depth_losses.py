"""Depth-prior losses on the rendered expected depth, each one plugin
(:mod:`splatkit.methods.plugins`; found by the loop through the ``splatkit.plugins`` entry point).

Every loss here only trusts what a monocular estimate gets right: the *order* of depths (SparseNeRF
ranking and continuity), their linear correlation (FSGS Pearson) or their shape within small
patches (DNGaussian). None needs the prior's scale or shift. Priors are depth-ordered maps
(larger = farther, NaN = unknown; :mod:`splatkit.priors.depth_sources`) at the training images'
size, loaded once per run in :meth:`setup` and shared between the plugins of a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, Plugin, RenderOutputs, TrainState
from splatkit.methods.plugins import in_range, register_plugin


# -- the losses as plain functions (tested directly) -------------------------------------------
def ranking_loss(rendered: torch.Tensor, prior: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor,
                 margin: float = 1e-4) -> torch.Tensor:
    """SparseNeRF local depth ranking (Wang et al., ICCV 2023).

    For each pair (a, b) of flat pixel indices, the prior says which is nearer; the rendered depth
    of the nearer one should be smaller by ``margin``: ``max(d_near - d_far + margin, 0)``,
    averaged over pairs whose prior depths differ. ``rendered`` and ``prior`` are flat ``[P]``.
    """
    pa, pb = prior[idx_a], prior[idx_b]
    ok = torch.isfinite(pa) & torch.isfinite(pb) & (pa != pb)
    if not bool(ok.any()):
        return rendered.sum() * 0.0
    a_near = pa < pb
    da, db = rendered[idx_a], rendered[idx_b]
    d_near = torch.where(a_near, da, db)[ok]
    d_far = torch.where(a_near, db, da)[ok]
    return torch.relu(d_near - d_far + margin).mean()


def continuity_neighbours(prior: torch.Tensor, anchors: torch.Tensor, window: int, fraction: float,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """For each anchor pixel (flat index into ``prior [H, W]``), a neighbour drawn uniformly from the
    ``fraction`` of its ``±window`` px square (itself excluded, clipped to the image) whose prior
    depths are closest to the anchor's. Returns flat indices ``[M]``."""
    H, W = prior.shape
    dev = prior.device
    r = torch.arange(-window, window + 1, device=dev)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    keep = (dy != 0) | (dx != 0)
    dy, dx = dy[keep], dx[keep]  # [K]
    ay, ax = anchors // W, anchors % W
    ny = (ay[:, None] + dy[None]).clamp(0, H - 1)
    nx = (ax[:, None] + dx[None]).clamp(0, W - 1)
    flat = prior.reshape(-1)
    cand = ny * W + nx  # [M, K]
    gap = (flat[cand] - flat[anchors][:, None]).abs()
    gap = torch.where(torch.isfinite(gap) & (cand != anchors[:, None]), gap, torch.full_like(gap, math.inf))
    k = max(1, int(round(fraction * cand.shape[1])))
    closest = gap.topk(k, dim=1, largest=False).indices  # [M, k]
    pick = torch.randint(0, k, (len(anchors),), generator=generator).to(dev)
    return cand.gather(1, closest.gather(1, pick[:, None]))[:, 0]


def continuity_loss(rendered: torch.Tensor, anchors: torch.Tensor, neighbours: torch.Tensor,
                    margin: float = 1e-4) -> torch.Tensor:
    """SparseNeRF spatial continuity: neighbours that the prior puts at nearly the same depth should
    render at nearly the same depth, ``max(|d_a - d_n| - margin, 0)``. ``rendered`` is flat."""
    return torch.relu((rendered[anchors] - rendered[neighbours]).abs() - margin).mean()


def pearson_loss(rendered: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """FSGS (Zhu et al., ECCV 2024): ``1 - corr(rendered, prior)`` over the known prior pixels."""
    ok = torch.isfinite(prior)
    x, y = rendered[ok], prior[ok]
    if x.numel() < 2:
        return rendered.sum() * 0.0
    x = x - x.mean()
    y = y - y.mean()
    corr = (x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-12)
    return 1.0 - corr


def patch_normalized_loss(rendered: torch.Tensor, prior: torch.Tensor, patch: int,
                          offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """DNGaussian's local depth normalisation (Li et al., CVPR 2024): in each ``patch x patch``
    block, both depths are normalised to zero mean and unit std, then compared with L1. Blocks
    with unknown prior pixels are skipped. ``rendered``/``prior`` are ``[H, W]``."""
    oy, ox = offset
    H, W = rendered.shape
    h, w = (H - oy) // patch, (W - ox) // patch
    if h < 1 or w < 1:
        return rendered.sum() * 0.0

    def blocks(x: torch.Tensor) -> torch.Tensor:
        x = x[oy:oy + h * patch, ox:ox + w * patch]
        return x.reshape(h, patch, w, patch).permute(0, 2, 1, 3).reshape(h * w, patch * patch)

    r, p = blocks(rendered), blocks(prior)
    ok = torch.isfinite(p).all(dim=1)
    if not bool(ok.any()):
        return rendered.sum() * 0.0
    r, p = r[ok], p[ok]

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)

    return (norm(r) - norm(p)).abs().mean()


# -- shared prior maps ---------------------------------------------------------------------------
_PRIOR_KEY = "depth_priors"


def priors_for(context: TrainState) -> list[torch.Tensor]:
    """The run's prior maps ``[H, W]`` (depth-ordered, NaN unknown) for the training views, on the
    device; computed once per run and kept in the state's cache so several plugins share them."""
    cached = context.cache.get(_PRIOR_KEY)
    if cached is not None:
        return cached
    from splatkit.priors.depth_sources import depth_priors_for_scene

    cfg = context.config
    if cfg.depth_prior == "none":
        raise SplatkitError("depth losses need a depth prior: --depth-prior files (depth/ beside the images) "
                            "or a depth model name")
    maps = depth_priors_for_scene(context.scene, cfg.depth_prior, kind=cfg.depth_prior_kind,
                                  folder=cfg.depth_prior_dir, device=str(context.device))
    out = []
    for i, m in enumerate(maps):
        h, w = context.scene.images[i].shape[:2]
        if m.shape != (h, w):
            raise SplatkitError(f"depth prior for view {context.scene.names[i]} is {m.shape[1]}x{m.shape[0]}, "
                                f"its image is {w}x{h}")
        out.append(torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)).to(context.device))
    context.cache[_PRIOR_KEY] = out
    return out


class _DepthPriorPlugin(Plugin):
    """Common plumbing: the prior maps, a seeded generator and the rendered depth of each view."""

    needs_depth = True
    needs_depth_prior = True

    def setup(self, context: TrainState) -> None:
        self.priors = priors_for(context)
        self.device = context.device
        # Its own stream, so pair sampling never shifts the trainer's RNG (exact resume).
        self.generator = torch.Generator().manual_seed(int(context.config.seed) + 7919)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def per_view(self, batch: Batch, outputs: RenderOutputs):
        """``(rendered, prior)`` per view of the step: ``[H, W]`` maps for whole rendered views;
        for a batch of pixel rays (the NeRF) the view's rays, flat ``[M]`` each (no image layout)."""
        if outputs.depths is None:
            raise SplatkitError(f"{self.name}: the trainer did not render depth")
        if batch.pixels is None:
            for b, pos in enumerate(batch.positions):
                yield outputs.depths[b, ..., 0], self.priors[pos]
            return
        rendered = outputs.depths.reshape(-1)
        b, y, x = batch.pixels.unbind(-1)
        for i, pos in enumerate(batch.positions):
            sel = torch.nonzero(b == i).squeeze(-1)
            if len(sel) >= 2:
                prior = self.priors[pos].to(rendered.device)
                yield rendered[sel], prior[y[sel], x[sel]]

    def _randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.generator).to(self.device)


@register_plugin
class DepthRanking(_DepthPriorPlugin):
    """SparseNeRF's local depth ranking: pixel pairs drawn inside a random box (a fraction of the
    image side; 1.0 = the whole image, the paper's DTU setting)."""

    name = "depth_ranking"
    legacy_keys = {"depth_rank_weight": "weight", "depth_rank_box": "box", "depth_rank_pairs": "pairs",
                   "depth_rank_margin": "margin"}

    @dataclass
    class Config:
        weight: float = in_range(0.2)
        """SparseNeRF's DTU setting."""
        box: float = in_range(1.0, 0.0, 1.0, lo_open=True)
        """Side of the random box pairs are drawn in, as a fraction of the image (1.0: whole image, DTU)."""
        pairs: int = in_range(4096, 1)
        """Pixel pairs per view and step."""
        margin: float = in_range(1e-4)

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        cfg = self.settings
        terms = []
        for rendered, prior in self.per_view(batch, outputs):
            if prior.dim() == 1:
                # A view's scattered rays (NeRF): pairs of random rays of the view, i.e. the whole
                # image as the box (SparseNeRF's DTU setting); ``box`` needs whole views.
                n = len(prior)
                terms.append(ranking_loss(rendered, prior, self._randint(n, cfg.pairs), self._randint(n, cfg.pairs),
                                          cfg.margin))
                continue
            H, W = prior.shape
            bh = max(2, min(H, int(round(cfg.box * H))))
            bw = max(2, min(W, int(round(cfg.box * W))))
            y0 = int(self._randint(H - bh + 1, 1))
            x0 = int(self._randint(W - bw + 1, 1))
            n = cfg.pairs
            ya, xa = self._randint(bh, n) + y0, self._randint(bw, n) + x0
            yb, xb = self._randint(bh, n) + y0, self._randint(bw, n) + x0
            terms.append(ranking_loss(rendered.reshape(-1), prior.reshape(-1), ya * W + xa, yb * W + xb,
                                      cfg.margin))
        if not terms:
            return outputs.depths.sum() * 0.0
        return cfg.weight * torch.stack(terms).mean()


@register_plugin
class DepthContinuity(_DepthPriorPlugin):
    """SparseNeRF's spatial continuity: anchors paired with prior-similar neighbours in a ±3 px
    window (the closest 30%). Needs whole rendered views (3DGS): a NeRF's batch of scattered rays
    has no neighbours."""

    name = "depth_continuity"
    applies_to = ("3dgs",)
    legacy_keys = {"depth_continuity_weight": "weight", "depth_continuity_window": "window",
                   "depth_continuity_fraction": "fraction", "depth_rank_pairs": "pairs",
                   "depth_rank_margin": "margin"}

    @dataclass
    class Config:
        weight: float = in_range(1.0)
        window: int = in_range(3, 1)
        """Neighbours are drawn from the ±window px square around each anchor ..."""
        fraction: float = in_range(0.3, 0.0, 1.0, lo_open=True)
        """... among this fraction of the window closest to the anchor in the prior."""
        pairs: int = in_range(4096, 1)
        """Anchors per view and step."""
        margin: float = in_range(1e-4)

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        cfg = self.settings
        terms = []
        for rendered, prior in self.per_view(batch, outputs):
            anchors = self._randint(prior.numel(), cfg.pairs)
            anchors = anchors[torch.isfinite(prior.reshape(-1)[anchors])]
            if len(anchors) == 0:
                continue
            nb = continuity_neighbours(prior, anchors, cfg.window, cfg.fraction, self.generator)
            terms.append(continuity_loss(rendered.reshape(-1), anchors, nb, cfg.margin))
        if not terms:
            return outputs.depths.sum() * 0.0
        return cfg.weight * torch.stack(terms).mean()


@register_plugin
class DepthPearson(_DepthPriorPlugin):
    """FSGS: ``1 - Pearson correlation`` of rendered depth and prior."""

    name = "depth_pearson"
    legacy_keys = {"depth_pearson_weight": "weight"}

    @dataclass
    class Config:
        weight: float = in_range(0.05)

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        terms = [pearson_loss(r.reshape(-1), p.reshape(-1)) for r, p in self.per_view(batch, outputs)]
        if not terms:
            return outputs.depths.sum() * 0.0
        return self.settings.weight * torch.stack(terms).mean()


@register_plugin
class DepthPatchNormalized(_DepthPriorPlugin):
    """DNGaussian: L1 between patch-normalised rendered and prior depth, random patch-grid offset.
    Needs whole rendered views (3DGS)."""

    name = "depth_patch"
    applies_to = ("3dgs",)
    legacy_keys = {"depth_patch_weight": "weight", "depth_patch_size": "size"}

    @dataclass
    class Config:
        weight: float = in_range(0.1)
        size: int = in_range(8, 1)

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        cfg = self.settings
        s = cfg.size
        terms = []
        for rendered, prior in self.per_view(batch, outputs):
            offset = (int(self._randint(s, 1)), int(self._randint(s, 1)))
            terms.append(patch_normalized_loss(rendered, prior, s, offset))
        return cfg.weight * torch.stack(terms).mean()


@register_plugin
class GaussianDropout(Plugin):
    """DropGaussian (Park et al., CVPR 2025): during training each Gaussian is left out of the
    render with probability ``r_t = gamma * t / T`` and the kept ones have their opacity scaled by
    ``1 / (1 - r_t)``, so that Gaussians hidden behind others get gradients. Adds no loss term;
    evaluation renders use every Gaussian."""

    name = "dropout"
    applies_to = ("3dgs",)
    legacy_keys = {"dropout_gamma": "gamma"}

    @dataclass
    class Config:
        gamma: float = in_range(0.1, 0.0, 1.0, hi_open=True)
        """The drop rate grows linearly from 0 to this over the run."""

    def setup(self, context: TrainState) -> None:
        self.generator = torch.Generator().manual_seed(int(context.config.seed) + 104729)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def rate(self, step: int) -> float:
        return float(self.settings.gamma) * min(1.0, step / max(1, self.config.steps))

    def render_params(self, step: int, params: dict) -> dict:
        r = self.rate(step)
        if r <= 0:
            return params
        op = params["opacities"]
        keep = (torch.rand(op.shape, generator=self.generator) >= r).to(op.device, op.dtype)
        return {**params, "opacities": op * keep / (1.0 - r)}
