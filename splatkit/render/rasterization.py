"""``rasterization()``: one entry point for every Gaussian rasterizer backend.

Same arguments, outputs and ``meta`` as ``gsplat.rasterization(..., packed=False)`` (gsplat 1.5.3),
so gsplat's ``DefaultStrategy`` works unchanged on our ``meta`` (``MCMCStrategy`` reads nothing
from it) and code written against either runs against the other.

Backends:

* ``"gsplat"``: gsplat's CUDA kernels (needs CUDA tensors);
* ``"cpu"``: our C++/OpenMP kernels (``cuda/cpu/``, :mod:`splatkit.render.cpu_backend`) with
  hand-written backward passes, built on first use;
* ``"torch"``: the pure-PyTorch reference (:mod:`splatkit.render.torch_impl`, autograd), any
  device, slow;
* ``"auto"``: gsplat for CUDA tensors, else cpu, else torch (with a warning) when the C++
  kernels cannot be built (no compiler).

They are entries of a small registry (:mod:`splatkit.render.backends`), so a new backend is one
``register_backend`` call.

The cpu and torch backends share this function's glue (input checks, colour/depth channels,
backgrounds, expected depth, ``meta``) and differ in the projection, SH, binning and compositing
implementations, which compute the same thing.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from splatkit.errors import SplatkitError
from splatkit.render import torch_impl
from splatkit.render.backends import get_backend, resolve_backend
from splatkit.render.sh import MAX_SH_DEGREE, eval_sh

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                  sh_degree, backgrounds, render_mode, rasterize_mode, tile_size) -> Tuple[int, int]:
    if means.dim() != 2 or means.shape[-1] != 3:
        raise SplatkitError(f"means must be [N, 3], got {list(means.shape)}")
    N = means.shape[0]
    if viewmats.dim() != 3 or viewmats.shape[-2:] != (4, 4):
        raise SplatkitError(f"viewmats must be [C, 4, 4], got {list(viewmats.shape)}")
    C = viewmats.shape[0]
    for name, x, shape in (("quats", quats, (N, 4)), ("scales", scales, (N, 3)),
                           ("opacities", opacities, (N,)), ("Ks", Ks, (C, 3, 3))):
        if tuple(x.shape) != shape:
            raise SplatkitError(f"{name} must be {list(shape)}, got {list(x.shape)}")
    if sh_degree is None:
        if not (colors.dim() == 2 and colors.shape[0] == N) and not (
            colors.dim() == 3 and tuple(colors.shape[:2]) == (C, N)
        ):
            raise SplatkitError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {list(colors.shape)}")
        if colors.shape[-1] < 1:
            raise SplatkitError("colors need at least one channel")
    else:
        if not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise SplatkitError(f"sh_degree must be in [0, {MAX_SH_DEGREE}], got {sh_degree}")
        ok = (colors.dim() == 3 and colors.shape[0] == N) or (
            colors.dim() == 4 and tuple(colors.shape[:2]) == (C, N)
        )
        if not ok or colors.shape[-1] != 3:
            raise SplatkitError(f"SH colors must be [N, K, 3] or [C, N, K, 3], got {list(colors.shape)}")
        if colors.shape[-2] < (sh_degree + 1) ** 2:
            raise SplatkitError(
                f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} SH coefficients, got {colors.shape[-2]}"
            )
    if render_mode not in RENDER_MODES:
        raise SplatkitError(f"unknown render_mode {render_mode!r} (choose from {', '.join(RENDER_MODES)})")
    if rasterize_mode not in RASTERIZE_MODES:
        raise SplatkitError(f"unknown rasterize_mode {rasterize_mode!r} (choose from {', '.join(RASTERIZE_MODES)})")
    if int(width) <= 0 or int(height) <= 0:
        raise SplatkitError(f"image size must be positive, got {width}x{height}")
    if int(tile_size) <= 0:
        raise SplatkitError(f"tile_size must be positive, got {tile_size}")
    if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != C):
        raise SplatkitError(f"backgrounds must be [C, D], got {list(backgrounds.shape)}")
    return N, C


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    tile_size: int = 16,
    absgrad: bool = False,
    backend: str = "auto",
) -> Tuple[Tensor, Tensor, Dict]:
    """Render N Gaussians into C cameras.

    Args:
        means: ``[N, 3]`` centres. quats: ``[N, 4]`` wxyz, any norm. scales: ``[N, 3]`` activated.
        opacities: ``[N]`` activated (in [0, 1]).
        colors: ``[N, D]`` / ``[C, N, D]`` features, or ``[N, K, 3]`` / ``[C, N, K, 3]`` SH
            coefficients when ``sh_degree`` is given (colour = SH + 0.5, clamped at 0).
        viewmats: ``[C, 4, 4]`` world-to-camera, OpenCV axes. Ks: ``[C, 3, 3]``, pixel centres at +0.5.
        backgrounds: ``[C, D]`` colour behind the Gaussians (depth channels get 0).
        render_mode: "RGB", "D" (sum of w_i z_i), "ED" (D / alpha), "RGB+D", "RGB+ED" (depth last).
        rasterize_mode: "classic" or "antialiased" (Mip-Splatting opacity compensation).
        absgrad: also accumulate ``|dL/dmeans2d|`` per pixel into ``meta["means2d"].absgrad``.
        backend: "auto", "gsplat", "cpu" or "torch" (see the module docstring).

    Returns:
        ``renders [C, H, W, D']``, ``alphas [C, H, W, 1]`` and ``meta`` (gsplat's keys; ``radii``
        ``[C, N, 2]`` int32 is 0 for culled Gaussians; ``meta["means2d"].grad`` after backward is
        the gradient w.r.t. the projected means in pixels).
    """
    width, height, tile_size = int(width), int(height), int(tile_size)
    N, C = _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                         sh_degree, backgrounds, render_mode, rasterize_mode, tile_size)
    use = resolve_backend(backend, means.device)
    chosen = get_backend(use)
    if chosen.full is not None:
        return chosen.full(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                           near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
                           sh_degree=sh_degree, tile_size=tile_size, backgrounds=backgrounds,
                           render_mode=render_mode, absgrad=absgrad, rasterize_mode=rasterize_mode)

    dtype = means.dtype
    viewmats = viewmats.to(dtype)
    Ks = Ks.to(dtype)
    impl = chosen.stages()
    proj = impl.project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        calc_compensations=(rasterize_mode == "antialiased"),
    )
    radii, means2d, depths, conics = proj.radii, proj.means2d, proj.depths, proj.conics
    opac = opacities[None, :].expand(C, N)
    if proj.compensations is not None:
        opac = opac * proj.compensations

    if render_mode in ("D", "ED"):
        feats = depths[..., None]
        if backgrounds is not None:
            backgrounds = torch.zeros(C, 1, device=means.device, dtype=dtype)
    else:
        if sh_degree is None:
            feats = colors if colors.dim() == 3 else colors[None].expand(C, N, colors.shape[-1])
        else:
            campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
            if sh_degree <= chosen.max_fused_sh_degree:
                feats = impl.sh_colors(sh_degree, means, campos, colors)
            else:
                dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
                shs = colors if colors.dim() == 4 else colors[None].expand((C,) + tuple(colors.shape))
                # +0.5 and clamp at 0: gsplat's match of the original 3DGS CUDA rasterizer.
                feats = torch.clamp_min(eval_sh(sh_degree, dirs, shs) + 0.5, 0.0)
        if render_mode in ("RGB+D", "RGB+ED"):
            feats = torch.cat([feats, depths[..., None]], dim=-1)
            if backgrounds is not None:
                backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], dim=-1)
    if backgrounds is not None and backgrounds.shape[-1] != feats.shape[-1]:
        raise SplatkitError(
            f"backgrounds have {backgrounds.shape[-1]} channels, the render has {feats.shape[-1]}"
        )
    if backgrounds is not None:
        backgrounds = backgrounds.to(dtype)

    tile_width, tile_height = torch_impl.tile_grid(width, height, tile_size)
    bins = impl.bin_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)
    renders, alphas = impl.rasterize_to_pixels(
        means2d, conics, feats.contiguous(), opac, width, height, tile_size,
        bins.isect_offsets, bins.flatten_ids, backgrounds, absgrad=absgrad,
    )

    if render_mode in ("ED", "RGB+ED"):
        renders = torch.cat(
            [renders[..., :-1], renders[..., -1:] / alphas.clamp(min=1e-10)], dim=-1
        )

    meta = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": bins.tiles_per_gauss,
        "isect_ids": bins.isect_ids,
        "flatten_ids": bins.flatten_ids,
        "isect_offsets": bins.isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": C,
        "backend": use,
    }
    return renders, alphas, meta

