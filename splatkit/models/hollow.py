"""HollowNeRF pruning (Xie, Gherardi, Pan, Huang: "HollowNeRF: Pruning Hashgrid-Based NeRFs with
Trainable Collision Mitigation", ICCV 2023, arXiv:2308.10122) for the hash-grid NeRF.

No code was published with the paper; what is here follows its text, and every constant says
whether it is the paper's or ours.

* **Saliency grid** (paper, sec. 3): a trainable coarse grid ``G`` of ``T^3`` values (``T = 64``)
  over the scene box. A point's saliency is ``p = sigmoid(trilinear(G, x))`` (the paper
  interpolates the 8 surrounding grid values and applies a sigmoid), and the hash features ``f``
  the MLP sees become ``v = p f``. Ours: the values sit on the grid's vertices (``T`` per axis,
  ``T - 1`` cells), start at ``p = 0.5`` (``hollow_init``: the paper does not say), and a sample whose ``p`` is below
  :data:`KEEP_THRESHOLD` is *pruned*: ``v = 0`` exactly and its table lookups are skipped (the
  C++ kernel takes the mask, ``cuda/cpu/nerf_cpu.cpp``).
* **Soft zero-skip gate** (paper): the density is multiplied by ``tanh(alpha ||v||_2)`` so that
  ``v = 0`` decodes to zero density whatever the MLP's biases; ``alpha = 1e4`` early in training and
  ``1e5`` later (paper). Ours: the gate's gradient reaches the saliency, not the hash features
  (:func:`zero_skip_gate` says why). The paper switches after 1000 epochs of torch-ngp's trainer of 300k steps;
  with torch-ngp's 100 iterations per epoch on the Blender scenes that is a third of the run, our
  reading, so we switch at ``steps / 3``.
* **ADMM pruner** (paper): ``min L(W, H, G)`` subject to ``||S_sig(G)||_1 <= C`` via the augmented
  Lagrangian ``L + gamma (||S_sig(G)||_1 - C) + rho/2 [||S_sig(G)||_1 - C]_+^2``: gradient descent on
  the field, then dual ascent ``gamma <- [gamma + rho (||S_sig(G)||_1 - C)]_+`` every step. The
  paper's budget is ``C = 0.04``, which only makes sense for the L1 mass normalised by the number
  of grid values: ``||S_sig(G)||_1`` here is the *mean* of ``sigmoid(G)`` (so the budget is a
  fraction of the box). ``rho`` is not given in the paper (:data:`RHO`, ours): on the synthetic
  scene the render loss's gradients on the saliency logits were ~1e-9 (99th percentile, first 80
  steps; they scale with the hash features, which start at 1e-4), while the ADMM terms give each
  logit ``(gamma + ...) p (1 - p) / T^3``; with rho = 1e-2 .. 1 gamma outgrew the render signal
  within a few dozen steps, the mass fell far below the budget and with it most of the scene (a
  300-step run at rho = 1 pruned 99.9% of the cells, test PSNR 9.9 dB); 1e-4 keeps gamma in range. The paper trains
  ``G`` with the rest in one Adam at an initial LR of 1e-2 over 300k steps; ours: its own LR
  (``hollow_lr``, default 0.05) on the nerf LR schedule, since at 1e-2 a run of a few thousand
  steps barely moves it.
* **Pruned voxels** (ours, exact): a grid cell whose 8 corner values are all below the threshold's
  logit has ``p < KEEP_THRESHOLD`` everywhere inside it (trilinear weights are convex and the
  sigmoid is monotone), so every sample there is pruned and has zero density: such cells are
  AND-ed out of the occupancy grid (:func:`occupancy_keep`: no samples are marched there), and
  hash-table rows that only points in such cells can reach are dropped at export
  (:func:`reached_rows`); both leave every rendered value unchanged.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from splatkit.errors import SplatkitError

# -- constants --------------------------------------------------------------------------------------
RESOLUTION = 64  # saliency grid T^3, T = 64: the paper's default (sec. 4)
BUDGET = 0.04  # C = 0.04: the paper's sparsity budget (sec. 4), here as a mean of sigmoid(G)
GATE_ALPHA_EARLY = 1e4  # paper: alpha = 1e4 for the first 1000 epochs ...
GATE_ALPHA_LATE = 1e5  # ... then 1e5 (paper)
GATE_SWITCH = 1.0 / 3.0  # ours: our reading of "1000 epochs" of torch-ngp's 300k steps (module notes)
KEEP_THRESHOLD = 1e-2  # ours: p below this counts as pruned (v = 0, lookups skipped)
INIT_SALIENCY = 0.5  # ours: p everywhere at the start (0.5: the sigmoid's steepest point)
RHO = 1e-4  # ours: the augmented Lagrangian's penalty and dual step (not in the paper; see the notes)
# Ours: with the decoupled solver the Lagrangian's gradient is taken w.r.t. the *sum* of the grid's
# sigmoids per logit (no 1/T^3) and applied in logit units per unit of LR, so gamma ~ 1 is a push
# of the size of one Adam step; 1e-2 lets gamma reach that within ~200 steps of a 0.4 excess.
RHO_DECOUPLED = 1e-2
RHO_BY_SOLVER = {"adam": RHO, "decoupled": RHO_DECOUPLED}
# Ours: float slack when deciding that a whole cell is pruned (in logit units), so that float
# rounding in the trilinear blend never keeps a sample inside a cell called pruned.
_CELL_SLACK = 1e-4


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class SaliencyGrid(torch.nn.Module):
    """``G``: ``resolution^3`` trainable logits on the vertices of a grid over ``[0, 1]^3``, plus the
    ADMM dual variable ``gamma`` and the gate's current ``alpha`` (buffers: checkpoints carry them)."""

    def __init__(self, resolution: int = RESOLUTION, threshold: float = KEEP_THRESHOLD,
                 init: float = INIT_SALIENCY):
        super().__init__()
        if resolution < 2:
            raise SplatkitError(f"HollowNeRF saliency grid resolution must be >= 2, got {resolution}")
        if not 0 < threshold < 1:
            raise SplatkitError(f"HollowNeRF keep threshold must be in (0, 1), got {threshold}")
        if not threshold < init < 1:
            raise SplatkitError(f"HollowNeRF initial saliency must be in (threshold, 1), got {init}")
        self.resolution = int(resolution)
        self.threshold = float(threshold)
        self.logit_threshold = _logit(self.threshold)
        self.logits = torch.nn.Parameter(torch.full((resolution,) * 3, _logit(init)))
        self.register_buffer("gamma", torch.zeros((), dtype=torch.float64))
        self.register_buffer("alpha", torch.tensor(GATE_ALPHA_EARLY, dtype=torch.float32))

    # -- the field's view -------------------------------------------------------------------------
    def interpolate(self, u: Tensor) -> Tensor:
        """Trilinear blend of the logits at points ``u [N, 3]`` in ``[0, 1]^3`` (clamped; NaN read
        as 0), differentiable w.r.t. the logits: ``[N]``."""
        return trilinear(self.logits, u)

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(p, keep)``: saliency ``sigmoid(trilinear(G, u))`` and whether the sample is kept
        (``p >= threshold``, decided on the logit so that it agrees with :meth:`kept_cells`)."""
        z = self.interpolate(u)
        return torch.sigmoid(z), z.detach() >= self.logit_threshold

    # -- the pruner's view ------------------------------------------------------------------------
    def mass(self) -> Tensor:
        """``||S_sig(G)||_1`` normalised by the number of grid values (the paper's budget is 0.04)."""
        return torch.sigmoid(self.logits).mean()

    @torch.no_grad()
    def kept_cells(self) -> Tensor:
        """``[T-1]^3`` bool: cells where some point may have ``p >= threshold`` (max corner logit)."""
        g = self.logits.detach()
        m = g.unfold(0, 2, 1).unfold(1, 2, 1).unfold(2, 2, 1).amax(dim=(-3, -2, -1))
        return m >= self.logit_threshold - _CELL_SLACK * (1.0 + abs(self.logit_threshold))

    @torch.no_grad()
    def needed_vertices(self) -> Tensor:
        """``[T]^3`` bool: corners of kept cells (the only values a kept point ever reads)."""
        k = self.kept_cells().float()[None, None]
        S = self.resolution
        grown = torch.nn.functional.max_pool3d(torch.nn.functional.pad(k, (1, 1) * 3), 2, stride=1)
        return grown[0, 0, :S, :S, :S] > 0

    def set_alpha(self, step: int, steps: int) -> None:
        """The gate's schedule (paper: 1e4, then 1e5; switch at a third of the run, ours)."""
        self.alpha.fill_(GATE_ALPHA_EARLY if step < int(steps * GATE_SWITCH) else GATE_ALPHA_LATE)


def trilinear(values: Tensor, u: Tensor) -> Tensor:
    """Trilinear interpolation of vertex values ``[S, S, S]`` (vertex ``i`` at ``i / (S - 1)``) at
    points ``u [N, 3]`` (clamped to the cube, NaN read as 0); differentiable w.r.t. ``values``."""
    S = values.shape[0]
    pos = torch.nan_to_num(u.detach(), nan=0.0).clamp(0.0, 1.0).to(values.dtype) * (S - 1)
    cell = pos.floor().clamp(max=S - 2)
    f = pos - cell
    c = cell.long()
    flat = values.reshape(-1)
    out = torch.zeros(u.shape[0], dtype=values.dtype, device=u.device)
    for i in (0, 1):
        wx = f[:, 0] if i else 1 - f[:, 0]
        for j in (0, 1):
            wy = f[:, 1] if j else 1 - f[:, 1]
            for k in (0, 1):
                wz = f[:, 2] if k else 1 - f[:, 2]
                idx = ((c[:, 0] + i) * S + (c[:, 1] + j)) * S + (c[:, 2] + k)
                out = out + wx * wy * wz * flat[idx]
    return out


def zero_skip_gate(v: Tensor, p: Tensor, alpha: Tensor | float) -> Tensor:
    """The paper's soft zero-skip gate ``tanh(alpha ||v||_2)`` per row of ``v = p f [N, D]`` (0 for
    ``v = 0``). Its value is the paper's; its gradient (ours) reaches the saliency ``p [N]`` only,
    never the hash features ``f``: ``d gate / d p = alpha (1 - gate^2) ||f||``. Through ``f`` the
    gate's gradient is ``alpha (1 - gate^2) v / ||v||``, ~1e4 times the render loss's own while the
    features are small, and it steered the table's Adam updates: with the full gradient HollowNeRF
    at 2^17 scored 0.38 / 0.94 dB below the plain 2^17 grid (seeds 0 / 1, 300 steps, synthetic
    scene), with this one 0.00 / 0.00 (docs/benchmarks.md, bench_nerf_hollow)."""
    norm_f = torch.linalg.vector_norm(v.detach(), dim=-1) / p.detach().clamp_min(torch.finfo(p.dtype).tiny)
    return torch.tanh(alpha * p * norm_f)


# -- ADMM ---------------------------------------------------------------------------------------------
def admm_penalty(mass: Tensor, gamma: Tensor, budget: float, rho: float) -> Tensor:
    """The augmented-Lagrangian terms ``gamma (m - C) + rho/2 [m - C]_+^2`` (paper)."""
    excess = mass - budget
    return gamma.to(mass.dtype) * excess + 0.5 * rho * torch.relu(excess) ** 2


@torch.no_grad()
def decoupled_step(saliency: "SaliencyGrid", lr: float, budget: float, rho: float) -> None:
    """The pruner's step beside Adam (ours, ``hollow_solver=decoupled``), after Adam's step on the
    render loss: ``G <- G - lr (gamma + rho [m - C]_+) p (1 - p)``, the augmented Lagrangian's
    gradient per logit with the mass taken as a sum (T^3 times the paper's mean), the way AdamW
    decouples weight decay from Adam's normalisation. Why: inside Adam the Lagrangian's gradient
    (the same in every cell) dwarfs the render loss's (~1e-9) and Adam's per-value normalisation
    turns it into the same downward step everywhere, squeezing the grid uniformly instead of
    pruning (measured: 7% of the values above 0.5 at budget 0.1). Beside Adam, a cell where the
    render loss keeps asking for its features gets Adam's full step back against the pull, while a
    cell the loss never reaches (empty space, the inside of objects) only feels the pull. Measured:
    that holds on a toy loss of the saliency alone (tests), not on the NeRF, where the hash features
    grow as p shrinks and a 1500-step run lost 2.3 dB against the plain grid (docs/benchmarks.md,
    bench_nerf_hollow), so the default stays the paper's single Adam."""
    g = saliency.logits
    p = torch.sigmoid(g)
    excess = float(p.mean()) - budget
    pull = float(saliency.gamma) + rho * max(excess, 0.0)
    if pull > 0.0:
        g.sub_(lr * pull * p * (1.0 - p))


@torch.no_grad()
def dual_step(gamma: Tensor, mass: Tensor, budget: float, rho: float) -> None:
    """Dual ascent in place: ``gamma <- [gamma + rho (m - C)]_+`` (paper)."""
    gamma.copy_((gamma + rho * (mass.double() - budget)).clamp_min(0.0))


# -- pruned voxels in the occupancy grid ----------------------------------------------------------------
def _box_any(kept: Tensor, lo: list[Tensor], hi: list[Tensor]) -> Tensor:
    """Whether any ``kept [A, B, C]`` cell lies in the boxes ``[lo_a, hi_a]`` (inclusive; per-axis
    index vectors, broadcast as an outer product), from a 3-D summed-area table."""
    P = torch.nn.functional.pad(kept.long(), (1, 0, 1, 0, 1, 0)).cumsum(0).cumsum(1).cumsum(2)
    x0, y0, z0 = lo[0][:, None, None], lo[1][None, :, None], lo[2][None, None, :]
    x1, y1, z1 = hi[0][:, None, None] + 1, hi[1][None, :, None] + 1, hi[2][None, None, :] + 1
    total = (P[x1, y1, z1] - P[x0, y1, z1] - P[x1, y0, z1] - P[x1, y1, z0]
             + P[x0, y0, z1] + P[x0, y1, z0] + P[x1, y0, z0] - P[x0, y0, z0])
    return total > 0


def _cell_range(lo_u: Tensor, hi_u: Tensor, cells: int) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the ``cells`` equal cells of ``[0, 1]`` that ``[lo_u, hi_u]`` touches, widened by a
    hundredth of a cell for float safety: ``(first, last, empty)`` (``empty``: wholly outside)."""
    a = torch.floor(lo_u * cells - 1e-2).long()
    b = torch.floor(hi_u * cells + 1e-2).long()
    empty = (b < 0) | (a > cells - 1)
    return a.clamp(0, cells - 1), b.clamp(0, cells - 1), empty


@torch.no_grad()
def occupancy_keep(saliency: SaliencyGrid, aabb: Tensor, occ_aabbs: Tensor, res: tuple[int, int, int]) -> Tensor:
    """``[L, X, Y, Z]`` bool: occupancy cells (nerfacc's layout, level boxes ``occ_aabbs [L, 6]``)
    that overlap some kept saliency cell. The others hold only pruned samples or lie outside the
    field's box (zero density both ways), so AND-ing this into the occupancy grid is exact."""
    kept = saliency.kept_cells()
    C = kept.shape[0]
    box = aabb.to(kept.device).float()
    out = []
    for lvl in range(occ_aabbs.shape[0]):
        lo, hi, empty = [], [], None
        for a in range(3):
            mn, mx = float(occ_aabbs[lvl, a]), float(occ_aabbs[lvl, a + 3])
            edges = mn + (mx - mn) * torch.arange(res[a] + 1, dtype=torch.float64, device=kept.device) / res[a]
            u = (edges - float(box[a])) / float(box[a + 3] - box[a])
            first, last, e = _cell_range(u[:-1], u[1:], C)
            lo.append(first)
            hi.append(last)
            shape = [1, 1, 1]
            shape[a] = res[a]
            e = e.reshape(shape)
            empty = e if empty is None else (empty | e)
        out.append(_box_any(kept, lo, hi) & ~empty)
    return torch.stack(out)


# -- table rows reached from kept cells -----------------------------------------------------------------
def _vertex_rows(v: Tensor, res: int, offset: int, dense: bool, table_size: int) -> Tensor:
    """Table rows of integer vertices ``v [n, 3]`` of a level (hashgrid.py's layout and hash)."""
    from splatkit.models.hashgrid import HASH_PRIMES

    if dense:
        side = res + 1
        return offset + v[:, 0] + v[:, 1] * side + v[:, 2] * side * side
    mask = table_size - 1
    h = (v[:, 0] * HASH_PRIMES[0]) & mask
    h = h ^ ((v[:, 1] * HASH_PRIMES[1]) & mask)
    h = h ^ ((v[:, 2] * HASH_PRIMES[2]) & mask)
    return offset + h


@torch.no_grad()
def reached_rows(grid, kept_cells: Tensor, chunk: int = 1 << 21) -> Tensor:
    """``[rows]`` bool: hash-table rows that some point in a kept saliency cell reads (the 8 corners
    of its cell at every level). Rows left False are only reached from pruned cells, whose
    features are never used: dropping them changes nothing. Each level stops as soon as all its
    rows are reached (fine levels saturate after a small part of the kept region)."""
    plan = grid._get_plan()
    reached = torch.zeros(grid.table.shape[0], dtype=torch.bool)
    C = kept_cells.shape[0]
    cells = kept_cells.nonzero().cpu()
    if not len(cells):
        return reached
    # A fixed shuffle spreads the first chunks over the whole kept region (faster saturation).
    cells = cells[torch.randperm(len(cells), generator=torch.Generator().manual_seed(0))]
    lo_u, hi_u = cells.double() / C, (cells + 1).double() / C
    for lvl, res in enumerate(grid.resolutions):
        dense = plan.dense[lvl]
        offset = plan.offsets_list[lvl]
        n_rows = (res + 1) ** 3 if dense else plan.table_size
        rows_l = reached[offset:offset + n_rows]
        # Level cells touched per saliency cell, widened for float safety; vertices: cells + 1.
        first = torch.floor(lo_u * res - 1e-2).long().clamp(0, res - 1)
        last = torch.floor(hi_u * res + 1e-2).long().clamp(0, res - 1) + 1
        span = last - first + 1  # vertices per axis [K, 3]
        m = int(span.max())
        off = torch.stack(torch.meshgrid(*(torch.arange(m),) * 3, indexing="ij"), -1).reshape(-1, 3)
        per = max(1, chunk // len(off))
        for s in range(0, len(cells), per):
            f, sp = first[s:s + per], span[s:s + per]
            v = f[:, None, :] + off[None]
            ok = (off[None] < sp[:, None, :]).all(-1)
            rows = _vertex_rows(v[ok], res, 0, dense, plan.table_size)  # relative to the level's first row
            rows_l[rows] = True
            if bool(rows_l.all()):
                break
    return reached


@torch.no_grad()
def pruned_counts(grid, saliency: SaliencyGrid) -> dict[str, int]:
    """What a pruned export keeps: hash-table rows, saliency values and their parameter counts."""
    kept = saliency.kept_cells()
    rows = reached_rows(grid, kept)
    needed = saliency.needed_vertices()
    F = grid.table.shape[1]
    return {"table_rows": int(rows.sum()), "table_rows_total": int(rows.numel()),
            "table_params": int(rows.sum()) * F, "saliency_params": int(needed.sum()),
            "kept_cells": int(kept.sum()), "cells": int(kept.numel())}


def check_settings(budget: float, resolution: int, rho: float, threshold: float, init: float) -> None:
    if not 0 < budget < 1:
        raise SplatkitError(f"hollow_budget must be in (0, 1) (a fraction of the saliency grid), got {budget}")
    if resolution < 2:
        raise SplatkitError(f"hollow_resolution must be >= 2, got {resolution}")
    if not rho > 0 or not math.isfinite(rho):
        raise SplatkitError(f"hollow_rho must be positive, got {rho}")
    if not 0 < threshold < 1:
        raise SplatkitError(f"hollow_threshold must be in (0, 1), got {threshold}")
    if not threshold < init < 1:
        raise SplatkitError(f"hollow_init must be in (hollow_threshold, 1), got {init}")
