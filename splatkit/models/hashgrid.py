"""Multiresolution hash encoding (Müller et al., "Instant Neural Graphics Primitives with a
Multiresolution Hash Encoding", SIGGRAPH 2022), in pure PyTorch.

Level ``l`` is a grid of resolution ``N_l = floor(N_min * b**l)`` over ``[0, 1]^3`` with
``(N_l + 1)^3`` vertices. A level whose vertices fit in the table (``(N_l + 1)^3 <= T``) is indexed
densely (one entry per vertex, no collisions); finer levels use the paper's spatial hash
``(x * 1 XOR y * 2654435761 XOR z * 805459861) mod T``. Each point's feature at a level is the
trilinear blend of its cell's 8 corner entries; the encoding concatenates all levels.

Implementation notes (why it looks the way it does):

* All levels and all 8 corners are fetched by one ``embedding_bag`` per chunk of points
  (gather, trilinear weighting and corner sum fused; bags are the 8 corners). Rows are ordered
  level-major, so the gather walks one level's table (at most ``T`` rows, 4 MiB for
  ``T = 2**19``, ``F = 2``) at a time and stays in cache.
* The table gradient is one ``index_add_`` per chunk; with ``F = 2`` a row (two floats) is added
  as one complex number, halving the number of scattered accesses.
* Elementwise index/weight arithmetic keeps the point axis innermost (long contiguous loops)
  and uses int32 row indices when the table has fewer than 2**31 rows.
* A custom autograd function keeps only the inputs for backward and recomputes the corner
  indices there, chunk by chunk, so memory stays ``O(chunk)`` instead of ``O(N * L * 8)``.
* The hash is computed in int64. Instant-NGP multiplies in uint32; since ``T`` is a power of two
  and ``c * prime < 2**63`` for any coordinate ``c < 3.4e9``, keeping the low ``log2 T`` bits of
  the int64 result gives exactly the same index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from splatkit.errors import SplatkitError

# Instant-NGP's hash primes (Müller et al. 2022, eq. 4); the first is 1 for cache coherence.
HASH_PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridConfig:
    """Hyperparameters of the encoding.

    Defaults are those Compact-3DGS (Lee et al., CVPR 2024, ``scene/gaussian_model.py`` of
    github.com/maincold2/Compact-3DGS) uses for its colour field: 16 levels x 2 features,
    ``T = 2**19``, base resolution 16, per-level scale 1.447 (finest level ~4096).
    Give either ``per_level_scale`` or ``max_resolution`` (then ``b = (N_max/N_min)**(1/(L-1))``,
    Instant-NGP eq. 3); with neither, 1.447 is used.
    """

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: Optional[float] = None
    max_resolution: Optional[int] = None
    seed: int = 0
    # Points processed per chunk; temporaries take ~250 bytes per level per point
    # (~130 MB for 32768 points x 16 levels). CPU speed was flat between 8k and 64k.
    chunk_size: int = 32768
    init_scale: float = 1e-4  # uniform(-1e-4, 1e-4), Instant-NGP sec. 4

    def level_scale(self) -> float:
        if self.per_level_scale is not None and self.max_resolution is not None:
            raise SplatkitError("HashGridConfig: give per_level_scale or max_resolution, not both")
        if self.max_resolution is not None:
            if self.max_resolution < self.base_resolution:
                raise SplatkitError(
                    f"HashGridConfig: max_resolution {self.max_resolution} < base_resolution {self.base_resolution}")
            if self.n_levels == 1:
                return 1.0
            return math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1))
        return 1.447 if self.per_level_scale is None else float(self.per_level_scale)

    def validate(self) -> None:
        if self.n_levels < 1:
            raise SplatkitError(f"HashGridConfig: n_levels must be >= 1, got {self.n_levels}")
        if self.n_features_per_level < 1:
            raise SplatkitError(f"HashGridConfig: n_features_per_level must be >= 1, got {self.n_features_per_level}")
        if not 1 <= self.log2_hashmap_size <= 30:
            raise SplatkitError(f"HashGridConfig: log2_hashmap_size must be in [1, 30], got {self.log2_hashmap_size}")
        if self.base_resolution < 1:
            raise SplatkitError(f"HashGridConfig: base_resolution must be >= 1, got {self.base_resolution}")
        if self.chunk_size < 1:
            raise SplatkitError(f"HashGridConfig: chunk_size must be >= 1, got {self.chunk_size}")
        b = self.level_scale()
        # b >= 1 keeps resolutions non-decreasing, so dense levels form a prefix (used below).
        if not (math.isfinite(b) and b >= 1.0):
            raise SplatkitError(f"HashGridConfig: per_level_scale must be >= 1, got {b}")

    def resolutions(self) -> list[int]:
        b = self.level_scale()
        # The tiny epsilon makes N_min * b**(L-1) land on max_resolution despite rounding.
        return [int(math.floor(self.base_resolution * b**lvl + 1e-6)) for lvl in range(self.n_levels)]


def contract_to_unit_ball(x: Tensor, radius: float = 1.0) -> Tensor:
    """mip-NeRF 360 contraction, then mapped into ``[0, 1]^3`` as Compact-3DGS does.

    ``y = x / radius``; ``y`` is kept when ``|y| <= 1`` and becomes ``(2 - 1/|y|) y/|y|`` outside,
    so all of space lands in the ball of radius 2; ``y / 4 + 0.5`` then puts that ball in the unit
    cube (the ``|y| <= 1`` region spans ``[0.25, 0.75]``), matching Compact-3DGS'
    ``contract_to_unisphere`` with the aabb ``[-radius, radius]^3``.
    """
    if x.shape[-1] != 3:
        raise SplatkitError(f"contract_to_unit_ball expects [..., 3] points, got {list(x.shape)}")
    if not radius > 0:
        raise SplatkitError(f"contraction radius must be > 0, got {radius}")
    y = x / radius
    mag = y.norm(dim=-1, keepdim=True)
    # Clamped magnitude keeps the unused branch finite (and its gradient zero, not NaN) near 0.
    safe = mag.clamp_min(1.0)
    outside = (2.0 - 1.0 / safe) * (y / safe)
    y = torch.where(mag <= 1.0, y, outside)
    return y * 0.25 + 0.5


class _Plan:
    """Per-level constants of a grid, as tensors on the table's device.

    Table layout: the hashed levels come first, level ``l`` at rows ``[k T, (k+1) T)``, then the
    dense levels. Hashed offsets are multiples of ``T`` so they can be OR-ed into the x term of
    the XOR (the XOR of terms below ``T`` never touches those bits); dense offsets are added to
    the x term. Either way the 8 corner rows come out of two broadcast ops.
    """

    def __init__(self, res: list[int], table_size: int, device: torch.device):
        self.n_levels = L = len(res)
        self.table_size = T = table_size
        self.dense = [(r + 1) ** 3 <= T for r in res]
        self.n_dense = nd = sum(self.dense)  # dense levels are a prefix: resolutions never decrease
        nh = L - nd
        offsets = [0] * L
        row = nh * T
        for lvl in range(nd):
            offsets[lvl] = row
            row += (res[lvl] + 1) ** 3
        for k in range(nh):
            offsets[nd + k] = k * T
        self.offsets_list = offsets
        self.total = row
        # int32 rows halve the memory traffic of the corner arithmetic when they fit.
        self.row_dtype = torch.int32 if self.total < 2**31 else torch.int64
        mult = [[1, r + 1, (r + 1) ** 2] for r in res[:nd]] + [list(HASH_PRIMES)] * nh
        self.mult = torch.tensor(mult, dtype=torch.int64, device=device).reshape(L, 3, 1)
        self.res_f = torch.tensor(res, dtype=torch.float64, device=device)  # cast per call to x.dtype
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        self.hash_mask = T - 1


def _corners(x: Tensor, plan: _Plan) -> tuple[Tensor, Tensor, Tensor]:
    """Table rows ``[L, 8, n]``, per-axis fractions ``[L, 3, n]`` and the in-cube mask ``[n, 3]``.

    Corner ``c = 4i + 2j + k`` is vertex ``cell + (i, j, k)`` with trilinear weight
    ``wx[i] wy[j] wz[k]``, ``w[0] = 1 - frac``, ``w[1] = frac``. Points are the last axis so
    every elementwise op runs over long contiguous rows.
    """
    inside = (x >= 0) & (x <= 1)
    # NaN would become a garbage row index; it is read as 0 instead (checking would sync a GPU).
    xt = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0).t()  # [3, n]
    res = plan.res_f.to(x.dtype)[:, None, None]
    pos = xt[None] * res  # [L, 3, n]
    # A point at x == 1 would sit on vertex N_l; use cell N_l - 1 with frac 1 instead.
    cell = torch.minimum(pos.floor(), res - 1)
    frac = pos - cell
    L, n = plan.n_levels, x.shape[0]
    # Per-axis terms of the row index for vertex cell (t[:, :, 0]) and cell + 1 (t[:, :, 1]),
    # written in place rather than stacked (saves a copy).
    t = torch.empty(L, 3, 2, n, dtype=torch.int64, device=x.device)
    torch.mul(cell.long(), plan.mult, out=t[:, :, 0])
    torch.add(t[:, :, 0], plan.mult, out=t[:, :, 1])
    nd = plan.n_dense
    rows = torch.empty(L, 2, 2, 2, n, dtype=plan.row_dtype, device=x.device)
    if nd > 0:
        td = t[:nd]
        td[:, 0] += plan.offsets[:nd, None, None]
        td = td.to(plan.row_dtype)
        xy = td[:, 0, :, None] + td[:, 1, None, :]  # [nd, 2, 2, n]
        torch.add(xy[:, :, :, None], td[:, 2, None, None, :], out=rows[:nd])
    if nd < L:
        th = t[nd:].bitwise_and_(plan.hash_mask)
        th[:, 0] += plan.offsets[nd:, None, None]
        th = th.to(plan.row_dtype)
        xy = torch.bitwise_xor(th[:, 0, :, None], th[:, 1, None, :])
        torch.bitwise_xor(xy[:, :, :, None], th[:, 2, None, None, :], out=rows[nd:])
    return rows.reshape(L, 8, n), frac, inside


def _trilinear(frac: Tensor) -> Tensor:
    """Corner weights ``[L, 8, n]`` from fractions ``[L, 3, n]``."""
    w = _axis_weights(frac)
    wxy = w[:, 0, :, None] * w[:, 1, None, :]  # [L, 2, 2, n]
    return (wxy[:, :, :, None] * w[:, 2, None, None, :]).reshape(frac.shape[0], 8, frac.shape[2])


def _axis_weights(frac: Tensor) -> Tensor:
    """``[L, 3, 2, n]``: (1 - frac, frac) per axis."""
    w = torch.empty(frac.shape[0], 3, 2, frac.shape[2], dtype=frac.dtype, device=frac.device)
    torch.sub(1.0, frac, out=w[:, :, 0])
    w[:, :, 1] = frac
    return w


def _as_rows(table: Tensor) -> Tensor:
    """A view of the table with one element per row when possible (see module notes)."""
    if table.shape[1] == 2 and table.dtype in (torch.float32, torch.float64) and table.is_contiguous():
        return torch.view_as_complex(table)
    return table


def _gather(table: Tensor, rows: Tensor) -> Tensor:
    """Features ``[*rows.shape, F]`` of the given table rows."""
    view = _as_rows(table)
    got = view.index_select(0, rows.reshape(-1))
    if view.dim() == 1:
        got = torch.view_as_real(got)
    return got.reshape(*rows.shape, table.shape[1])


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, plan: _Plan, chunk: int) -> Tensor:
        n, L, F = x.shape[0], plan.n_levels, table.shape[1]
        out = torch.empty(n, L, F, dtype=table.dtype, device=table.device)
        for s in range(0, n, chunk):
            rows, frac, _ = _corners(x[s:s + chunk], plan)
            m = rows.shape[2]
            # embedding_bag fuses gather, weighting and the 8-corner sum (bags are the 8 corners,
            # so they must be contiguous: the [L, 8, m] -> [L, m, 8] copies are cheap by comparison).
            vals = torch.nn.functional.embedding_bag(
                rows.transpose(1, 2).reshape(-1, 8), table, mode="sum",
                per_sample_weights=_trilinear(frac).transpose(1, 2).reshape(-1, 8))
            out[s:s + chunk] = vals.reshape(L, m, F).transpose(0, 1)
        ctx.save_for_backward(x, table)
        ctx.plan, ctx.chunk = plan, chunk
        return out.reshape(n, L * F)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, table = ctx.saved_tensors
        plan, chunk = ctx.plan, ctx.chunk
        n, L, F = x.shape[0], plan.n_levels, table.shape[1]
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_all = grad_out.reshape(n, L, F)
        grad_table = torch.zeros_like(table) if need_t else None
        grad_x = torch.zeros_like(x) if need_x else None
        gview = _as_rows(grad_table) if need_t else None
        for s in range(0, n, chunk):
            rows, frac, inside = _corners(x[s:s + chunk], plan)
            g_lmf = g_all[s:s + chunk].transpose(0, 1).contiguous()  # [L, m, F]
            g = g_lmf.permute(2, 0, 1)  # [F, L, m]
            if need_t:
                w = _trilinear(frac)  # [L, 8, m]
                src = (w[..., None] * g_lmf[:, None]).reshape(-1, F)  # [L * 8 * m, F]
                gview.index_add_(0, rows.reshape(-1), _as_rows(src) if gview.dim() == 1 else src)
            if need_x:
                # d out / d frac_d: the axis-d weight pair (1 - f, f) differentiates to (-1, +1).
                feats = _gather(table, rows)  # [L, 8, m, F]
                gc = sum(feats[..., f] * g[f, :, None] for f in range(F)).reshape(L, 2, 2, 2, -1)
                w = _axis_weights(frac)  # [L, 3, 2, m]
                wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
                dx = ((gc[:, 1] - gc[:, 0]) * wy[:, :, None] * wz[:, None, :]).sum((1, 2))
                dy = ((gc[:, :, 1] - gc[:, :, 0]) * wx[:, :, None] * wz[:, None, :]).sum((1, 2))
                dz = ((gc[:, :, :, 1] - gc[:, :, :, 0]) * wx[:, :, None] * wy[:, None, :]).sum((1, 2))
                d = torch.stack((dx, dy, dz), dim=1)  # [L, 3, m], per unit of frac
                res = plan.res_f.to(d.dtype)[:, None, None]
                gx = (d * res).sum(0).t()  # frac = x N_l - cell
                grad_x[s:s + chunk] = (gx * inside).to(x.dtype)
        return grad_x, grad_table, None, None


class HashGrid(torch.nn.Module):
    """Multiresolution hash encoding of points in ``[0, 1]^3``: ``[N, 3] -> [N, L * F]``.

    Inputs outside the unit cube are clamped to it (bounding or contracting space is the
    caller's job, see :func:`contract_to_unit_ball`); NaN coordinates are read as 0. Gradients flow to the table and, when
    ``x.requires_grad``, to the inputs (first order only).
    """

    def __init__(self, config: Optional[HashGridConfig] = None):
        super().__init__()
        self.config = config = HashGridConfig() if config is None else config
        config.validate()
        self.resolutions = config.resolutions()
        self.table_size = 2 ** config.log2_hashmap_size
        plan = _Plan(self.resolutions, self.table_size, torch.device("cpu"))
        gen = torch.Generator().manual_seed(int(config.seed))
        init = torch.rand(plan.total, config.n_features_per_level, generator=gen)
        self.table = torch.nn.Parameter((init * 2.0 - 1.0) * config.init_scale)
        self._plan: Optional[_Plan] = None

    @property
    def n_levels(self) -> int:
        return self.config.n_levels

    @property
    def output_dim(self) -> int:
        return self.config.n_levels * self.config.n_features_per_level

    @property
    def dense_levels(self) -> list[bool]:
        """Whether each level is indexed densely (True) or hashed (False)."""
        return [(r + 1) ** 3 <= self.table_size for r in self.resolutions]

    def level_slice(self, level: int) -> slice:
        """Rows of :attr:`table` that belong to ``level``."""
        plan = self._get_plan()
        start = plan.offsets_list[level]
        return slice(start, start + min((self.resolutions[level] + 1) ** 3, self.table_size))

    def _get_plan(self) -> _Plan:
        # Rebuilt when the module moves to another device.
        if self._plan is None or self._plan.offsets.device != self.table.device:
            self._plan = _Plan(self.resolutions, self.table_size, self.table.device)
        return self._plan

    # Points per chunk at least, off the CPU (docs/benchmarks.md, profile_nerf_step_cuda).
    GPU_MIN_CHUNK = 1 << 19

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != 3:
            raise SplatkitError(f"HashGrid expects points [N, 3], got {list(x.shape)}")
        if not x.is_floating_point():
            raise SplatkitError(f"HashGrid expects floating-point points, got {x.dtype}")
        if x.device != self.table.device:
            raise SplatkitError(f"HashGrid points are on {x.device}, its table on {self.table.device}")
        x = x.to(self.table.dtype).contiguous()
        chunk = int(self.config.chunk_size)
        if x.device.type != "cpu":  # on a GPU launches cost more than memory (~4 KB per point at 16 levels)
            chunk = max(chunk, self.GPU_MIN_CHUNK)
        return _HashGridFunction.apply(x, self.table, self._get_plan(), chunk)

    def extra_repr(self) -> str:
        c = self.config
        return (f"levels={c.n_levels}, features={c.n_features_per_level}, T=2^{c.log2_hashmap_size}, "
                f"res={self.resolutions[0]}..{self.resolutions[-1]}, dense_levels={sum(self.dense_levels)}")
