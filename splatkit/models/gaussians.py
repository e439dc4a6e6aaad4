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

Compact-3DGS training (Lee et al., CVPR 2024; :mod:`splatkit.compress.compact`) adds:

* ``mask`` [N] in ``splats``: learnable mask logits (a Gaussian is on while ``sigmoid > mask_threshold``);
* ``color_field``: a :class:`~splatkit.models.color_field.ColorField` that colours the Gaussians
  in :meth:`GaussianModel.render` instead of their SH (``sh0``/``shN`` are then placeholders, and
  ``sh_degree`` is the degree exports bake the field to, over the hemisphere around ``bake_axis``
  when the training cameras all lie in one);
* ``codebooks``: ``{attribute: [S, K, D]}`` R-VQ codebooks the attribute is rendered through.

:meth:`GaussianModel.compacted` turns such a model into what renders, evaluation and exports use:
masked-out Gaussians removed, coded attributes replaced by their codebook values with the codes in
``rvq``. :meth:`GaussianModel.load_checkpoint` returns that form unless ``raw=True`` (resuming).

A checkpoint is gsplat's ``{"step": int, "splats": {...}}`` layout plus ``"splatkit"`` metadata
(format name and version, SH degree, the scene's normalisation, mask threshold), optional
``"color_field"`` (``{"config", "state"}``) and ``"codebooks"`` entries, and optional
optimiser/strategy state for resuming. Files are written atomically.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from splatkit.compress.compact import MASK_THRESHOLD
from splatkit.errors import SplatkitError
from splatkit.render.sh import rgb_to_sh
from splatkit.utils.atomic import atomic_path

CHECKPOINT_FORMAT = "splatkit-gaussians"
CHECKPOINT_VERSION = 1


class GaussianModel(torch.nn.Module):
    def __init__(self, splats: dict[str, torch.Tensor], sh_degree: int,
                 color_field: Optional[torch.nn.Module] = None):
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
        self.color_field = color_field
        self.bake_axis: Optional[list[float]] = None  # hemisphere the field is baked over (None: sphere)
        self.mask_threshold = MASK_THRESHOLD  # the trainer sets the config's value
        self.codebooks: dict[str, torch.Tensor] = {}  # attribute -> [S, K, D], rendered through R-VQ
        self.rvq: dict[str, Any] = {}  # attribute -> skz.RVQ codes (compacted models)

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
                "sh0": rgb_to_sh(colors)[:, None, :],
                "shN": torch.zeros(n, k - 1, 3),
            },
            sh_degree,
        )

    # -- views of the parameters ----------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def num_primitives(self) -> int:
        return self.num_gaussians

    def anchor_points(self) -> tuple[np.ndarray, np.ndarray]:
        """``(centres [N, 3], opacities [N])`` as numpy: where the model's content is (depth
        ranges of renders, orbit focus)."""
        means = self.splats["means"].detach().float().cpu().numpy()
        return means, torch.sigmoid(self.splats["opacities"].detach().float().cpu()).numpy()

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    def colors_sh(self) -> torch.Tensor:
        """[N, K, 3] SH coefficients as ``rasterization(colors=..., sh_degree=...)`` takes them."""
        return torch.cat([self.splats["sh0"], self.splats["shN"]], dim=1)

    def activated(self) -> dict[str, torch.Tensor]:
        """Parameters as the rasteriser takes them (exp scales, sigmoid opacities). ``colors``
        (SH) is absent with a colour field: :meth:`render` computes colours per camera."""
        out = {
            "means": self.splats["means"],
            "quats": self.splats["quats"],
            "scales": torch.exp(self.splats["scales"]),
            "opacities": torch.sigmoid(self.splats["opacities"]),
        }
        if self.color_field is None:
            out["colors"] = self.colors_sh()
        return out

    def render(self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               sh_degree: Optional[int] = None, params: Optional[dict[str, torch.Tensor]] = None, **kwargs):
        """Render with :func:`splatkit.render.rasterization`; returns its ``(renders, alphas, meta)``.

        ``params``: activated parameters to render instead of :meth:`activated` (a training step's
        regularisers may have changed them). Without ``params["colors"]`` the colour field colours
        the Gaussians as seen from each camera (``sh_degree`` is then unused)."""
        from splatkit.render import rasterization

        p = self.activated() if params is None else params
        if "colors" in p:
            colors = p["colors"]
            degree = self.sh_degree if sh_degree is None else min(int(sh_degree), self.sh_degree)
        elif self.color_field is not None:
            degree = None
            if kwargs.get("render_mode", "RGB") in ("D", "ED"):  # depth only: colours are not used
                colors = p["means"].new_zeros(p["means"].shape[0], 3)
            else:
                colors = self.color_field.colors_for_cameras(p["means"], torch.linalg.inv(viewmats))
        else:
            raise SplatkitError("render params have no colors and the model has no colour field")
        return rasterization(p["means"], p["quats"], p["scales"], p["opacities"], colors,
                             viewmats, Ks, width, height, sh_degree=degree, **kwargs)

    # -- compact form -----------------------------------------------------------------------------
    @torch.no_grad()
    def compacted(self) -> "GaussianModel":
        """The model renders, evaluation and exports use: Gaussians whose learnable mask is off
        removed (all kept, with a warning, if none is on), the ``mask`` entry dropped, and every
        attribute in :attr:`codebooks` replaced by its R-VQ value, its codes in :attr:`rvq`.
        Shares the colour field. Returns ``self`` when there is nothing to do."""
        if "mask" not in self.splats and not self.codebooks:
            return self
        from splatkit.compress.compact import masked_out, rvq_decode, rvq_encode, rvq_input
        from splatkit.compress.skz import RVQ

        p = {k: v.detach() for k, v in self.splats.items()}
        if "mask" in p:
            keep = ~masked_out(p.pop("mask"), self.mask_threshold)
            if not bool(keep.any()):
                warnings.warn("every learnable mask is off; keeping all Gaussians", stacklevel=2)
            elif not bool(keep.all()):
                p = {k: v[keep] for k, v in p.items()}
        codes = {}
        for name, cb in self.codebooks.items():
            idx = rvq_encode(rvq_input(name, p[name]), cb.to(p[name].device))
            p[name] = rvq_decode(cb.to(idx.device, p[name].dtype), idx).reshape(p[name].shape)
            codes[name] = RVQ(cb.detach().cpu().float().numpy(), idx.cpu().numpy())
        out = GaussianModel(p, self.sh_degree, color_field=self.color_field)
        out.mask_threshold, out.bake_axis = self.mask_threshold, self.bake_axis
        out.rvq = codes
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def state_for_checkpoint(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.splats.items()}

    def to_payload(self, step: int, normalization: Optional[dict] = None, method: str = "3dgs") -> dict[str, Any]:
        """``{"step", "splats", "splatkit": metadata}`` plus the colour field and codebooks: gsplat's
        checkpoint layout, which :meth:`from_payload` reads back."""
        payload: dict[str, Any] = {
            "step": int(step),
            "splats": self.state_for_checkpoint(),
            "splatkit": {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "method": method,
                "sh_degree": self.sh_degree,
                "normalization": normalization,
                "mask_threshold": self.mask_threshold,
            },
        }
        if self.color_field is not None:
            from splatkit.models.color_field import color_field_to_dict

            payload["color_field"] = {"config": color_field_to_dict(self.color_field),
                                      "state": {k: v.detach().cpu() for k, v in self.color_field.state_dict().items()},
                                      "bake_axis": self.bake_axis}
        if self.codebooks:
            payload["codebooks"] = {k: v.detach().cpu() for k, v in self.codebooks.items()}
        return payload

    def save_checkpoint(self, path: str | Path, step: int, normalization: Optional[dict] = None,
                        extra: Optional[dict[str, Any]] = None) -> Path:
        """Write :meth:`to_payload` plus ``extra`` atomically."""
        payload = self.to_payload(step, normalization)
        if extra:
            payload.update(extra)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def from_payload(cls, payload: dict, map_location="cpu", raw: bool = False) -> "GaussianModel":
        """The model in a checkpoint payload: :meth:`compacted` (what renders and exports use)
        unless ``raw``, which keeps the parameters as trained (mask logits, unquantised
        attributes), for resuming."""
        meta = payload["splatkit"]
        field = None
        if payload.get("color_field") is not None:
            from splatkit.models.color_field import color_field_from_dict

            cf = payload["color_field"]
            field = color_field_from_dict(cf["config"], cf["state"])
        model = cls(payload["splats"], meta["sh_degree"], color_field=field).to(map_location)
        if field is not None:
            model.bake_axis = payload["color_field"].get("bake_axis")
        model.mask_threshold = float(meta.get("mask_threshold", model.mask_threshold))
        model.codebooks = {k: v.float() for k, v in (payload.get("codebooks") or {}).items()}
        return model if raw else model.compacted()

    @classmethod
    def load_checkpoint(cls, path: str | Path, map_location="cpu", raw: bool = False
                        ) -> tuple["GaussianModel", dict]:
        """(model, whole payload) of a 3DGS checkpoint file; clear errors for missing, corrupt or
        foreign files (:func:`splatkit.methods.load_checkpoint` reads any method's)."""
        from splatkit.utils.checkpoint import read_payload

        path = Path(path)
        payload = read_payload(path, map_location)
        meta = payload["splatkit"]
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise SplatkitError("not a splatkit Gaussian checkpoint", path)
        if meta.get("version") != CHECKPOINT_VERSION:
            raise SplatkitError(
                f"checkpoint format version {meta.get('version')} is not supported by this splatkit "
                f"(reads version {CHECKPOINT_VERSION})", path)
        return cls.from_payload(payload, map_location, raw), payload


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
