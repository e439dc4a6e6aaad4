"""The ``floater_elimination`` plugin: GaussianObject's statistical outlier removal.

GaussianObject (Yang et al., SIGGRAPH Asia 2024) starts from a visual hull of 4 masked views and,
while densification runs, removes the Gaussians whose centres stand apart from the rest
(``GaussianModel.remove_outliers(linear=True)`` in ``scene/gaussian_model.py``, called from
``train_gs.py``): for every centre the mean of the (squared, as ``pytorch3d.ops.knn_points``
returns them) distances to its K = int(sqrt(N)) nearest centres, itself included; a centre goes
when that mean is at least the mean of all N x K distances plus ``lambda`` times their standard
deviation. ``lambda`` rises linearly from 1 at the start of densification to z(1%) = 2.326 at its
end: the cloud gets denser, so fewer points are outliers. Sparse views leave such floaters in
front of the object, where no training view's photometric loss can see they are wrong.

Constants are those of the authors' code (``GaussianObject/GaussianObject``: ``arguments/__init__.py``,
``scene/gaussian_model.py``, ``utils/graphics_utils.py::z_score_from_percentage``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from splatkit.methods.base import Plugin, TrainState
from splatkit.methods.plugins import in_range, register_plugin

# GaussianObject arguments/__init__.py: ``remove_outliers_interval = 500`` of ``iterations = 10_000``
# (removal at every 500th iteration while ``iteration < densify_until_iter``); kept as a share of
# the run here, as splatkit scales 3DGS's schedule with ``steps``.
REF_ITERATIONS = 10_000
REF_INTERVAL = 500
# gaussian_model.py remove_outliers(linear=True): init_lambda_sigma = 1 ...
SIGMA_START = 1.0
# ... final_lambda_sigma = z_score_from_percentage(1) = scipy.stats.norm.ppf(1 - 0.01).
SIGMA_END = 2.3263478740408408
# Below this many Gaussians the statistics say nothing (K = int(sqrt(N)) would be 1 or 2).
MIN_GAUSSIANS = 16
QUERY_CHUNK = 4096  # centres whose neighbours are found at once (memory ~ chunk x K)


def knn_mean_sq_distances(points: torch.Tensor, k: int) -> tuple[torch.Tensor, float, float]:
    """For ``points [N, 3]``: per point the mean squared distance to its ``k`` nearest points (the
    point itself included, at distance 0, as ``pytorch3d.ops.knn_points`` of a set with itself
    counts it), and the mean and standard deviation (unbiased, as ``torch.std``) of all N x k
    squared distances. The N x k table is never held: chunks of queries, sums in float64."""
    n = points.shape[0]
    per_point = torch.empty(n, dtype=torch.float64)
    total = total_sq = 0.0
    if points.device.type == "cpu":
        from scipy.spatial import cKDTree

        xyz = points.detach().double().numpy()
        tree = cKDTree(xyz)
        for start in range(0, n, QUERY_CHUNK):
            d, _ = tree.query(xyz[start:start + QUERY_CHUNK], k=k)
            d2 = np.asarray(d, dtype=np.float64).reshape(-1, k) ** 2
            per_point[start:start + len(d2)] = torch.from_numpy(d2.mean(axis=1))
            total += float(d2.sum())
            total_sq += float((d2 * d2).sum())
    else:  # an accelerator: brute force on the device, chunk by chunk
        xyz = points.detach().float()
        for start in range(0, n, QUERY_CHUNK):
            d2 = torch.cdist(xyz[start:start + QUERY_CHUNK], xyz).square().topk(k, dim=1, largest=False).values
            d2 = d2.double()
            per_point[start:start + len(d2)] = d2.mean(dim=1).cpu()
            total += float(d2.sum())
            total_sq += float((d2 * d2).sum())
    count = n * k
    mean = total / count
    var = max(total_sq - count * mean * mean, 0.0) / max(count - 1, 1)
    return per_point.to(points.device), mean, math.sqrt(var)


def outlier_mask(points: torch.Tensor, sigma: float, k: Optional[int] = None) -> torch.Tensor:
    """GaussianObject's test: True where a point's mean squared distance to its ``k`` (default
    int(sqrt(N))) nearest points is at least the mean of all those distances + ``sigma`` std."""
    n = points.shape[0]
    k = min(n, int(n ** 0.5) if k is None else k)
    per_point, mean, std = knn_mean_sq_distances(points, k)
    return per_point >= mean + sigma * std


@register_plugin
class FloaterElimination(Plugin):
    name = "floater_elimination"
    applies_to = ("3dgs",)

    @dataclass
    class Config:
        every: int = in_range(0)
        """Remove outliers every this many steps while densification runs; 0 (the default):
        500/10000 of ``steps``, GaussianObject's interval."""
        sigma_start: float = in_range(SIGMA_START, 0.0, lo_open=True)
        """Threshold (in standard deviations above the mean k-NN distance) at the start of densification."""
        sigma_end: float = in_range(SIGMA_END, 0.0, lo_open=True)
        """... rising linearly to this at its end (GaussianObject: the z-score of 1%)."""

    def __init__(self, config, settings=None) -> None:
        super().__init__(config, settings)
        self.removed_total = 0
        every = self.settings.every
        self.interval = every if every else max(1, round(REF_INTERVAL / REF_ITERATIONS * config.steps))

    def sigma(self, done: int) -> float:
        """The threshold after ``done`` steps: linear over the densification window, clamped."""
        cfg, s = self.config, self.settings
        span = max(cfg.refine_stop_iter - cfg.refine_start_iter, 1)
        t = min(max((done - cfg.refine_start_iter) / span, 0.0), 1.0)
        return s.sigma_start + (s.sigma_end - s.sigma_start) * t

    def on_step_end(self, step: int, state: TrainState) -> None:
        done = step + 1  # GaussianObject counts iterations from 1
        if done % self.interval or done >= self.config.refine_stop_iter:
            return
        method = state.method
        means = method.model.splats["means"]
        if means.shape[0] < MIN_GAUSSIANS:
            return
        with torch.no_grad():
            drop = outlier_mask(means, self.sigma(done))
        if bool(drop.any()) and not bool(drop.all()):
            from gsplat.strategy.ops import remove

            remove(params=method.model.splats, optimizers=method.optimizers, state=method.strategy_state,
                   mask=drop)
            self.removed_total += int(drop.sum())

    def state_dict(self) -> dict:
        return {"removed_total": self.removed_total}

    def load_state_dict(self, state: dict) -> None:
        self.removed_total = int(state.get("removed_total", 0))
