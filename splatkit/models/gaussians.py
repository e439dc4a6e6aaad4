"""The Gaussian-splat model: gsplat's parameter names and activations, plus checkpoint I/O.

Parameters live in ``splats`` (a ``torch.nn.ParameterDict``) under gsplat's names so that
``gsplat.strategy.DefaultStrategy`` / ``MCMCStrategy`` can edit them in place:

==============  ===========  ===========================================
name            shape        stored as
==============  ===========  ===========================================
``means``       [N, 3]       positions in the normalised world frame
``scales``      [N, 3]       log of the per-axis standard deviations
``quats``       [N, 4]       wxyz, unnormalised
``opacities``   [N]          logit of opacity
``sh0``         [N, 1, 3]    DC spherical-harmonic coefficient
``shN``         [N, K-1, 3]  higher SH bands, K = (sh_degree + 1) ** 2
==============  ===========  ===========================================

A checkpoint is gsplat's ``{"step": int, "splats": {...}}`` layout plus ``"splatkit"`` metadata
(format name and version, SH degree, the scene's normalisation) and optional optimiser/strategy
state for resuming. Files are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.utils.atomic import atomic_path

CHECKPOINT_FORMAT = "splatkit-gaussians"
CHECKPOINT_VERSION = 1
SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi)); colour = SH_C0 * sh0 + 0.5


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


class GaussianModel(torch.nn.Module):
    def __init__(self, splats: dict[str, torch.Tensor], sh_degree: int):
        super().__init__()
        required = {"means", "scales", "quats", "opacities", "sh0", "shN"}
        missing = required - set(splats)
        if missing:
            raise SplatkitError(f"Gaussian parameters missing: {sorted(missing)}")
        self.sh_degree = int(sh_degree)
        self.splats = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.detach().clone().float().contiguous()) for k, v in splats.items()})
        expected_rest = (self.sh_degree + 1) ** 2 - 1
        if self.splats["shN"].shape[1] != expected_rest:
            raise SplatkitError(
                f"shN has {self.splats['shN'].shape[1]} bands-1 coefficients, SH degree {sh_degree} needs {expected_rest}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_points(cls, points: torch.Tensor, colors: torch.Tensor, sh_degree: int = 3,
                    init_opacity: float = 0.1, init_scale: float = 1.0, knn: int = 3) -> "GaussianModel":
        """Isotropic Gaussians at ``points`` with scales from the mean distance to their ``knn``
        nearest neighbours (as 3DGS initialises from SfM points)."""
        points = torch.as_tensor(points, dtype=torch.float32)
        colors = torch.as_tensor(colors, dtype=torch.float32).clamp(0, 1)
        n = len(points)
        if n == 0:
            raise SplatkitError("cannot initialise Gaussians from zero points")
        dist = _mean_knn_distance(points, knn).clamp_min(1e-7)
        scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        k = (sh_degree + 1) ** 2
        return cls(
            {
                "means": points,
                "scales": scales,
                "quats": quats,
                "opacities": torch.logit(torch.full((n,), float(init_opacity))),
                "sh0": rgb_to_sh0(colors)[:, None, :],
                "shN": torch.zeros(n, k - 1, 3),
            },
            sh_degree,
        )

    # -- views of the parameters ----------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    def colors_sh(self) -> torch.Tensor:
        """[N, K, 3] SH coefficients as ``rasterization(colors=..., sh_degree=...)`` takes them."""
        return torch.cat([self.splats["sh0"], self.splats["shN"]], dim=1)

    def activated(self) -> dict[str, torch.Tensor]:
        """Parameters as the rasteriser takes them (exp scales, sigmoid opacities)."""
        return {
            "means": self.splats["means"],
            "quats": self.splats["quats"],
            "scales": torch.exp(self.splats["scales"]),
            "opacities": torch.sigmoid(self.splats["opacities"]),
            "colors": self.colors_sh(),
        }

    def render(self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               sh_degree: Optional[int] = None, params: Optional[dict[str, torch.Tensor]] = None, **kwargs):
        """Render with :func:`splatkit.render.rasterization`; returns its ``(renders, alphas, meta)``.

        ``params``: activated parameters to render instead of :meth:`activated` (a training step's
        regularisers may have changed them)."""
        from splatkit.render import rasterization

        p = self.activated() if params is None else params
        degree = self.sh_degree if sh_degree is None else min(int(sh_degree), self.sh_degree)
        return rasterization(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                             viewmats, Ks, width, height, sh_degree=degree, **kwargs)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_for_checkpoint(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.splats.items()}

    def save_checkpoint(self, path: str | Path, step: int, normalization: Optional[dict] = None,
                        extra: Optional[dict[str, Any]] = None) -> Path:
        """Write ``{"step", "splats", "splatkit": metadata, **extra}`` atomically."""
        payload: dict[str, Any] = {
            "step": int(step),
            "splats": self.state_for_checkpoint(),
            "splatkit": {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "sh_degree": self.sh_degree,
                "normalization": normalization,
            },
        }
        if extra:
            payload.update(extra)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load_checkpoint(cls, path: str | Path, map_location="cpu") -> tuple["GaussianModel", dict]:
        """(model, whole payload). Clear errors for missing, corrupt or foreign files."""
        path = Path(path)
        if not path.is_file():
            raise SplatkitError("checkpoint not found", path)
        try:
            payload = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise SplatkitError(f"not a readable checkpoint ({type(exc).__name__})", path)
        meta = payload.get("splatkit") if isinstance(payload, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            raise SplatkitError("not a splatkit Gaussian checkpoint", path)
        if meta.get("version") != CHECKPOINT_VERSION:
            raise SplatkitError(
                f"checkpoint format version {meta.get('version')} is not supported by this splatkit "
                f"(reads version {CHECKPOINT_VERSION})", path)
        return cls(payload["splats"], meta["sh_degree"]).to(map_location), payload


def checkpoint_normalization(payload: dict):
    """The scene :class:`~splatkit.data.scene.Normalization` a checkpoint's parameters live in."""
    from splatkit.data.scene import Normalization

    norm = (payload.get("splatkit") or {}).get("normalization")
    return Normalization() if norm is None else Normalization.from_dict(norm)


def _mean_knn_distance(points: torch.Tensor, k: int) -> torch.Tensor:
    """Mean distance of each point to its ``k`` nearest neighbours (chunked, O(N^2) memory-safe)."""
    n = len(points)
    if n <= 1:
        return torch.ones(n)
    k = min(k, n - 1)
    try:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(points.numpy()).query(points.numpy(), k=k + 1)
        return torch.from_numpy(np.asarray(d[:, 1:], dtype=np.float32)).mean(dim=1)
    except ImportError:  # pragma: no cover - scipy is a dependency
        out = []
        for chunk in points.split(4096):
            d = torch.cdist(chunk, points)
            out.append(d.topk(k + 1, largest=False).values[:, 1:].mean(dim=1))
        return torch.cat(out)
