"""The NeRF's C++/OpenMP kernels (``cuda/cpu/nerf_cpu.cpp``, ops ``torch.ops.splatkit_nerf.*``):
hash encoding forward/backward, occupancy-grid marching and packed volume rendering
forward/backward, wrapped as ``torch.autograd.Function``s.

Built on first use like the rasterizer's kernels (:mod:`splatkit.render.cpu_backend`: same cache
folder, flags and thread count), as an extension of its own so either builds without the other.
Without a compiler, :func:`kernels_or_none` is None and callers use the PyTorch references
(:mod:`splatkit.render.volume`, :class:`splatkit.models.hashgrid.HashGrid`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from splatkit.render.cpu_backend import CppExtension, Kernels

_EXTENSION = CppExtension("nerf_cpu", ("nerf_cpu.cpp",), "splatkit_nerf", "the NeRF C++ kernels")
_KERNELS = Kernels(_EXTENSION)  # each op on kernel_threads() threads
_warned = False


def build_dir() -> Path:
    return _EXTENSION.build_dir()


def load_extension():
    return _EXTENSION.load()


def unavailable_reason() -> Optional[str]:
    return _EXTENSION.unavailable_reason()


def _call(name: str, *args):
    return getattr(_KERNELS, name)(*args)


def _f32(x: Tensor) -> Tensor:
    return x.detach().float().contiguous()


# -- hash encoding -----------------------------------------------------------------------------------
class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, scale, plan, keep):
        xf = _f32(x)
        sf = None if scale is None else _f32(scale)
        args = (plan.res_long, plan.offsets, plan.dense_mask, int(plan.table_size))
        out = _call("hash_encode_fwd", xf, _f32(table), *args, keep, sf)
        # The table is kept only when the saliency needs a gradient (its term re-reads the rows).
        ctx.save_for_backward(xf, sf, _f32(table) if ctx.needs_input_grad[2] else None)
        ctx.args, ctx.rows, ctx.keep, ctx.dtype = args, table.shape[0], keep, table.dtype
        return out.to(table.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        xf, sf, tf = ctx.saved_tensors
        want_t, want_s = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad, gscale = _call("hash_encode_bwd", xf, _f32(g), ctx.rows, *ctx.args, ctx.keep, sf, tf, want_t, want_s)
        return (None, grad.to(ctx.dtype) if want_t else None, gscale.to(ctx.dtype) if want_s else None, None, None)


def hash_encode(grid, x: Tensor, keep: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tensor:
    """``grid(x)`` (a :class:`~splatkit.models.hashgrid.HashGrid`) with the C++ kernels: same
    values, gradient to the table only (not to ``x``). HollowNeRF's saliency, fused: ``keep [N]``
    bool: samples left out get zero features and cost no lookups; ``scale [N]``: features times
    each sample's saliency, differentiable (``scale[:, None] * grid(x)``)."""
    plan = grid._get_plan()
    if not hasattr(plan, "res_long"):
        plan.res_long = torch.tensor(grid.resolutions, dtype=torch.int64)
        plan.dense_mask = torch.tensor(plan.dense, dtype=torch.bool)
    k = None if keep is None else keep.to(torch.bool).contiguous()
    return _HashEncode.apply(x, grid.table, scale, plan, k)


# -- marching and volume rendering -------------------------------------------------------------------
def march(rays_o, rays_d, t_start, t_end, binaries, aabbs, step, cone_angle, max_samples):
    from splatkit.render.volume import PackedSamples

    out = _call("march", _f32(rays_o), _f32(rays_d), _f32(t_start), _f32(t_end), binaries.contiguous(),
                _f32(aabbs), float(step), float(cone_angle), int(max_samples))
    return PackedSamples(*out)


class _VolRend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, values, t_starts, t_ends, packed_info):
        args = (_f32(sigmas), _f32(values), _f32(t_starts), _f32(t_ends), packed_info.contiguous())
        colors, opac, depth = _call("volrend_fwd", *args)
        ctx.save_for_backward(*args, colors, opac, depth)
        return colors, opac, depth

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gc, go, gd):
        saved = ctx.saved_tensors
        R, C = saved[5].shape

        def g(t, shape):
            return torch.zeros(shape) if t is None else _f32(t)

        gs, gv = _call("volrend_bwd", *saved, g(gc, (R, C)), g(go, (R,)), g(gd, (R,)))
        return gs, gv, None, None, None


def render(sigmas, values, t_starts, t_ends, ray_indices, packed_info):
    from splatkit.render.volume import VolumeOutputs

    colors, opac, depth = _VolRend.apply(sigmas, values, t_starts, t_ends, packed_info)
    return VolumeOutputs(colors, opac, depth, None)


class _Kernels:
    march = staticmethod(march)
    render = staticmethod(render)
    hash_encode = staticmethod(hash_encode)


def kernels_or_none():
    """The kernels, or None when they cannot be built here (warns once with the reason)."""
    global _warned
    if unavailable_reason() is None:
        return _Kernels
    if not _warned:
        _warned = True
        warnings.warn(f"NeRF C++ kernels unavailable ({_EXTENSION.error}); using the slower PyTorch path", stacklevel=3)
    return None
