"""A hash-grid NeRF in the style of Instant-NGP (Müller et al., SIGGRAPH 2022) as nerfacc 0.5.3's
``examples/radiance_fields/ngp.py`` builds it: a multiresolution hash grid
(:class:`splatkit.models.hashgrid.HashGrid`) over the scene box, a density MLP (1 hidden layer of 64,
output 1 + 15) with ``trunc_exp(x - 1)`` density, and a colour MLP (2 hidden layers of 64, sigmoid)
on the 15 geometry features and the degree-3 SH encoding of the view direction (16 values,
tiny-cuda-nn's "SphericalHarmonics, degree 4"). Sampling goes through nerfacc's
``OccGridEstimator``: its buffers (occupancy EMA, binary grid, boxes) are part of the model's
``state_dict``, so a checkpoint moves between CPU and GPU; marching and compositing are
:mod:`splatkit.render.volume` (nerfacc's kernels on CUDA, ours on CPU).

Differences from nerfacc's example, on purpose: linear layers have biases (tiny-cuda-nn's fused
MLPs have none), and the lattice of samples starts where a ray enters the grid box (plus the
stratified jitter) instead of at the near plane, so that the CPU marcher need not step through
empty space in front of the box.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field as dc_field
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from splatkit.errors import SplatkitError
from splatkit.models.hashgrid import HashGrid, HashGridConfig
from splatkit.render import volume
from splatkit.render.sh import sh_basis

from splatkit.models import hollow, table_prune

CHECKPOINT_FORMAT = "splatkit-nerf"
CHECKPOINT_VERSION = 1
DIR_SH_DEGREE = 3  # 16 coefficients (tiny-cuda-nn "SphericalHarmonics" degree 4)
GEO_FEAT_DIM = 15  # nerfacc ngp.py


class _TruncExp(torch.autograd.Function):
    """``exp`` whose gradient uses ``exp(min(x, 15))`` (torch-ngp / nerfacc): no overflowing gradients."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


@dataclass
class NerfConfig:
    """What a NeRF model is (saved in its checkpoints)."""

    aabb: list[float]  # scene box [xmin, ymin, zmin, xmax, ymax, zmax] (normalised frame)
    grid: HashGridConfig = dc_field(default_factory=lambda: HashGridConfig(
        n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16, max_resolution=2048))
    hidden_dim: int = 64
    color_hidden_layers: int = 2
    occ_resolution: int = 128
    occ_levels: int = 1
    near: float = 0.01
    far: float = 1e10
    march_steps: int = 1024  # samples along the box diagonal: step = diagonal / march_steps
    cone_angle: float = 0.0
    early_stop_eps: float = 1e-4  # rendering stops a ray once its transmittance is below this
    # HollowNeRF (splatkit.models.hollow): saliency grid values per side, 0 for none; samples whose
    # saliency is below the threshold are pruned (zero features, no lookups).
    hollow_resolution: int = 0
    hollow_threshold: float = hollow.KEEP_THRESHOLD
    hollow_init: float = hollow.INIT_SALIENCY  # saliency p everywhere at the start

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NerfConfig":
        d = dict(d)
        d["grid"] = HashGridConfig(**d["grid"])
        return cls(**d)

    def validate(self) -> None:
        a = self.aabb
        if len(a) != 6 or not all(np.isfinite(a)) or not all(a[i + 3] > a[i] for i in range(3)):
            raise SplatkitError(f"NeRF scene box must be [xmin, ymin, zmin, xmax, ymax, zmax] with max > min; got {a}")
        for name in ("hidden_dim", "color_hidden_layers", "occ_resolution", "occ_levels", "march_steps"):
            if getattr(self, name) < 1:
                raise SplatkitError(f"NeRF {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.near < self.far:
            raise SplatkitError(f"NeRF near/far must satisfy 0 <= near < far; got {self.near}, {self.far}")
        if self.cone_angle < 0:
            raise SplatkitError(f"NeRF cone_angle must be >= 0, got {self.cone_angle}")
        if self.hollow_resolution == 1 or self.hollow_resolution < 0:
            raise SplatkitError(f"NeRF hollow_resolution must be 0 (off) or >= 2, got {self.hollow_resolution}")
        if not 0 < self.hollow_threshold < 1:
            raise SplatkitError(f"NeRF hollow_threshold must be in (0, 1), got {self.hollow_threshold}")
        self.grid.validate()


def _mlp(d_in: int, hidden: int, n_hidden: int, d_out: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    d = d_in
    for _ in range(n_hidden):
        layers += [torch.nn.Linear(d, hidden), torch.nn.ReLU()]
        d = hidden
    layers.append(torch.nn.Linear(d, d_out))
    return torch.nn.Sequential(*layers)


class NerfField(torch.nn.Module):
    """``density(x)`` and ``forward(x, dirs) -> (rgb, sigma)`` for world points in the box."""

    def __init__(self, config: NerfConfig):
        super().__init__()
        self.grid = HashGrid(config.grid)
        self.density_mlp = _mlp(self.grid.output_dim, config.hidden_dim, 1, 1 + GEO_FEAT_DIM)
        self.color_mlp = _mlp(GEO_FEAT_DIM + (DIR_SH_DEGREE + 1) ** 2, config.hidden_dim,
                              config.color_hidden_layers, 3)
        self.register_buffer("aabb", torch.tensor(config.aabb, dtype=torch.float32), persistent=False)
        self.saliency: Optional[hollow.SaliencyGrid] = None
        if config.hollow_resolution > 0:
            self.saliency = hollow.SaliencyGrid(config.hollow_resolution, config.hollow_threshold,
                                               config.hollow_init)
        self.impl = "auto"  # hash encoding: "cpu" (C++), "torch" (HashGrid), "auto"
        # Per-feature weights on the hash encoding [n_levels x features per level], None = all 1:
        # FreeNeRF's frequency regularisation opens the finer levels over the run (set per step by
        # the frequency_reg plugin; never saved: the finished model has every level open).
        self.level_mask: Optional[Tensor] = None

    def encode(self, u: Tensor, keep: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tensor:
        """Hash features of points in ``[0, 1]^3``, times ``scale [N]`` when given (HollowNeRF's
        ``v = p f``; ``keep [N]`` false: zero, and no table lookups in the kernel): the C++ kernels
        on CPU tensors (when built and no gradient to the points is needed), else
        :class:`HashGrid` (the reference: every sample looked up, then scaled)."""
        if self.impl != "torch" and u.device.type == "cpu" and not u.requires_grad:
            from splatkit.render import nerf_cpu_backend

            if self.impl == "cpu" or nerf_cpu_backend.kernels_or_none() is not None:
                return nerf_cpu_backend.hash_encode(self.grid, u, keep, scale)
        f = self.grid(u)
        return f if scale is None else f * scale[:, None].to(f.dtype)

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Points in ``[0, 1]^3`` of the box and whether they are inside it."""
        u = (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])
        return u, ((u >= 0) & (u <= 1)).all(-1)

    def density_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density and the geometry features the colour MLP reads, at world points ``x`` [N, 3]
        (what ``forward`` computes before the colour; exports query it directly)."""
        u, inside = self.normalize(x)
        if self.saliency is None:
            f = self.encode(u)
            h = self.density_mlp(f if self.level_mask is None else f * self.level_mask.to(f.dtype))
            sigma = trunc_exp(h[:, 0] - 1.0) * inside  # nerfacc ngp.py: density outside the box is 0
            return sigma, h[:, 1:]
        # HollowNeRF: v = p f with p = sigmoid(trilinear(G, u)) (0 for pruned samples), and the
        # soft zero-skip gate tanh(alpha ||v||) on the density (splatkit.models.hollow).
        p, keep = self.saliency(u)
        v = self.encode(u, keep, p * keep)
        if self.level_mask is not None:
            v = v * self.level_mask.to(v.dtype)
        h = self.density_mlp(v)
        gate = hollow.zero_skip_gate(v, p, self.saliency.alpha)
        sigma = gate * trunc_exp(h[:, 0] - 1.0) * inside
        return sigma, h[:, 1:]

    def density(self, x: Tensor) -> Tensor:
        return self.density_and_features(x)[0]

    def forward(self, x: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        sigma, geo = self.density_and_features(x)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([geo, sh_basis(DIR_SH_DEGREE, dirs)], dim=-1)))
        return rgb, sigma


class TrainSamples(NamedTuple):
    """The samples of a training step's rays: where they are (``packed``), their densities ``[S]``
    and colours ``[S, 3]`` (in the autograd graph), and each ray's segment through the box
    ``[t_near, t_far)`` before jitter and occupancy skipping (``[R]``)."""

    packed: volume.PackedSamples
    sigma: Tensor
    rgb: Tensor
    t_near: Tensor
    t_far: Tensor

    def __len__(self) -> int:  # the number of samples (what the step's cost grows with)
        return int(self.packed.ray_indices.numel())


def camera_rays(viewmats: Tensor, Ks: Tensor, width: int, height: int, pixels: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """World rays through pixel centres (OpenCV cameras): ``(origins, unit directions, z per t)``,
    each ``[C, H, W, ...]``, or ``[N, ...]`` for ``pixels [N, 3]`` = (camera, row, column). ``z per
    t`` turns a distance along the ray into the camera z-depth."""
    if pixels is None:
        ys, xs = torch.meshgrid(torch.arange(height, device=viewmats.device, dtype=torch.float32),
                                torch.arange(width, device=viewmats.device, dtype=torch.float32), indexing="ij")
        C = viewmats.shape[0]
        cam = torch.arange(C, device=viewmats.device)[:, None, None].expand(C, height, width)
        xs, ys = xs.expand(C, height, width), ys.expand(C, height, width)
    else:
        cam, ys, xs = pixels[:, 0], pixels[:, 1].float(), pixels[:, 2].float()
    K = Ks[cam]
    dx = (xs + 0.5 - K[..., 0, 2]) / K[..., 0, 0]
    dy = (ys + 0.5 - K[..., 1, 2]) / K[..., 1, 1]
    d_cam = torch.stack([dx, dy, torch.ones_like(dx)], dim=-1)
    c2w = torch.linalg.inv(viewmats.float())[cam]
    d = (c2w[..., :3, :3] @ d_cam[..., None])[..., 0]
    norm = d_cam.norm(dim=-1)
    return c2w[..., :3, 3].contiguous(), d / norm[..., None], 1.0 / norm


class NerfModel(torch.nn.Module):
    """Field + nerfacc ``OccGridEstimator`` + how to march: everything a NeRF checkpoint holds.
    :meth:`render` has the signature every method's evaluation model has
    (:mod:`splatkit.methods.scoring`)."""

    # Largest chunk (samples per ray) of the density-only pass that finds where training rays turn
    # opaque, per device type (see opaque_from); measured in docs/benchmarks.md (profile_nerf_step_cuda).
    OPAQUE_MAX_CHUNK = {"cpu": 16, "cuda": 256}

    def __init__(self, config: NerfConfig):
        super().__init__()
        from nerfacc import OccGridEstimator  # pure-Python part of nerfacc: no CUDA is loaded

        config.validate()
        self.config = config
        self.field = NerfField(config)
        self.estimator = OccGridEstimator(roi_aabb=config.aabb, resolution=config.occ_resolution,
                                          levels=config.occ_levels)
        a = config.aabb
        self.step_size = float(np.linalg.norm(np.subtract(a[3:], a[:3])) / config.march_steps)
        self.impl = "auto"

    @property
    def impl(self) -> str:
        """Kernels: ``auto``, ``cpu`` (ours, C++), ``torch`` (the PyTorch references), ``nerfacc`` (CUDA)."""
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in volume.IMPLS:
            raise SplatkitError(f"NeRF kernels must be one of {', '.join(volume.IMPLS)}; got {value!r}")
        self._impl = value
        self.field.impl = "torch" if value == "torch" else "auto"

    @property
    def device(self) -> torch.device:
        return self.field.grid.table.device

    @property
    def num_primitives(self) -> int:
        return sum(p.numel() for p in self.field.parameters())

    # -- marching ---------------------------------------------------------------------------------
    def segments(self, rays_o: Tensor, rays_d: Tensor, near: Optional[float] = None) -> tuple[Tensor, Tensor]:
        near = self.config.near if near is None else max(near, self.config.near)
        return volume.ray_segments(rays_o, rays_d, self.estimator.aabbs[-1], near, self.config.far)

    def march(self, rays_o: Tensor, rays_d: Tensor, t_start: Tensor, t_end: Tensor,
              max_samples: int = 0) -> volume.PackedSamples:
        return volume.march(rays_o, rays_d, t_start, t_end, self.estimator.binaries, self.estimator.aabbs,
                            self.step_size, self.config.cone_angle, max_samples, impl=self.impl)

    def sample_points(self, rays_o: Tensor, rays_d: Tensor, ps: volume.PackedSamples) -> tuple[Tensor, Tensor]:
        mid = (ps.t_starts + ps.t_ends) * 0.5
        return rays_o[ps.ray_indices] + mid[:, None] * rays_d[ps.ray_indices], rays_d[ps.ray_indices]

    def render_rays_train(self, rays_o: Tensor, rays_d: Tensor, generator: Optional[torch.Generator] = None
                          ) -> tuple[volume.VolumeOutputs, "TrainSamples"]:
        """Stratified samples of each ray up to where it turns opaque, differentiable:
        ``(outputs, number of samples)``. nerfacc's ``sampling(sigma_fn=...)`` drops the samples
        behind the point where transmittance falls below ``early_stop_eps`` after evaluating the
        density of all of them; here a density-only pass marches a few samples per ray at a time
        and stops each ray there, so that space behind surfaces costs nothing. The samples (with
        their densities and colours, for regularisers) come back as :class:`TrainSamples`."""
        t_start, t_end = self.segments(rays_o, rays_d)
        t_near, t_far = t_start.clone(), t_end.clone()
        jitter = torch.rand(t_start.shape, generator=generator).to(t_start.device)
        t_start = t_start + jitter * self.step_size
        t_end = self.opaque_from(rays_o, rays_d, t_start, t_end)
        ps = self.march(rays_o, rays_d, t_start, t_end)
        x, d = self.sample_points(rays_o, rays_d, ps)
        rgb, sigma = self.field(x, d)
        out = volume.render(sigma, rgb, ps.t_starts, ps.t_ends, ps.ray_indices, ps.packed_info, impl=self.impl)
        return out, TrainSamples(ps, sigma, rgb, t_near, t_far)

    @torch.no_grad()
    def opaque_from(self, rays_o: Tensor, rays_d: Tensor, t_start: Tensor, t_end: Tensor,
                    chunk_samples: int = 16, max_chunk_samples: Optional[int] = None) -> Tensor:
        """Where each ray's transmittance falls below ``early_stop_eps`` (at the end of the chunk
        of samples it happens in), else ``t_end``: the same samples up to there as marching
        ``[t_start, t_end)`` (the lattice continues from chunk to chunk). Chunks double up to
        ``max_chunk_samples`` (default :attr:`OPAQUE_MAX_CHUNK` of the device): on a CPU every
        sample costs, so chunks stay small; on a GPU every round trip costs (each chunk waits for
        the last), so they grow."""
        if max_chunk_samples is None:
            max_chunk_samples = self.OPAQUE_MAX_CHUNK.get(rays_o.device.type, chunk_samples)
        max_chunk_samples = max(chunk_samples, max_chunk_samples)
        t_cur, stop = t_start.clone(), t_end.clone()
        log_t = torch.zeros_like(t_start)  # log transmittance
        log_eps = float(np.log(self.config.early_stop_eps))
        alive = (t_cur < t_end).nonzero()[:, 0]
        while alive.numel():
            o, d = rays_o[alive], rays_d[alive]
            ps = self.march(o, d, t_cur[alive], t_end[alive], max_samples=chunk_samples)
            if ps.ray_indices.numel():
                x, _ = self.sample_points(o, d, ps)
                sdt = self.field.density(x) * (ps.t_ends - ps.t_starts)
                log_t[alive] -= torch.zeros(alive.numel(), device=sdt.device).index_add(0, ps.ray_indices, sdt)
            t_cur[alive] = ps.t_next
            opaque = log_t[alive] < log_eps
            stop[alive[opaque]] = ps.t_next[opaque]
            alive = alive[(ps.t_next < t_end[alive]) & ~opaque]
            chunk_samples = min(2 * chunk_samples, max_chunk_samples)
        return torch.minimum(stop, t_end)

    @torch.no_grad()
    def render_rays(self, rays_o: Tensor, rays_d: Tensor, near: Optional[float] = None, chunk_samples: int = 8,
                    max_chunk_samples: int = 128) -> tuple[Tensor, Tensor, Tensor]:
        """Inference: march ``chunk_samples`` samples per ray at a time, doubling up to
        ``max_chunk_samples`` for the rays still alive, and stop rays whose transmittance fell below
        ``early_stop_eps``. ``(rgb [R, 3], opacity [R], depth along the ray [R])``, rgb not
        composited on a background, depth normalised by opacity. Small first chunks because most
        rays of a trained object end within a few samples of their first occupied cell: every
        sample marched past that point is a field evaluation thrown away."""
        R = rays_o.shape[0]
        max_chunk_samples = max(chunk_samples, max_chunk_samples)
        t_cur, t_end = self.segments(rays_o, rays_d, near)
        trans = torch.ones(R, device=rays_o.device)
        rgb = torch.zeros(R, 3, device=rays_o.device)
        depth = torch.zeros(R, device=rays_o.device)
        alive = (t_cur < t_end).nonzero()[:, 0]
        while alive.numel():
            o, d = rays_o[alive], rays_d[alive]
            ps = self.march(o, d, t_cur[alive], t_end[alive], max_samples=chunk_samples)
            if ps.ray_indices.numel():
                x, dirs = self.sample_points(o, d, ps)
                col, sigma = self.field(x, dirs)
                out = volume.render(sigma, col, ps.t_starts, ps.t_ends, ps.ray_indices, ps.packed_info,
                                    impl=self.impl)
                T = trans[alive]
                rgb[alive] += T[:, None] * out.colors
                depth[alive] += T * out.depths
                trans[alive] = T * (1.0 - out.opacities)
            t_cur[alive] = ps.t_next
            keep = (ps.t_next < t_end[alive]) & (trans[alive] > self.config.early_stop_eps)
            alive = alive[keep]
            chunk_samples = min(2 * chunk_samples, max_chunk_samples)
        opac = 1.0 - trans
        return rgb, opac, depth / opac.clamp_min(1e-10)

    def render(self, viewmats: Tensor, Ks: Tensor, width: int, height: int, *, backgrounds: Optional[Tensor] = None,
               render_mode: str = "RGB", near_plane: float = 0.01, far_plane: float = 1e10, backend: str = "auto",
               max_rays: int = 1 << 16, **_) -> tuple[Tensor, Tensor, dict]:
        """Whole images ``[C, H, W, 3 (+1)]`` (``RGB+ED``/``RGB+D``: camera z-depth last), alphas
        ``[C, H, W, 1]`` and ``meta``, without gradients (training renders rays, not images)."""
        C = viewmats.shape[0]
        rays_o, rays_d, zscale = camera_rays(viewmats, Ks, width, height)
        rays_o, rays_d, zscale = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), zscale.reshape(-1)
        parts = [self.render_rays(rays_o[s:s + max_rays], rays_d[s:s + max_rays], near_plane)
                 for s in range(0, rays_o.shape[0], max_rays)]
        rgb, opac, depth = (torch.cat(p) for p in zip(*parts))
        bg = torch.zeros(C, 3, device=rgb.device) if backgrounds is None else backgrounds.to(rgb.device)
        rgb = rgb.reshape(C, height, width, 3) + (1.0 - opac.reshape(C, height, width, 1)) * bg[:, None, None, :]
        alphas = opac.reshape(C, height, width, 1)
        if render_mode in ("RGB+ED", "RGB+D"):
            rgb = torch.cat([rgb, (depth * zscale).reshape(C, height, width, 1)], dim=-1)
        return rgb, alphas, {"rays": C * height * width}

    # -- occupancy --------------------------------------------------------------------------------
    @torch.no_grad()
    def update_occupancy(self, step: int, every: int, occ_thre: float = 1e-2, warmup_steps: int = 256) -> None:
        """nerfacc's EMA update of the occupancy grid every ``every`` steps (its own code: it runs
        on CPU tensors). Occupancy of a cell = density at a random point in it x step size."""
        self.estimator.train()
        self.estimator.update_every_n_steps(step=step, occ_eval_fn=lambda x: self.field.density(x)[:, None]
                                            * self.step_size, occ_thre=occ_thre, warmup_steps=warmup_steps, n=every)
        if self.field.saliency is not None and step % every == 0:
            self.prune_occupancy()

    @torch.no_grad()
    def prune_occupancy(self) -> None:
        """HollowNeRF: AND the cells that hold only pruned samples out of the occupancy grid (no
        samples are marched there; exact, since those samples have zero density)."""
        est = self.estimator
        keep = hollow.occupancy_keep(self.field.saliency, self.field.aabb, est.aabbs, tuple(est.binaries.shape[1:]))
        est.binaries &= keep.to(est.binaries.device)

    @torch.no_grad()
    def mark_invisible_cells(self, viewmats: Tensor, Ks: Tensor, width: int, height: int) -> None:
        """Cells no training camera sees are never sampled (nerfacc's ``mark_invisible_cells``)."""
        self.estimator.mark_invisible_cells(Ks, torch.linalg.inv(viewmats), width, height, self.config.near)

    def anchor_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres of occupied cells and their occupancy (render's depth range, orbit focus)."""
        est = self.estimator
        L, res = est.binaries.shape[0], est.binaries.shape[1:]
        pts, wts = [], []
        for lvl in range(L):
            idx = est.binaries[lvl].nonzero().float()
            if not len(idx):
                continue
            box = est.aabbs[lvl]
            pts.append(box[:3] + (idx + 0.5) / torch.tensor(res, dtype=torch.float32, device=idx.device)
                       * (box[3:] - box[:3]))
            wts.append(est.occs.reshape(L, *res)[lvl][est.binaries[lvl]].clamp_min(1e-6))
        if not pts:
            box = est.aabbs[0]
            return ((box[:3] + box[3:]).cpu().numpy()[None] / 2, np.ones(1))
        return torch.cat(pts).cpu().numpy(), torch.cat(wts).cpu().numpy()

    # -- checkpoints ------------------------------------------------------------------------------
    def to_payload(self, step: int, normalization: Optional[dict], method: str, compact: bool = False) -> dict:
        """The model as a checkpoint payload. ``compact`` (exports, not for resuming): hash-table rows
        that are zero (pruned, :mod:`splatkit.models.table_prune`) or that only HollowNeRF's pruned
        cells reach, and saliency values no kept cell reads, are dropped
        (``payload["compact_export"]`` counts what is left); every rendered value stays the same."""
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}
        payload = {"step": int(step),
                   "splatkit": {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "method": method,
                                "normalization": normalization},
                   "nerf": self.config.to_dict(),
                   "state": state}
        if not compact:
            return payload
        table = state.pop("field.grid.table")
        rows = ~table_prune.pruned_rows(table)
        sal = self.field.saliency
        if sal is not None:
            rows &= hollow.reached_rows(self.field.grid, sal.kept_cells()).cpu()
        state.update({"field.grid.table_kept": rows, "field.grid.table_values": table[rows]})
        kept_values = 0
        info = {"table_rows": int(rows.sum()), "table_rows_total": int(rows.numel())}
        if sal is not None:
            needed = sal.needed_vertices().cpu()
            logits = state.pop("field.saliency.logits")
            state.update({"field.saliency.logits_kept": needed, "field.saliency.logits_values": logits[needed]})
            kept_values = int(needed.sum())
            info.update({"saliency_values": kept_values, "saliency_values_total": int(needed.numel())})
        mlp = sum(p.numel() for n, p in self.field.named_parameters() if n not in ("grid.table", "saliency.logits"))
        info.update({"parameters": int(rows.sum()) * table.shape[1] + kept_values + mlp,
                     "parameters_before": self.num_primitives})
        payload["compact_export"] = info
        return payload

    @classmethod
    def from_payload(cls, payload: dict, map_location="cpu") -> "NerfModel":
        try:
            config = NerfConfig.from_dict(payload["nerf"])
            model = cls(config)
            state = dict(payload["state"])
            if "field.grid.table_kept" in state:  # a compact export: dropped rows read as 0
                kept = state.pop("field.grid.table_kept")
                table = torch.zeros_like(model.field.grid.table.data)
                table[kept] = state.pop("field.grid.table_values")
                state["field.grid.table"] = table
            if "field.saliency.logits_kept" in state:
                needed = state.pop("field.saliency.logits_kept")
                # Values no kept cell reads: far below the threshold, so their cells stay pruned.
                logits = torch.full(needed.shape, PRUNED_LOGIT)
                logits[needed] = state.pop("field.saliency.logits_values")
                state["field.saliency.logits"] = logits
            model.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError, IndexError) as exc:
            raise SplatkitError(f"not a valid NeRF checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
                from None
        return model.to(map_location)


# A dropped saliency value in a compact export (sigmoid ~ 1e-13: pruned, and finite).
PRUNED_LOGIT = -30.0


# nerfacc's examples put the synthetic scenes in [-1.5, 1.5]^3 around objects of radius ~1: a
# margin of a quarter of the object's extent on each side. We pad by 10%: the box here comes from
# the data itself (depth maps or the cameras' common view), not from a guess.
BOX_PAD = 0.1


def scene_box(scene, scene_scale: float) -> tuple[list[float], str]:
    """The NeRF's scene box from the training views: ``(aabb, how)``. Every surface the depth maps
    see (padded by 10% of the extent) when the scene has depth maps; else the cube around the
    sphere every camera sees whole; else (forward-facing captures) gsplat's random-init cube of
    half-size 3 x scene_scale around the cameras."""
    from splatkit.data.normalize import focus_point
    from splatkit.models.init import RANDOM_INIT_EXTENT, _depth_points, _radius_inside_all_frustums

    pts = _depth_points(scene)
    if pts is not None and len(pts) >= 8:
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = BOX_PAD * (hi - lo).max()
        return [*(lo - pad).tolist(), *(hi + pad).tolist()], "the depth maps' extent"
    cams = scene.cameras
    center = focus_point(cams) if len(cams) >= 2 else None
    radius = _radius_inside_all_frustums(cams, center) if center is not None else 0.0
    if radius > 0:
        half, how = radius * (1 + BOX_PAD), "the sphere every camera sees"
    else:
        center, half, how = cams.centers.mean(axis=0), RANDOM_INIT_EXTENT * scene_scale, "a cube around the cameras"
    return [*(center - half).tolist(), *(center + half).tolist()], how
