"""How many hash-grid vertices a trained NeRF's training samples touch, level by level, against the
table size (issue #13, HollowNeRF): what collision mitigation by pruning space has to work with.

Usage: .venv/bin/python scripts/nerf_hash_load.py RUN [RUN ...] [--views train] [--every 1]
           [--weight-eps 1e-3] [--threads 2] [--section nerf_hash_load] [--write]

For each run folder (a ``--method nerf`` run) the training views' rays are marched as a training
step marches them (occupancy grid, up to where each ray turns opaque, jittered start), and for each
level of the hash grid the script counts the distinct grid vertices the samples' trilinear corners
touch: all samples, and those whose volume-rendering weight is at least ``--weight-eps`` (the ones
the photometric loss trains in earnest). A hashed level of ``T`` rows serving ``V`` such vertices
has load ``V / T``; with a uniform hash a vertex has its row to itself with probability
``exp(-V / T)`` (Poisson). HollowNeRF (Xie et al., ICCV 2023) mitigates collisions by zeroing the
features of pruned space, so that only unpruned vertices compete for rows: it can lower ``V`` only
by the vertices of samples in cells it prunes. If the kept samples alone overload a level, no
pruning of the rest gives that level back its collision-free rows. The last column counts the
vertices of every occupied occupancy-grid cell, estimated as the occupied fraction of the box
times the level's vertices: what a march that did not stop at opaque surfaces would reach (the
space behind surfaces, which our early termination already leaves untrained).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import machine_info, write_section  # noqa: E402

SECTION = "nerf_hash_load"
# The 8 corners of a cell, corner c = 4i + 2j + k (the order of splatkit.models.hashgrid._corners).
_CORNERS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.long)


def vertex_keys(u: torch.Tensor, res: int) -> torch.Tensor:
    """``[8 n]`` int64 ids of the grid vertices at the 8 corners of each point's cell at resolution
    ``res`` (points in ``[0, 1]^3``; the cell convention of :mod:`splatkit.models.hashgrid`)."""
    pos = u.clamp(0.0, 1.0).double() * res
    cell = torch.minimum(pos.floor(), torch.tensor(float(res - 1), dtype=pos.dtype)).long()
    v = cell[:, None, :] + _CORNERS[None]  # [n, 8, 3]
    n1 = res + 1
    return ((v[..., 0] * n1 + v[..., 1]) * n1 + v[..., 2]).reshape(-1)


class _UniqueCounter:
    """Distinct int64 ids seen so far, merged chunk by chunk (sorted unique)."""

    def __init__(self) -> None:
        self.ids = torch.empty(0, dtype=torch.long)

    def add(self, keys: torch.Tensor) -> None:
        self.ids = torch.unique(torch.cat([self.ids, torch.unique(keys)]))

    def __len__(self) -> int:
        return int(self.ids.numel())


def _samples(model, rays_o: torch.Tensor, rays_d: torch.Tensor, chunk_rays: int, seed: int, label: str):
    """``(points in [0, 1]^3, volume-rendering weights)`` per chunk of rays, sampled as a training
    step samples them; the same seed gives the same samples (the two passes of :func:`hash_load`)."""
    from splatkit.render import volume

    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for s in range(0, rays_o.shape[0], chunk_rays):
        ro, rd = rays_o[s:s + chunk_rays], rays_d[s:s + chunk_rays]
        t_start, t_end = model.segments(ro, rd)
        t_start = t_start + torch.rand(t_start.shape, generator=gen) * model.step_size  # a step's jitter
        t_end = model.opaque_from(ro, rd, t_start, t_end)
        ps = model.march(ro, rd, t_start, t_end)
        if ps.ray_indices.numel():
            x, _ = model.sample_points(ro, rd, ps)
            sigma = model.field.density(x)
            w = volume.render_torch(sigma, sigma[:, None], ps.t_starts, ps.t_ends, ps.ray_indices, ps.packed_info,
                                    want_weights=True).weights
            yield model.field.normalize(x)[0], w
        done = min(rays_o.shape[0], s + chunk_rays)
        rate = done / max(time.time() - t0, 1e-9)
        print(f"\r{label}: {done:,}/{rays_o.shape[0]:,} rays, ETA {(rays_o.shape[0] - done) / rate:4.0f} s",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def _cells(u: torch.Tensor, res: int) -> torch.Tensor:
    """Flat index of each point's cell in a ``res^3`` grid over ``[0, 1]^3``."""
    c = (u.clamp(0.0, 1.0) * res).long().clamp(max=res - 1)
    return (c[:, 0] * res + c[:, 1]) * res + c[:, 2]


def cells_holding(mass: torch.Tensor, share: float) -> torch.Tensor:
    """``[cells]`` bool: the fewest cells whose ``mass`` adds up to at least ``share`` of the total
    (the heaviest first)."""
    sorted_mass, order = torch.sort(mass, descending=True)
    cum = torch.cumsum(sorted_mass, 0)
    n_keep = min(int(torch.searchsorted(cum, share * float(cum[-1]))) + 1, mass.numel())
    keep = torch.zeros(mass.numel(), dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep


@torch.no_grad()
def hash_load(run_dir: Path, split: str = "train", every: int = 1, weight_eps: tuple[float, ...] = (1e-3,),
              saliency: tuple[int, ...] = (), keep_weight: float = 0.99, min_log2_t: int = 17, chunk_rays: int = 8192,
              seed: int = 0) -> dict:
    """Per level: resolution, vertices touched by all samples and by those of weight >= each of
    ``weight_eps``, the occupied-cell estimate, and, per saliency resolution S, the vertices of the
    samples (weight >= the smallest threshold) in the fewest S^3 cells that hold ``keep_weight`` of
    the rays' total weight: what an ideal pruning at that resolution, leaving the renders nearly as
    they are, would leave competing for rows (levels hashed at ``2^min_log2_t`` only). Plus the
    run's table size and sample counts."""
    from splatkit.models.nerf_field import camera_rays
    from splatkit.train.run import Run

    run = Run.open(run_dir)
    model, _ = run.load_model()
    if not hasattr(model, "field"):
        raise SystemExit(f"{run_dir}: not a NeRF run (method nerf)")
    model.eval()
    field = model.field
    res_list = list(field.grid.resolutions)
    plan = field.grid._get_plan()
    scene, _, positions = run.views(split)
    cams = scene.cameras[positions]
    W, H = int(cams.widths[0]), int(cams.heights[0])
    rays_o, rays_d, _ = camera_rays(cams.viewmats("cpu"), cams.intrinsics("cpu"), W, H)
    rays_o, rays_d = rays_o.reshape(-1, 3)[::every], rays_d.reshape(-1, 3)[::every]
    lo = min(weight_eps)
    t0 = time.time()
    mass = {S: torch.zeros(S ** 3, dtype=torch.float64) for S in saliency}
    if saliency:  # pass 1: each cell's share of the rays' weight
        for u, w in _samples(model, rays_o, rays_d, chunk_rays, seed, f"{run_dir.name} (cells)"):
            for S in saliency:
                mass[S].index_add_(0, _cells(u, S), w.double())
    core = {S: cells_holding(mass[S], keep_weight) for S in saliency}
    hashed = [lvl for lvl, res in enumerate(res_list) if (res + 1) ** 3 > 2 ** min_log2_t]
    all_v = [_UniqueCounter() for _ in res_list]
    hot_v = [[_UniqueCounter() for _ in res_list] for _ in weight_eps]
    kept_v = {S: {lvl: _UniqueCounter() for lvl in hashed} for S in saliency}
    n_samples, n_hot = 0, [0] * len(weight_eps)
    for u, w in _samples(model, rays_o, rays_d, chunk_rays, seed, run_dir.name):
        n_samples += int(u.shape[0])
        hots = [w >= eps for eps in weight_eps]
        for e, hot in enumerate(hots):
            n_hot[e] += int(hot.sum())
        in_core = {S: core[S][_cells(u, S)] & (w >= lo) for S in saliency}
        for lvl, res in enumerate(res_list):
            keys = vertex_keys(u, res).reshape(-1, 8)
            all_v[lvl].add(keys.reshape(-1))
            for e, hot in enumerate(hots):
                hot_v[e][lvl].add(keys[hot].reshape(-1))
            if lvl in hashed:
                for S in saliency:
                    kept_v[S][lvl].add(keys[in_core[S]].reshape(-1))
    occ = float(model.estimator.binaries.float().mean())
    levels = [{"res": res, "all": len(all_v[lvl]), "hot": [len(h[lvl]) for h in hot_v],
               "kept": {S: len(kept_v[S][lvl]) for S in saliency} if lvl in hashed else {},
               "occupied": round(occ * (res + 1) ** 3)} for lvl, res in enumerate(res_list)]
    return {"run": str(run_dir), "table_size": plan.table_size, "levels": levels, "samples": n_samples,
            "hot_samples": n_hot, "rays": int(rays_o.shape[0]), "occupied_fraction": occ,
            "kept_cells": {S: float(core[S].float().mean()) for S in saliency},
            "keep_weight": keep_weight,
            "hollow": field.saliency is not None, "seconds": time.time() - t0}


def _load(v: int, t: int) -> str:
    return f"{v / t:.2f} ({100 * math.exp(-v / t):.0f}%)"


def table(result: dict, sizes: list[int], weight_eps: list[float]) -> list[str]:
    """Vertices per level (all samples, then per weight threshold), the load of the first and last
    thresholds' vertices on tables of each size, and what ideal pruning at each saliency resolution
    would leave on the smallest table."""
    shown = sorted({0, len(weight_eps) - 1})
    lo, k0 = min(weight_eps), min(sizes)
    salient = list(result["kept_cells"])
    head = ("| level | resolution | vertices, all samples | "
            + " | ".join(f"w >= {e:g}" for e in weight_eps) + " | "
            + " | ".join(f"load at 2^{k}, w >= {weight_eps[e]:g}" for e in shown for k in sizes)
            + "".join(f" | w >= {lo:g} in the {S}^3 cells holding {100 * result['keep_weight']:g}% of the weight: "
                      f"vertices, load at 2^{k0}" for S in salient)
            + " | vertices of occupied cells (about) |")
    lines = [head, "|" + "---:|" * (4 + len(weight_eps) + len(shown) * len(sizes) + len(salient))]
    for lvl, lv in enumerate(result["levels"]):
        dense = (lv["res"] + 1) ** 3
        loads = [("dense" if dense <= 2 ** k else _load(lv["hot"][e], 2 ** k)) for e in shown for k in sizes]
        kept = [(f"{lv['kept'][S]:,}, {_load(lv['kept'][S], 2 ** k0)}" if S in lv["kept"] else "dense")
                for S in salient]
        lines.append(f"| {lvl} | {lv['res']} | {lv['all']:,} | " + " | ".join(f"{h:,}" for h in lv["hot"]) + " | "
                     + " | ".join(loads + kept) + f" | {lv['occupied']:,} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run folders of --method nerf runs")
    ap.add_argument("--views", default="train", choices=["train", "test"])
    ap.add_argument("--every", type=int, default=1, help="every n-th ray of the views (1: all pixels)")
    ap.add_argument("--weight-eps", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1],
                    help="volume-rendering weight thresholds: a column of vertices per value")
    ap.add_argument("--sizes", type=int, nargs="+", default=[17, 19], help="log2 table sizes for the load columns")
    ap.add_argument("--saliency", type=int, nargs="*", default=[64, 256],
                    help="saliency-grid resolutions for the ideal-pruning columns (HollowNeRF: 64)")
    ap.add_argument("--keep-weight", type=float, default=0.99,
                    help="ideal pruning keeps the fewest cells holding this share of the rays' weight")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--section", default=SECTION)
    ap.add_argument("--note", default="", help="a paragraph added under the tables (what they show)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = [
        "## NeRF hash-table load: vertices the training samples touch, per level",
        "",
        f"`python scripts/nerf_hash_load.py {' '.join(str(r) for r in args.runs)} --views {args.views} --every "
        f"{args.every} --weight-eps {' '.join(f'{e:g}' for e in args.weight_eps)} --sizes {' '.join(map(str, args.sizes))} --saliency {' '.join(map(str, args.saliency))} --keep-weight {args.keep_weight:g} --write` on "
        f"{machine_info()}. The {args.views} views' rays (one pixel in {args.every}) marched as a training step "
        "marches them (occupancy grid, jittered start, stopped where each ray turns opaque); per level, the "
        "distinct grid vertices at the trilinear corners of all samples and of those whose volume-rendering "
        "weight w is at least each threshold (the larger the threshold, the more only what the pixels are made "
        "of). Load = those vertices / table rows, and in brackets the share of them with a row to themselves "
        "under a uniform hash (exp(-load)); dense levels need no hash. Last column: the vertices of every occupied occupancy cell (occupied fraction x the level's "
        "vertices), what a march that did not stop at opaque surfaces would reach. HollowNeRF's pruning can take "
        "out of the competition for rows only the vertices of samples in cells it prunes: the columns 'in the "
        "S^3 cells holding ...' count what an ideal pruning with a saliency grid of S^3 cells would leave if it "
        f"kept the fewest cells that hold {100 * args.keep_weight:g}% of the training rays' volume-rendering weight "
        "(HollowNeRF's grid: 64^3), and its load on the smallest table.",
    ]
    for run in args.runs:
        r = hash_load(run, args.views, args.every, tuple(args.weight_eps), tuple(args.saliency), args.keep_weight,
                      min(args.sizes))
        parts += ["", f"`{run}` ({'HollowNeRF, ' if r['hollow'] else ''}T = 2^{int(math.log2(r['table_size']))}): "
                  f"{r['rays']:,} rays, {r['samples']:,} samples ("
                  + ", ".join(f"{n:,} with w >= {e:g}" for n, e in zip(r["hot_samples"], args.weight_eps)) + "), "
                  f"{100 * r['occupied_fraction']:.1f}% of the occupancy grid's cells occupied"
                  + "".join(f"; {100 * f:.2f}% of the {S}^3 cells hold {100 * args.keep_weight:g}% of the rays' weight"
                            for S, f in r["kept_cells"].items()) + f"; {r['seconds']:.0f} s.",
                  ""] + table(r, args.sizes, args.weight_eps)
    if args.note:
        parts += ["", args.note]
    text = "\n".join(parts)
    print(text)
    if args.write:
        print(f"wrote {write_section(args.section, text)}")


if __name__ == "__main__":
    main()
