"""Time the pure-PyTorch hash grid (and the Compact-3DGS colour field) forward + backward.

Usage: .venv/bin/python scripts/bench_hashgrid.py [--threads 2] [--n 50000 200000] [--device cpu]

Points are Gaussian-centre-like: a noisy unit-sphere shell, contracted as the colour field does.
Each figure is the median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from splatkit.models.color_field import ColorField, ColorFieldConfig
from splatkit.models.hashgrid import HashGrid, HashGridConfig, contract_to_unit_ball


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _points(n: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    d = torch.randn(n, 3, generator=g)
    r = 0.8 + 0.3 * torch.rand(n, 1, generator=g)
    return (d / d.norm(dim=1, keepdim=True) * r).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, nargs="+", default=[32768])
    ap.add_argument("--log2t", type=int, default=19)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    for chunk in args.chunk:
        cfg = HashGridConfig(log2_hashmap_size=args.log2t, chunk_size=chunk)
        grid = HashGrid(cfg).to(device)
        print(f"HashGrid {grid.extra_repr()}, chunk={chunk}, params={grid.table.numel() / 1e6:.1f}M")
        for n in args.n:
            x = contract_to_unit_ball(_points(n, device))

            def fwd():
                with torch.no_grad():
                    grid(x)

            def fwd_bwd():
                grid.table.grad = None
                grid(x).square().sum().backward()

            print(f"  N={n:>7}: forward {_time(fwd, device, args.repeats):8.1f} ms   "
                  f"forward+backward {_time(fwd_bwd, device, args.repeats):8.1f} ms")

    field = ColorField(ColorFieldConfig(grid=HashGridConfig(log2_hashmap_size=args.log2t))).to(device)
    cams = torch.eye(4).repeat(1, 1, 1).to(device)
    cams[0, :3, 3] = torch.tensor([0.0, 0.0, -3.0])
    for n in args.n:
        means = _points(n, device)

        def field_step():
            field.zero_grad(set_to_none=True)
            field.colors_for_cameras(means, cams).sum().backward()

        print(f"ColorField 1 camera N={n:>7}: forward+backward {_time(field_step, device, args.repeats):8.1f} ms")
    opt = torch.optim.Adam(field.parameters(), lr=1e-2, eps=1e-15)
    for p in field.parameters():
        p.grad = torch.zeros_like(p)
    print(f"Adam step over the field's {sum(p.numel() for p in field.parameters()) / 1e6:.1f}M parameters: "
          f"{_time(opt.step, device, args.repeats):8.1f} ms")


if __name__ == "__main__":
    main()
