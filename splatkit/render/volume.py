"""Volume rendering for ray-marched fields (the hash-grid NeRF): occupancy-grid ray marching and
packed volume rendering, in nerfacc's packed layout.

A **packed** batch of samples is what nerfacc 0.5.3's ``OccGridEstimator.sampling`` returns:
``ray_indices [S]`` (int64, non-decreasing), ``t_starts [S]``, ``t_ends [S]``, plus
``packed_info [R, 2]`` (first sample, sample count) per ray. Three implementations:

* **CUDA tensors**: nerfacc's own kernels (``traverse_grids``, packed ``render_weight_from_density``,
  ``accumulate_along_rays``); imported only on that path.
* **CPU, C++** (:mod:`splatkit.render.nerf_cpu_backend`, ``cuda/cpu/nerf_cpu.cpp``): the default on
  CPU tensors when a compiler is available.
* **CPU, PyTorch** (this module's ``*_torch`` functions): the reference the kernels are tested
  against, and the fallback without a compiler.

nerfacc's marching, packed scans and ``pack_info`` are CUDA-only and JIT-compile CUDA on first
call, so nothing here that CPU tensors reach imports ``nerfacc.cuda``.

**Marching rule** (shared by all three, so samples agree up to float rounding on CUDA): each ray
is cut to ``[t_start, t_end)`` (the caller intersects it with the outermost grid box and the
near/far planes and adds the stratified jitter to ``t_start``); sample ``k`` spans
``[t_k, t_{k+1})`` with ``t_0 = t_start`` and ``t_{k+1} = t_k + clamp(t_k * cone_angle, step, 1e10)``
(nerfacc's ``_calc_dt``; for ``cone_angle = 0`` computed in closed form, ``t_k = t_start + k step``),
and is kept when its midpoint lies before ``t_end`` and in an occupied cell of the finest grid
level that contains it (levels: nested boxes, nerfacc's multi-level grid).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from splatkit.errors import SplatkitError

# nerfacc's _calc_dt upper clamp on the step.
MAX_DT = 1e10


class PackedSamples(NamedTuple):
    ray_indices: Tensor  # [S] int64
    t_starts: Tensor  # [S]
    t_ends: Tensor  # [S]
    packed_info: Tensor  # [R, 2] int64: first sample, count
    t_next: Tensor  # [R] where each ray's marching stopped (continue from here), >= t_end when done


def pack_info(ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[R, 2]`` (first sample, count) of sorted ``ray_indices`` (nerfacc's ``pack_info``, any device)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)[:n_rays]
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=-1)


def ray_aabb(rays_o: Tensor, rays_d: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances ``[R]`` of rays through the box ``[xmin, ymin, zmin, xmax, ymax, zmax]``
    (slab method; misses get ``t_min >= t_max``)."""
    tiny = torch.tensor(1e-12, dtype=rays_d.dtype, device=rays_d.device)
    d = torch.where(rays_d.abs() < tiny, torch.where(rays_d < 0, -tiny, tiny), rays_d)
    t0 = (aabb[:3] - rays_o) / d
    t1 = (aabb[3:] - rays_o) / d
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def ray_segments(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, near: float, far: float) -> tuple[Tensor, Tensor]:
    """``[t_start, t_end)`` per ray: the box crossing cut to the near/far planes (empty: start >= end)."""
    t_min, t_max = ray_aabb(rays_o, rays_d, aabb)
    return t_min.clamp_min(near), t_max.clamp_max(far)


def occupied(points: Tensor, binaries: Tensor, aabbs: Tensor) -> Tensor:
    """Whether each point ``[N, 3]`` is in an occupied cell of the finest level containing it
    (False outside every level). ``binaries [L, X, Y, Z]`` bool, ``aabbs [L, 6]`` nested boxes."""
    L = binaries.shape[0]
    res = torch.tensor(binaries.shape[1:], device=points.device)
    flat = binaries.reshape(-1)
    out = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    done = torch.zeros_like(out)
    for lvl in range(L):
        mn, mx = aabbs[lvl, :3], aabbs[lvl, 3:]
        u = (points - mn) / (mx - mn)
        inside = ((u >= 0) & (u <= 1)).all(-1) & ~done
        cell = torch.minimum((u * res).long().clamp_min(0), res - 1)
        idx = ((lvl * res[0] + cell[:, 0]) * res[1] + cell[:, 1]) * res[2] + cell[:, 2]
        out |= inside & flat[idx.clamp(0, flat.numel() - 1)]
        done |= inside
    return out


def _lattice_cone(t_start: Tensor, t_end: Tensor, step: float, cone_angle: float) -> Tensor:
    """``[R, K + 1]`` sample boundaries of the cone-angle lattice, stepping every ray at once."""
    cols = [t_start]
    t = t_start
    active = t < t_end
    while bool(active.any()):
        dt = (t * cone_angle).clamp(step, MAX_DT)
        t = torch.where(active, t + dt, t)
        cols.append(t)
        active = active & ((cols[-2] + cols[-1]) * 0.5 < t_end)
    return torch.stack(cols, dim=1)


def march_torch(rays_o: Tensor, rays_d: Tensor, t_start: Tensor, t_end: Tensor, binaries: Tensor, aabbs: Tensor,
                step: float, cone_angle: float = 0.0, max_samples: int = 0) -> PackedSamples:
    """The marching rule (module docstring) in PyTorch: the reference and the no-compiler path.
    ``max_samples > 0`` stops each ray after that many kept samples (as nerfacc's
    ``traverse_steps_limit``); ``t_next`` is then the end of its last sample, else ``t_end``."""
    if not step > 0:
        raise SplatkitError(f"ray marching step must be > 0, got {step}")
    R, dev = rays_o.shape[0], rays_o.device
    t_start, t_end = t_start.float().contiguous(), t_end.float().contiguous()
    if cone_angle == 0.0:
        span = ((t_end - t_start) / step).clamp_min(0)
        n = int(span.max().item()) + 2 if R else 0
        k = torch.arange(n + 1, device=dev, dtype=torch.float32)
        bounds = t_start[:, None] + k[None, :] * step  # [R, n + 1]
    else:
        bounds = _lattice_cone(t_start, t_end, step, cone_angle)
    lo, hi = bounds[:, :-1], bounds[:, 1:]
    mid = (lo + hi) * 0.5
    # The lattice increases, so the live steps of a ray are a prefix of its row.
    ri, ki = (mid < t_end[:, None]).nonzero(as_tuple=True)
    m = mid[ri, ki]
    pts = rays_o[ri] + m[:, None] * rays_d[ri]
    keep = occupied(pts, binaries, aabbs)
    ri, ki = ri[keep], ki[keep]
    return _capped(ri, lo[ri, ki], hi[ri, ki], t_start, t_end, max_samples)


def _capped(ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, t_start: Tensor, t_end: Tensor,
            max_samples: int) -> PackedSamples:
    """All of each ray's marched samples (sorted by ray), kept up to ``max_samples`` per ray (0: no
    cap). ``t_next``: the end of the last kept sample of a ray that had more, else ``t_end`` (done).
    The marcher must have found at least ``max_samples + 1`` samples of a ray that has more: a ray
    with exactly ``max_samples`` is done, not cut."""
    R = t_start.shape[0]
    t_next = torch.maximum(t_start, t_end)
    info = pack_info(ray_indices, R)
    if max_samples > 0 and ray_indices.numel():
        rank = torch.arange(ray_indices.numel(), device=ray_indices.device) - info[ray_indices, 0]
        cut = info[:, 1] > max_samples  # rays with more samples stop at their max_samples-th
        last = (info[:, 0] + max_samples - 1).clamp_max(ray_indices.numel() - 1)
        t_next = torch.where(cut, t_ends[last], t_next)
        kept = rank < max_samples
        ray_indices, t_starts, t_ends = ray_indices[kept], t_starts[kept], t_ends[kept]
        counts = info[:, 1].clamp_max(max_samples)  # the kept samples' layout, without a second bincount
        info = torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)
    return PackedSamples(ray_indices, t_starts, t_ends, info, t_next)


class VolumeOutputs(NamedTuple):
    colors: Tensor  # [R, C] sum of weight x value (no background)
    opacities: Tensor  # [R]
    depths: Tensor  # [R] sum of weight x midpoint distance (not normalised)
    weights: Optional[Tensor]  # [S] when asked for


def render_torch(sigmas: Tensor, values: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                 packed_info: Tensor, want_weights: bool = False) -> VolumeOutputs:
    """Packed volume rendering in PyTorch (nerfacc's ``render_weight_from_density`` +
    ``accumulate_along_rays``): ``alpha = 1 - exp(-sigma dt)``, ``T = exp(-sum_{j<i} sigma_j dt_j)``,
    ``w = T alpha``. Differentiable w.r.t. ``sigmas`` and ``values`` ``[S, C]``."""
    R = packed_info.shape[0]
    sdt = sigmas * (t_ends - t_starts)
    # Exclusive per-ray sums from one cumulative sum in float64 (float32 would lose the small
    # terms of later rays against the running total of all earlier ones).
    cs = torch.cumsum(sdt.double(), 0)
    before = torch.cat([cs.new_zeros(1), cs])[packed_info[:, 0]]  # total of all earlier rays
    excl = cs - sdt.double() - before[ray_indices]
    trans = torch.exp(-excl).to(sigmas.dtype)
    alphas = 1.0 - torch.exp(-sdt)
    w = trans * alphas
    C = values.shape[1]
    colors = torch.zeros(R, C, dtype=values.dtype, device=values.device).index_add(0, ray_indices, w[:, None] * values)
    opac = torch.zeros(R, dtype=w.dtype, device=w.device).index_add(0, ray_indices, w)
    mids = (t_starts + t_ends) * 0.5
    depth = torch.zeros(R, dtype=w.dtype, device=w.device).index_add(0, ray_indices, w * mids)
    return VolumeOutputs(colors, opac, depth, w if want_weights else None)


# -- dispatch -------------------------------------------------------------------------------------
def _cpu_kernels():
    """Our C++ kernels, or None (no compiler: the PyTorch path, with the reason logged once)."""
    from splatkit.render import nerf_cpu_backend

    return nerf_cpu_backend.kernels_or_none()


def march(rays_o: Tensor, rays_d: Tensor, t_start: Tensor, t_end: Tensor, binaries: Tensor, aabbs: Tensor,
          step: float, cone_angle: float = 0.0, max_samples: int = 0, impl: str = "auto") -> PackedSamples:
    """Occupancy-grid marching (module docstring) on any device. ``impl``: ``auto``, ``cpu`` (C++),
    ``torch``, ``nerfacc`` (CUDA)."""
    impl = _resolve(impl, rays_o.device)
    if impl == "nerfacc":
        return _march_nerfacc(rays_o, rays_d, t_start, t_end, binaries, aabbs, step, cone_angle, max_samples)
    if impl == "cpu":
        return _cpu_kernels().march(rays_o, rays_d, t_start, t_end, binaries, aabbs, step, cone_angle, max_samples)
    return march_torch(rays_o, rays_d, t_start, t_end, binaries, aabbs, step, cone_angle, max_samples)


def render(sigmas: Tensor, values: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
           packed_info: Tensor, impl: str = "auto") -> VolumeOutputs:
    """Packed volume rendering (see :func:`render_torch`) on any device, differentiable."""
    impl = _resolve(impl, sigmas.device)
    if impl == "nerfacc":
        return _render_nerfacc(sigmas, values, t_starts, t_ends, ray_indices, packed_info)
    if impl == "cpu":
        return _cpu_kernels().render(sigmas, values, t_starts, t_ends, ray_indices, packed_info)
    return render_torch(sigmas, values, t_starts, t_ends, ray_indices, packed_info)


IMPLS = ("auto", "cpu", "torch", "nerfacc")


def _resolve(impl: str, device: torch.device) -> str:
    if impl not in IMPLS:
        raise SplatkitError(f"volume rendering implementation must be one of {', '.join(IMPLS)}; got {impl!r}")
    if device.type == "cuda":
        if impl in ("cpu",):
            raise SplatkitError("the C++ volume kernels take CPU tensors; these are on CUDA")
        return "torch" if impl == "torch" else "nerfacc"
    if impl == "nerfacc":
        raise SplatkitError("nerfacc's marching and packed rendering are CUDA-only (nerfacc 0.5.3); "
                            "use impl 'cpu' or 'torch' on CPU tensors")
    if impl == "auto":
        return "cpu" if _cpu_kernels() is not None else "torch"
    if impl == "cpu" and _cpu_kernels() is None:
        from splatkit.render import nerf_cpu_backend

        raise SplatkitError(f"the C++ volume kernels are unavailable: {nerf_cpu_backend.unavailable_reason()}")
    return impl


def _march_nerfacc(rays_o, rays_d, t_start, t_end, binaries, aabbs, step, cone_angle, max_samples) -> PackedSamples:
    from nerfacc.grid import traverse_grids  # CUDA tensors only: this loads nerfacc's CUDA kernels

    # nerfacc's termination planes are not used: its two-pass traversal leaves them unwritten
    # (torch.empty) for rays without samples, and it cannot tell a ray that reached the limit from
    # one that ended there. One sample past the cap tells which rays have more (as march_torch).
    t_start, t_end = t_start.float().contiguous(), t_end.float().contiguous()
    intervals, samples, _ = traverse_grids(
        rays_o.float().contiguous(), rays_d.float().contiguous(), binaries, aabbs,
        near_planes=t_start, far_planes=t_end, step_size=step,
        cone_angle=cone_angle, traverse_steps_limit=max_samples + 1 if max_samples > 0 else None)
    t_starts = intervals.vals[intervals.is_left]
    t_ends = intervals.vals[intervals.is_right]
    return _capped(samples.ray_indices.long(), t_starts, t_ends, t_start, t_end, max_samples)


def _render_nerfacc(sigmas, values, t_starts, t_ends, ray_indices, packed_info) -> VolumeOutputs:
    from nerfacc.volrend import accumulate_along_rays, render_weight_from_density

    R = packed_info.shape[0]
    w, _, _ = render_weight_from_density(t_starts, t_ends, sigmas, packed_info=packed_info, ray_indices=ray_indices,
                                         n_rays=R)
    colors = accumulate_along_rays(w, values, ray_indices, R)
    opac = accumulate_along_rays(w, None, ray_indices, R)[:, 0]
    depth = accumulate_along_rays(w, ((t_starts + t_ends) * 0.5)[:, None], ray_indices, R)[:, 0]
    return VolumeOutputs(colors, opac, depth, None)
