"""FreeNeRF's two regularisers (Yang, Pavone, Wang, CVPR 2023), for the hash-grid NeRF.

* ``frequency_reg``: FreeNeRF opens the positional encoding's frequencies linearly over the first
  ``end`` (90%) of the run, high frequencies last. A hash grid's levels are its frequency bands
  (level l resolves about N_min b^l cells per side), so here the levels' features are weighted
  the same way: at a fraction ``r`` of the schedule the first ``max(1, r L)`` levels are open, the
  next one partly (FreeNeRF's fractional mask), the finer ones are zero. The coarsest level is
  always open (FreeNeRF always passes the raw coordinates).
* ``occlusion_reg``: FreeNeRF's ``lossfun_occ_reg``: the mean density of the samples in the first
  ``range`` (10 of its 128 samples per ray, i.e. 10/128 of the ray's near-far segment) of each
  ray, which floaters right in front of the training cameras fill; with ``wb_prior`` (its DTU
  setting) also of the samples within ``wb_range`` (15/128) whose colour is nearly black or white
  (mean below 0.01 or above 0.99: DTU's backdrop). Weight 0.01 (its ``occ_reg_loss_mult``).

Our samples are marched with occupancy skipping and stop where a ray turns opaque, so "the first
M of 128 uniform samples" becomes "the samples in the first M/128 of the ray's segment through
the scene box"; the loss averages over the step's rays' samples as FreeNeRF averages over its
fixed sample count (``sum / (rays x 128)``), so the weight keeps its scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, Plugin, RenderOutputs, TrainState
from splatkit.methods.plugins import in_range, register_plugin

# FreeNeRF's DTU / LLFF settings (its configs: freq_reg_end = 90% of the iterations,
# occ_reg_loss_mult 0.01, occ_reg_range 10 and occ_wb_range 15 of num_samples 128).
FREQ_REG_END = 0.9
OCC_WEIGHT = 0.01
OCC_SAMPLES = 128
OCC_RANGE = 10 / OCC_SAMPLES
OCC_WB_RANGE = 15 / OCC_SAMPLES
WB_DARK, WB_BRIGHT = 0.01, 0.99
OCC_SIGMA_CAP = 1e6  # ours: densities above it count as it (see occlusion_loss)


def level_mask(fraction: float, n_levels: int, features_per_level: int) -> torch.Tensor:
    """Weights of the hash encoding's ``n_levels x features_per_level`` features at ``fraction``
    (0..1) of the frequency schedule: FreeNeRF's ``get_freq_mask`` over levels, at least the
    coarsest level open."""
    open_levels = max(1.0, min(1.0, max(fraction, 0.0)) * n_levels)
    full = int(math.floor(open_levels))
    w = torch.zeros(n_levels)
    w[:full] = 1.0
    if full < n_levels:
        w[full] = open_levels - full
    return w.repeat_interleave(features_per_level)


def occlusion_loss(sigma: torch.Tensor, rgb: torch.Tensor, t_mid: torch.Tensor, ray_indices: torch.Tensor,
                   t_near: torch.Tensor, t_far: torch.Tensor, n_rays: int, reg_range: float,
                   wb_prior: bool = False, wb_range: float = OCC_WB_RANGE) -> torch.Tensor:
    """FreeNeRF's occlusion loss on packed samples: ``sum(sigma x m) / (n_rays x 128)`` with ``m``
    = 1 for samples in the first ``reg_range`` of their ray's ``[t_near, t_far)`` segment (and,
    with ``wb_prior``, nearly black or white samples within ``wb_range``)."""
    length = (t_far - t_near).clamp_min(0)[ray_indices]
    rel = (t_mid - t_near[ray_indices]) / length.clamp_min(1e-12)
    m = rel < reg_range
    if wb_prior:
        mean = rgb.detach().mean(-1)
        m = m | (((mean < WB_DARK) | (mean > WB_BRIGHT)) & (rel < wb_range))
    # Select, not multiply by the mask, and cap: a sample may have an infinite density (trunc_exp
    # overflows in float32 past 88; a 3-view DTU run got there), and inf x 0 is NaN. Above the cap
    # a sample is opaque within a millionth of a unit anyway.
    return sigma[m].clamp(max=OCC_SIGMA_CAP).sum() / (max(n_rays, 1) * OCC_SAMPLES)


@register_plugin
class FrequencyRegularization(Plugin):
    """FreeNeRF's frequency regularisation on the hash grid's levels (module doc). The mask is
    set from the step alone (a resumed run gets the same one) and is not part of the model: a
    preview mid-run sees the field as it trains, the finished model has every level open."""

    name = "frequency_reg"
    applies_to = ("nerf",)

    @dataclass
    class Config:
        end: float = in_range(FREQ_REG_END, 0.0, 1.0, lo_open=True)
        """Fraction of the run after which every level is open (FreeNeRF: 0.9)."""

    def setup(self, state: TrainState) -> None:
        self.field = state.method.model.field
        grid = self.field.grid.config
        self.levels, self.features = int(grid.n_levels), int(grid.n_features_per_level)
        self.end_step = max(1, round(self.settings.end * self.config.steps))

    def on_step_start(self, step: int, state: TrainState) -> None:
        fraction = step / self.end_step
        self.field.level_mask = None if fraction >= 1 else level_mask(fraction, self.levels, self.features).to(
            state.device)

    def log_values(self, step: int) -> dict[str, float]:
        mask = self.field.level_mask
        return {"open_levels": float(self.levels if mask is None else mask.sum() / self.features)}


@register_plugin
class OcclusionRegularization(Plugin):
    """FreeNeRF's occlusion regularisation (module doc)."""

    name = "occlusion_reg"
    applies_to = ("nerf",)

    @dataclass
    class Config:
        weight: float = in_range(OCC_WEIGHT)
        """FreeNeRF: 0.01."""
        range: float = in_range(OCC_RANGE, 0.0, 1.0, lo_open=True)
        """Fraction of each ray's near-far segment penalised (FreeNeRF: 10 of 128 samples)."""
        wb_prior: bool = False
        """Also penalise nearly black / white samples within ``wb_range`` (FreeNeRF on DTU)."""
        wb_range: float = in_range(OCC_WB_RANGE, 0.0, 1.0, lo_open=True)

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        samples = outputs.extras.get("samples")
        if samples is None:
            raise SplatkitError(f"{self.name}: the method did not return its ray samples")
        ps = samples.packed
        t_mid = 0.5 * (ps.t_starts + ps.t_ends)
        cfg = self.settings
        term = occlusion_loss(samples.sigma, samples.rgb, t_mid, ps.ray_indices, samples.t_near, samples.t_far,
                              int(samples.t_near.numel()), cfg.range, cfg.wb_prior, cfg.wb_range)
        return cfg.weight * term
