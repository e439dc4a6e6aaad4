"""Time the NeRF's C++ CPU kernels against the pure-PyTorch path (the references they are tested
against): hash encoding forward + backward, occupancy-grid marching, packed volume rendering.

Usage: flock /tmp/splatkit-heavy.lock .venv/bin/python scripts/bench_nerf_kernels.py [--threads 2]
           [--repeats 5] [--write]

Sizes (issue #13): hash encoding of 200k samples (16 levels x 2 features, base resolution 16, finest
2048, tables of 2^14..2^19 entries; points inside a box, as NeRF samples are); marching 4096 rays
through a 128^3 occupancy grid (random cells occupied, the given fraction) with 1024 steps along the
box diagonal; packed rendering of those samples. Each figure is the median of ``--repeats`` runs
after a warm-up; the kernels' outputs are checked against the references before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchdoc import load_average, machine_info, write_section  # noqa: E402

from splatkit.models.hashgrid import HashGrid, HashGridConfig  # noqa: E402
from splatkit.render import nerf_cpu_backend, volume  # noqa: E402
from splatkit.render.cpu_backend import set_kernel_threads  # noqa: E402

SECTION = "bench_nerf_kernels"


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench_hash(log2t: int, n: int, repeats: int) -> tuple[float, float]:
    grid = HashGrid(HashGridConfig(n_levels=16, log2_hashmap_size=log2t, base_resolution=16, max_resolution=2048))
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    g = torch.randn(n, grid.output_dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(nerf_cpu_backend.hash_encode(grid, x), grid(x), rtol=1e-4, atol=1e-5)

    def run(fn):
        grid.table.grad = None
        (fn(x) * g).sum().backward()

    return (_time(lambda: run(grid), repeats),
            _time(lambda: run(lambda p: nerf_cpu_backend.hash_encode(grid, p)), repeats))


def march_case(n_rays: int, res: int, frac: float):
    gen = torch.Generator().manual_seed(2)
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    binaries = torch.rand(1, res, res, res, generator=gen) < frac
    o = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen), dim=-1) * 4.0
    target = torch.rand(n_rays, 3, generator=gen) * 2 - 1
    d = torch.nn.functional.normalize(target - o, dim=-1)
    t0, t1 = volume.ray_segments(o, d, aabb, 0.0, 1e10)
    step = float((aabb[3:] - aabb[:3]).norm()) / 1024
    t0 = t0 + torch.rand(n_rays, generator=gen) * step
    return o, d, t0, t1, binaries, aabb[None], step


def bench_march(n_rays: int, res: int, frac: float, repeats: int) -> tuple[float, float, int, float, float]:
    args = march_case(n_rays, res, frac)
    ref = volume.march_torch(*args)
    got = volume.march(*args, impl="cpu")
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    t_torch = _time(lambda: volume.march_torch(*args), repeats)
    t_cpp = _time(lambda: volume.march(*args, impl="cpu"), repeats)
    S = ref.ray_indices.numel()
    gen = torch.Generator().manual_seed(3)
    sig = (torch.rand(S, generator=gen) * 5).requires_grad_()
    val = torch.rand(S, 3, generator=gen).requires_grad_()

    def render(impl):
        o = volume.render(sig, val, ref.t_starts, ref.t_ends, ref.ray_indices, ref.packed_info, impl=impl)
        (o.colors.sum() + o.opacities.sum() + o.depths.sum()).backward()

    return t_torch, t_cpp, S, _time(lambda: render("torch"), repeats), _time(lambda: render("cpu"), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--log2t", type=int, nargs="+", default=[14, 16, 19])
    ap.add_argument("--occupied", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_kernel_threads(args.threads)
    reason = nerf_cpu_backend.unavailable_reason()
    if reason is not None:
        sys.exit(f"the C++ kernels are unavailable: {reason}")
    load = load_average()
    t_start = time.time()
    rows = []
    n = 200_000
    for log2t in args.log2t:
        tt, tc = bench_hash(log2t, n, args.repeats)
        rows.append(f"| hash encoding fwd + bwd, 16 levels x 2, T = 2^{log2t} | {n:,} samples | {tt:.1f} ms | "
                    f"{tc:.1f} ms | {tt / tc:.1f}x |")
        print(rows[-1], flush=True)
    for frac in args.occupied:
        mt, mc, S, rt, rc = bench_march(4096, 128, frac, args.repeats)
        rows.append(f"| marching, 4096 rays, 128^3 grid, {frac:.0%} of cells occupied | {S:,} samples out | "
                    f"{mt:.1f} ms | {mc:.1f} ms | {mt / mc:.1f}x |")
        print(rows[-1], flush=True)
        rows.append(f"| packed rendering fwd + bwd of those samples | {S:,} samples | {rt:.1f} ms | {rc:.1f} ms | "
                    f"{rt / rc:.1f}x |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "## NeRF kernels on CPU: C++ vs the pure-PyTorch path",
        "",
        f"`python scripts/bench_nerf_kernels.py --threads {args.threads} --write` on {machine_info()}; load average "
        f"{load if load is None else round(load, 1)} at the start; {time.time() - t_start:.0f} s in all. Median of "
        f"{args.repeats} runs after a warm-up, outputs checked against the reference first. PyTorch: `HashGrid` "
        "(its own forward and backward), `volume.march_torch`, `volume.render_torch` (autograd); C++: "
        "`cuda/cpu/nerf_cpu.cpp` (targets of issue #13: hash encoding >= 3x, marching >= 2x). Points are "
        "uniform in the unit cube; rays start 4 units from the centre of a [-1.5, 1.5]^3 box, 1024 steps "
        "along its diagonal.",
        "",
        "| what | size | PyTorch | C++ | speed-up |",
        "|---|---|---:|---:|---:|",
        *rows,
    ])
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
