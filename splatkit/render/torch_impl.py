"""Pure-PyTorch Gaussian rasterizer: the reference every other backend is tested against.

Autograd does the backward pass. It follows gsplat 1.5.3's CUDA kernels rule for rule
(``ProjectionEWA3DGSFused.cu``, ``IntersectTile.cu``, ``RasterizeToPixels3DGSFwd.cu``), so that
images, gradients and the ``meta`` dict match gsplat's non-packed mode:

* EWA projection with the perspective Jacobian evaluated at the mean clamped to 1.3x the field of
  view (``lim = (W - cx)/fx + 0.3 * tan_fov`` per side), ``eps2d`` added to the 2D covariance
  diagonal, optional Mip-Splatting compensation ``sqrt(det(S) / det(S + eps2d I))``;
* culling: depth outside ``[near, far]``, ``det <= 0``, opacity below 1/255, both radii
  ``<= radius_clip``, and bounding boxes entirely off-screen give ``radii = 0``;
* radii = ``ceil(extend * sqrt(diag(S)))`` with ``extend = min(3.33, sqrt(2 ln(255 * opacity)))``
  (gsplat's opacity-aware bound, arXiv:2402.00525 B.2);
* 16x16 tile binning by those radii, per-tile front-to-back order by (depth, index);
* compositing at pixel centres ``(i + 0.5, j + 0.5)``: ``alpha = min(0.999, o * exp(-sigma))``,
  skipped when ``sigma < 0`` or ``alpha < 1/255``, and a pixel stops *before* the Gaussian that
  would bring its transmittance to ``<= 1e-4``.

Works in float32 and float64 (the finite-difference tests use float64) and on any device.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

# gsplat/cuda/include/Common.h: ALPHA_THRESHOLD (1.f / 255.f); the kernels' other constants.
ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_EPS = 1e-4
MAX_EXTEND = 3.33

# Elements of the [tiles, pixels, gaussians] blocks composited at once: bounds the memory the
# autograd graph keeps (about a dozen float tensors of this size) to a few hundred MB.
_BLOCK_ELEMENTS = 1 << 22


class Projection(NamedTuple):
    radii: Tensor  # [C, N, 2] int32, 0 for culled Gaussians
    means2d: Tensor  # [C, N, 2] pixels, corner-origin convention
    depths: Tensor  # [C, N] camera-space z
    conics: Tensor  # [C, N, 3] upper triangle of the inverse 2D covariance (a, b, c)
    compensations: Optional[Tensor]  # [C, N] or None


class TileBins(NamedTuple):
    tiles_per_gauss: Tensor  # [C, N] int32
    isect_ids: Tensor  # [M] int64: image | tile | depth bits, as gsplat
    flatten_ids: Tensor  # [M] int32, index into the flattened [C * N]
    isect_offsets: Tensor  # [C, tile_height, tile_width] int32


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from (not necessarily unit) wxyz quaternions."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R S S^T R^T`` ``[..., 3, 3]``."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Optional[Tensor],  # [N] (for the opacity-aware radius), or None
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> Projection:
    """EWA splatting of 3D Gaussians into C pinhole cameras (gsplat's ``fully_fused_projection``).

    Differentiable w.r.t. means, quats, scales (and viewmats); culled Gaussians keep finite values
    so no NaN reaches the gradients.
    """
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    x, y, z = means_c.unbind(-1)
    in_range = (z >= near_plane) & (z <= far_plane)
    # Stand-in depth for culled Gaussians keeps 1/z finite (their outputs are ignored).
    zs = torch.where(in_range, z, torch.ones_like(z))

    fx = Ks[:, 0, 0, None]
    fy = Ks[:, 1, 1, None]
    cx = Ks[:, 0, 2, None]
    cy = Ks[:, 1, 2, None]
    rz = 1.0 / zs
    # Jacobian at the mean clamped to 1.3x the field of view (gsplat persp_proj): Gaussians far
    # outside the frustum would otherwise get huge, badly conditioned footprints.
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = zs * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = zs * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))

    # Camera-space square root of the covariance, T = R_cam R_q S, then J T row by row:
    # cov2d = (J T)(J T)^T is exactly symmetric and cheaper than J R Sigma R^T J^T.
    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3]
    T = torch.einsum("cij,njk->cnik", R, M)  # [C, N, 3, 3]
    rz2 = rz * rz
    row0 = (fx * rz)[..., None] * T[:, :, 0] - (fx * tx * rz2)[..., None] * T[:, :, 2]
    row1 = (fy * rz)[..., None] * T[:, :, 1] - (fy * ty * rz2)[..., None] * T[:, :, 2]
    a = (row0 * row0).sum(-1)
    b = (row0 * row1).sum(-1)
    c = (row1 * row1).sum(-1)

    det_orig = a * c - b * b
    a = a + eps2d
    c = c + eps2d
    det = a * c - b * b
    ok_det = det > 0
    dets = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / dets, -b / dets, a / dets], dim=-1)

    compensations = None
    if calc_compensations:
        ratio = det_orig / dets
        pos = ratio > 0
        # sqrt only of positive values: d sqrt/dx is infinite at 0.
        compensations = torch.where(pos, torch.where(pos, ratio, torch.ones_like(ratio)).sqrt(),
                                    torch.zeros_like(ratio))

    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)

    with torch.no_grad():
        valid = in_range & ok_det
        extend = torch.full_like(z, MAX_EXTEND)
        if opacities is not None:
            op = opacities.detach()[None, :].expand_as(z)
            if compensations is not None:
                op = op * compensations
            valid &= op >= ALPHA_THRESHOLD
            ops = torch.where(op >= ALPHA_THRESHOLD, op, torch.ones_like(op))
            extend = torch.minimum(extend, torch.sqrt(2.0 * torch.log(ops / ALPHA_THRESHOLD)))
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        valid &= ~((rx <= radius_clip) & (ry <= radius_clip))
        mx, my = means2d.detach().unbind(-1)
        valid &= ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        radii = torch.stack([rx, ry], dim=-1)
        radii = torch.where(valid[..., None], radii, torch.zeros_like(radii)).to(torch.int32)

    return Projection(radii, means2d, z, conics, compensations)


@torch.no_grad()
def bin_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int32
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> TileBins:
    """Tile/Gaussian intersections sorted by (image, tile, depth, index), as gsplat's
    ``isect_tiles`` + ``isect_offset_encode`` (non-packed)."""
    C, N = depths.shape
    device = means2d.device
    n_tiles = tile_width * tile_height
    tile_xy = means2d.detach().float() / tile_size
    tile_r = radii.float() / tile_size
    lo = torch.floor(tile_xy - tile_r)
    hi = torch.ceil(tile_xy + tile_r)
    lims = torch.tensor([tile_width, tile_height], device=device, dtype=lo.dtype)
    lo = torch.minimum(lo.clamp_min(0), lims).long()
    hi = torch.minimum(hi.clamp_min(0), lims).long()
    span = (hi - lo).clamp_min(0)
    counts = span[..., 0] * span[..., 1] * (radii > 0).all(dim=-1)  # [C, N]
    flat_counts = counts.reshape(-1)
    total = int(flat_counts.sum())

    g = torch.repeat_interleave(torch.arange(C * N, device=device), flat_counts)
    first = torch.cumsum(flat_counts, 0) - flat_counts
    local = torch.arange(total, device=device) - first[g]
    span_x = span[..., 0].reshape(-1)[g]
    tx = lo[..., 0].reshape(-1)[g] + local % span_x.clamp_min(1)
    ty = lo[..., 1].reshape(-1)[g] + local // span_x.clamp_min(1)
    image = g // max(N, 1)
    tile_key = image * n_tiles + ty * tile_width + tx  # [M]

    # Lexicographic (tile, depth, index) with two stable sorts; g is already ascending.
    d = depths.detach().float().reshape(-1)[g]
    order = torch.sort(d, stable=True).indices
    order = order[torch.sort(tile_key[order], stable=True).indices]
    tile_key = tile_key[order]
    flatten_ids = g[order].to(torch.int32)
    depth_bits = d[order].view(torch.int32).long() & 0xFFFFFFFF
    tile_bits = n_tiles.bit_length()
    isect_ids = ((tile_key // n_tiles) << (32 + tile_bits)) | ((tile_key % n_tiles) << 32) | depth_bits

    per_tile = torch.bincount(tile_key, minlength=C * n_tiles)
    offsets = (torch.cumsum(per_tile, 0) - per_tile).to(torch.int32)
    return TileBins(
        counts.to(torch.int32),
        isect_ids,
        flatten_ids,
        offsets.reshape(C, tile_height, tile_width),
    )


class _AbsGradTap(torch.autograd.Function):
    """Identity on per-pixel copies of the 2D means whose backward also accumulates
    ``|dL/dmean2d|`` pixel by pixel into ``target.absgrad`` (AbsGS, as gsplat's ``absgrad``)."""

    @staticmethod
    def forward(ctx, x, ids, buffer, target):  # x [G, P, M, 2], ids [G, M]
        ctx.save_for_backward(ids)
        ctx.buffer = buffer
        ctx.target = target
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        ctx.buffer.index_add_(0, ids.reshape(-1), grad.abs().sum(1).reshape(-1, 2))
        ctx.target.absgrad = ctx.buffer.reshape(ctx.target.shape)
        return grad, None, None, None


def _tile_groups(counts: np.ndarray, pixels: int) -> list:
    """Split consecutive tiles into groups ``(first, end, longest list)`` whose padded
    [G, P, M] block fits the budget (a single tile is never split)."""
    groups = []
    start, width = 0, 0
    for i, n in enumerate(counts.tolist()):
        if i > start and (i + 1 - start) * pixels * max(width, n) > _BLOCK_ELEMENTS:
            groups.append((start, i, width))
            start, width = i, n
        else:
            width = max(width, n)
    if len(counts):
        groups.append((start, len(counts), width))
    return groups


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,  # [C, tile_height, tile_width]
    flatten_ids: Tensor,  # [M]
    backgrounds: Optional[Tensor] = None,  # [C, D]
    absgrad: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing, tile by tile, in blocks of tiles padded to the longest
    list. Returns ``colors [C, H, W, D]`` and ``alphas [C, H, W, 1]``.

    Every (pixel, listed Gaussian) pair of a block is evaluated and kept for autograd, so memory
    is about a dozen floats x tile pixels x the longest tile list: fine for tests and small
    scenes (a few thousand Gaussians), not for training-sized ones (use the cpu backend)."""
    C, N, D = colors.shape
    tile_height, tile_width = isect_offsets.shape[-2:]
    n_tiles = C * tile_height * tile_width
    P = tile_size * tile_size
    device, dtype = means2d.device, means2d.dtype

    starts = isect_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], torch.tensor([flatten_ids.numel()], device=device)])
    counts = (ends - starts).cpu().numpy()

    m2 = means2d.reshape(C * N, 2)
    con = conics.reshape(C * N, 3)
    col = colors.reshape(C * N, D)
    opa = opacities.reshape(C * N)
    buffer = None
    if absgrad:
        buffer = torch.zeros(C * N, 2, device=device, dtype=dtype)

    # Pixel centres of every tile, [n_tiles, P, 2].
    local = torch.arange(tile_size, device=device, dtype=dtype)
    ly, lx = torch.meshgrid(local, local, indexing="ij")
    tiles = torch.arange(n_tiles, device=device)
    ox = ((tiles % tile_width) * tile_size).to(dtype)
    oy = (((tiles // tile_width) % tile_height) * tile_size).to(dtype)
    pix = torch.stack(
        [ox[:, None] + lx.reshape(1, -1) + 0.5, oy[:, None] + ly.reshape(1, -1) + 0.5], dim=-1
    )

    out_colors, out_T = [], []
    for t0, t1, M in _tile_groups(counts, P):
        G = t1 - t0
        if M == 0:
            out_colors.append(torch.zeros(G, P, D, device=device, dtype=dtype))
            out_T.append(torch.ones(G, P, device=device, dtype=dtype))
            continue
        slot = torch.arange(M, device=device)
        cnt = torch.as_tensor(counts[t0:t1], device=device)
        present = slot[None, :] < cnt[:, None]  # [G, M]
        idx = (starts[t0:t1, None] + slot[None, :]).clamp_max(max(flatten_ids.numel() - 1, 0))
        gid = torch.where(present, flatten_ids.long()[idx], torch.zeros_like(idx))  # [G, M]

        mg = m2[gid][:, None].expand(G, P, M, 2)
        if absgrad:
            mg = _AbsGradTap.apply(mg, gid, buffer, means2d)
        delta = mg - pix[t0:t1, :, None, :]  # [G, P, M, 2]
        cg = con[gid][:, None]  # [G, 1, M, 3]
        dx, dy = delta[..., 0], delta[..., 1]
        sigma = 0.5 * (cg[..., 0] * dx * dx + cg[..., 2] * dy * dy) + cg[..., 1] * dx * dy
        alpha = torch.clamp_max(opa[gid][:, None] * torch.exp(-sigma), MAX_ALPHA)
        with torch.no_grad():
            keep = present[:, None] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            a = torch.where(keep, alpha, torch.zeros_like(alpha))
            # A pixel stops before the Gaussian that takes its transmittance to <= 1e-4; as T
            # only decreases, the kept Gaussians are those whose running product stays above.
            keep &= torch.cumprod(1 - a, dim=-1) > TRANSMITTANCE_EPS
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        trans = torch.cumprod(1 - alpha, dim=-1)  # T after each Gaussian
        T_before = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
        w = alpha * T_before  # [G, P, M]
        out_colors.append(torch.einsum("gpm,gmd->gpd", w, col[gid]))
        out_T.append(trans[..., -1])

    if out_colors:
        rgb = torch.cat(out_colors, 0)
        T = torch.cat(out_T, 0)
    else:  # no tiles at all (zero-sized image)
        rgb = torch.zeros(0, P, D, device=device, dtype=dtype)
        T = torch.ones(0, P, device=device, dtype=dtype)

    def to_image(x: Tensor) -> Tensor:
        k = x.shape[-1]
        x = x.reshape(C, tile_height, tile_width, tile_size, tile_size, k)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(C, tile_height * tile_size, tile_width * tile_size, k)
        return x[:, :height, :width]

    rgb = to_image(rgb)
    T = to_image(T[..., None])
    if backgrounds is not None:
        rgb = rgb + T * backgrounds[:, None, None, :]
    alphas = 1 - T
    if flatten_ids.numel() == 0:
        # Nothing was drawn: tie the outputs to the inputs anyway so loss.backward() works on an
        # empty scene (all gradients are then zero, as with gsplat's kernels).
        zero = (m2.sum() + con.sum() + col.sum() + opa.sum()) * 0
        rgb = rgb + zero
        alphas = alphas + zero
    return rgb, alphas


def tile_grid(width: int, height: int, tile_size: int) -> Tuple[int, int]:
    """Number of tiles across and down."""
    return math.ceil(width / tile_size), math.ceil(height / tile_size)
