"""Benchmark the rasterizer backends: median forward+backward time at 400x300.

Scene: a *fitted-like* Gaussian cloud, not a random one. We ray-trace the synthetic DTU-like
scene (``splatkit.data.synthetic.render_synthetic_scene``, 9 views at 400x300) and back-project
every pixel that has a depth (object and table) into a world point. Each point becomes a flat
Gaussian lying in the surface:

* normal from the cross product of the neighbouring back-projected points (pixels at depth
  discontinuities, where that normal is meaningless, are dropped);
* N points drawn at random from the pool of M candidates; each then stands for ``M / N`` source
  pixels, so its in-plane standard deviation is ``0.5 * footprint * sqrt(M / N)`` (footprint =
  depth / focal, the pixel's size on the surface) and its normal one a tenth of that;
  fewer Gaussians are bigger, as after fitting, and the surface stays covered;
* colour from the pixel (SH DC term), small random higher SH bands (degree 3), opacity uniform in
  [0.5, 0.98].

The timed render is from a held-out camera of the same rig with SH degree 3, an MSE-like loss on
RGB and alpha, ``backward()`` through projection and SH to means/quats/scales/opacities/SH.
Numbers are medians over several repetitions after a warm-up, for the ``cpu`` backend with
torch's thread count and with one thread (which needs only one free core, so it is the figure
least disturbed by other jobs on a shared machine), and for the ``torch`` reference up to 50k
Gaussians (beyond that it takes minutes per step). ``--write`` updates the section of ``docs/benchmarks.md`` between
the ``bench_rasterizer`` markers (creating the file if needed).

Usage: ``python scripts/bench_rasterizer.py [--sizes 10000 50000 200000] [--reps 7] [--write]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splatkit.data.synthetic import render_synthetic_scene  # noqa: E402
from splatkit.render import rasterization, rgb_to_sh  # noqa: E402
from benchdoc import machine_info, write_section  # noqa: E402  (scripts/ is on sys.path)

WIDTH, HEIGHT = 400, 300
N_VIEWS = 9
RENDER_VIEW = 4  # middle of the rig; its pixels are not back-projected
SH_DEGREE = 3
# The torch reference keeps [tiles, pixels, Gaussians] blocks for autograd: past this many
# Gaussians a single fwd+bwd takes minutes on a small machine.
TORCH_MAX_GAUSSIANS = 50_000
SECTION = "bench_rasterizer"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _quat_from_frame(t1: np.ndarray, t2: np.ndarray, n: np.ndarray) -> np.ndarray:
    """wxyz quaternions of rotation matrices with columns (t1, t2, n)."""
    R = np.stack([t1, t2, n], axis=-1)
    # Shepperd's method on the trace-largest branch, vectorised.
    m = R
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)
    q = np.zeros((len(R), 4))
    for case in range(4):
        s = k == case
        if not np.any(s):
            continue
        a = m[s]
        if case == 0:
            r = np.sqrt(1 + tr[s]) * 2
            q[s] = np.stack([r / 4, (a[:, 2, 1] - a[:, 1, 2]) / r, (a[:, 0, 2] - a[:, 2, 0]) / r,
                             (a[:, 1, 0] - a[:, 0, 1]) / r], 1)
        elif case == 1:
            r = np.sqrt(1 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2]) * 2
            q[s] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / r, r / 4, (a[:, 0, 1] + a[:, 1, 0]) / r,
                             (a[:, 0, 2] + a[:, 2, 0]) / r], 1)
        elif case == 2:
            r = np.sqrt(1 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2]) * 2
            q[s] = np.stack([(a[:, 0, 2] - a[:, 2, 0]) / r, (a[:, 0, 1] + a[:, 1, 0]) / r, r / 4,
                             (a[:, 1, 2] + a[:, 2, 1]) / r], 1)
        else:
            r = np.sqrt(1 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1]) * 2
            q[s] = np.stack([(a[:, 1, 0] - a[:, 0, 1]) / r, (a[:, 0, 2] + a[:, 2, 0]) / r,
                             (a[:, 1, 2] + a[:, 2, 1]) / r, r / 4], 1)
    return q


def surface_candidates(scene, skip_view: int):
    """Back-projected pixels of every view but ``skip_view``: points, normals, footprints, colours."""
    pts, nrm, foot, col = [], [], [], []
    cams = scene.cameras
    for i in range(len(cams)):
        if i == skip_view:
            continue
        z = scene.depths[i].astype(np.float64)
        H, W = z.shape
        K = cams.Ks[i]
        u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        xc = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
        c2w = cams.camtoworlds[i]
        P = xc @ c2w[:3, :3].T + c2w[:3, 3]
        # Interior pixels whose 4 neighbours lie on the same smooth surface (depth within 2%).
        zc = z[1:-1, 1:-1]
        nb = [z[1:-1, 2:], z[1:-1, :-2], z[2:, 1:-1], z[:-2, 1:-1]]
        ok = (zc > 0) & np.all([np.abs(n - zc) < 0.02 * zc for n in nb], axis=0)
        du = P[1:-1, 2:] - P[1:-1, :-2]
        dv = P[2:, 1:-1] - P[:-2, 1:-1]
        n = _unit(np.cross(du, dv))
        pts.append(P[1:-1, 1:-1][ok])
        nrm.append(n[ok])
        foot.append((zc / K[0, 0])[ok])
        col.append(scene.images[i, 1:-1, 1:-1][ok].astype(np.float64) / 255.0)
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(foot), np.concatenate(col)


def fitted_like_gaussians(cands, n: int, seed: int = 0) -> dict:
    """``n`` surface Gaussians drawn from the candidates (see the module docstring)."""
    P, Nrm, F, Col = cands
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(P), size=n, replace=n > len(P))
    p, nr, f, c = P[idx], Nrm[idx], F[idx], Col[idx]
    helper = np.where(np.abs(nr[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    t1 = _unit(np.cross(helper, nr))
    t2 = np.cross(nr, t1)
    ang = rng.uniform(0, 2 * np.pi, size=(n, 1))  # random in-plane orientation
    t1, t2 = np.cos(ang) * t1 + np.sin(ang) * t2, -np.sin(ang) * t1 + np.cos(ang) * t2
    sigma = 0.5 * f * np.sqrt(len(P) / n)
    aniso = rng.uniform(0.6, 1.6, size=(n, 2))
    scales = np.stack([sigma * aniso[:, 0], sigma * aniso[:, 1], 0.1 * sigma], -1)
    sh = np.zeros((n, 16, 3))
    sh[:, 0] = rgb_to_sh(torch.from_numpy(c)).numpy()
    sh[:, 1:] = rng.normal(0, 0.05, size=(n, 15, 3))
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    return {
        "means": f32(p),
        "quats": f32(_quat_from_frame(t1, t2, nr)),
        "scales": f32(scales),
        "opacities": f32(rng.uniform(0.5, 0.98, size=n)),
        "sh": f32(sh),
    }


def time_fwd_bwd(g: dict, viewmats, Ks, target, backend: str, reps: int) -> tuple[float, dict]:
    params = {k: v.clone().requires_grad_(True) for k, v in g.items()}
    times = []
    info = {}
    for r in range(reps + 1):  # first run is the warm-up (and builds the extension)
        for p in params.values():
            p.grad = None
        t0 = time.perf_counter()
        img, alpha, meta = rasterization(
            params["means"], params["quats"], params["scales"], params["opacities"], params["sh"],
            viewmats, Ks, WIDTH, HEIGHT, sh_degree=SH_DEGREE, backend=backend,
        )
        loss = ((img - target) ** 2).mean() + 0.1 * alpha.mean()
        loss.backward()
        dt = time.perf_counter() - t0
        if r > 0:
            times.append(dt)
        info = {"visible": int((meta["radii"] > 0).all(-1).sum()),
                "isects": int(meta["flatten_ids"].numel()),
                "coverage": float(alpha.detach().mean())}
    return statistics.median(times), info


def load_note(load_before) -> str:
    """How busy the machine was: other jobs' threads make multi-threaded timings unreliable."""
    if load_before is None:
        return "Machine load unknown."
    # Measured before the benchmark starts, so it counts the other jobs, not this one.
    load, cores = load_before, os.cpu_count() or 1
    if load < 0.5 * cores:
        return f"The machine was otherwise idle (load average {load:.1f} on {cores} cores at the start)."
    return (f"The machine was shared with other jobs (load average {load:.1f} on {cores} cores at the start): "
            "multi-threaded runs then wait at every parallel region for a descheduled thread, so the "
            "1-thread column is the reliable figure and the others are noisy.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--torch-reps", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    scene = render_synthetic_scene(seed=0, width=WIDTH, height=HEIGHT, n_views=N_VIEWS)
    cands = surface_candidates(scene, RENDER_VIEW)
    cam = scene.cameras[RENDER_VIEW]
    viewmats, Ks = cam.viewmats(), cam.intrinsics()
    target = torch.from_numpy(scene.images[RENDER_VIEW : RENDER_VIEW + 1]).float() / 255.0
    print(f"scene: {scene.object_name}, {len(cands[0])} surface candidates "
          f"({time.perf_counter() - t0:.1f} s to build)")

    rows = []
    n_threads = torch.get_num_threads()
    for n in args.sizes:
        g = fitted_like_gaussians(cands, n, seed=n)
        t_cpu, info = time_fwd_bwd(g, viewmats, Ks, target, "cpu", args.reps)
        # One thread needs one free core only: far less sensitive to a busy machine.
        torch.set_num_threads(1)
        t_cpu1, _ = time_fwd_bwd(g, viewmats, Ks, target, "cpu", args.reps)
        torch.set_num_threads(n_threads)
        if n <= TORCH_MAX_GAUSSIANS:
            t_torch, _ = time_fwd_bwd(g, viewmats, Ks, target, "torch", args.torch_reps)
            torch_s, ratio = f"{t_torch * 1000:.0f} ms", f"{t_torch / t_cpu:.1f}x"
        else:
            torch_s, ratio = f"skipped (more than {TORCH_MAX_GAUSSIANS} Gaussians: minutes per step)", "-"
        row = (f"| {n:,} | {info['visible']:,} | {info['isects']:,} | {info['coverage']:.2f} "
               f"| {t_cpu * 1000:.0f} ms | {t_cpu1 * 1000:.0f} ms | {torch_s} | {ratio} |")
        print(row, flush=True)
        rows.append(row)

    text = "\n".join([
        "## Rasterizer: forward + backward at 400x300",
        "",
        f"`python scripts/bench_rasterizer.py --write` on {machine_info()}. {load_note(load_before)}",
        "",
        "Fitted-like scene: 9 views of the synthetic scene back-projected into flat surface "
        "Gaussians (see the script's docstring), SH degree 3, rendered from a held-out view; "
        f"median of {args.reps} (cpu) / {args.torch_reps} (torch) runs after a warm-up.",
        "",
        f"| Gaussians | visible | tile intersections | mean alpha | cpu ({n_threads} threads) "
        f"| cpu (1 thread) | torch ({n_threads} threads) | torch / cpu |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")
    else:
        print("\n" + text)


if __name__ == "__main__":
    main()
