"""Time the pure-PyTorch hash grid (and the Compact-3DGS colour field) forward + backward.

Usage: .venv/bin/python scripts/bench_hashgrid.py [--threads 2] [--n 50000 200000] [--device cpu]
           [--log2t 14 16 19] [--write]

Points are Gaussian-centre-like: a noisy unit-sphere shell, contracted as the colour field does.
Each figure is the median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splatkit.models.color_field import ColorField, ColorFieldConfig
from splatkit.models.hashgrid import HashGrid, HashGridConfig, contract_to_unit_ball

SECTION = "bench_hashgrid"


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
    ap.add_argument("--log2t", type=int, nargs="+", default=[14, 16, 19],
                    help="log2 of the hash-table size per level (Compact-3DGS: 19 real scenes, 16 synthetic)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    rows = []
    for log2t in args.log2t:
        for chunk in args.chunk:
            cfg = HashGridConfig(log2_hashmap_size=log2t, chunk_size=chunk)
            grid = HashGrid(cfg).to(device)
            for n in args.n:
                x = contract_to_unit_ball(_points(n, device))

                def fwd():
                    with torch.no_grad():
                        grid(x)

                def fwd_bwd():
                    grid.table.grad = None
                    grid(x).square().sum().backward()

                rows.append((f"HashGrid (16 levels x 2), chunk {chunk}", log2t, n, _time(fwd, device, args.repeats),
                             _time(fwd_bwd, device, args.repeats)))
                print(rows[-1], flush=True)

        field = ColorField(ColorFieldConfig(grid=HashGridConfig(log2_hashmap_size=log2t))).to(device)
        cams = torch.eye(4).repeat(1, 1, 1).to(device)
        cams[0, :3, 3] = torch.tensor([0.0, 0.0, -3.0])
        for n in args.n:
            means = _points(n, device)

            def field_fwd():
                with torch.no_grad():
                    field.colors_for_cameras(means, cams)

            def field_step():
                field.zero_grad(set_to_none=True)
                field.colors_for_cameras(means, cams).sum().backward()

            rows.append(("ColorField, 1 camera", log2t, n, _time(field_fwd, device, args.repeats),
                         _time(field_step, device, args.repeats)))
            print(rows[-1], flush=True)
        opt = torch.optim.Adam(field.parameters(), lr=1e-2, eps=1e-15)
        for p in field.parameters():
            p.grad = torch.zeros_like(p)
        rows.append((f"Adam step over the field's {sum(p.numel() for p in field.parameters()) / 1e6:.2f}M "
                     "parameters", log2t, None, None, _time(opt.step, device, args.repeats)))
        print(rows[-1], flush=True)

    from benchdoc import load_average, machine_info, write_section

    load = load_average()
    table = ["| what | table size | points | forward | forward + backward |", "|---|---:|---:|---:|---:|"]
    for what, log2t, n, f, fb in rows:
        table.append(f"| {what} | 2^{log2t} | {'' if n is None else f'{n:,}'} | "
                     f"{'' if f is None else f'{f:.1f} ms'} | {fb:.1f} ms |")
    text = f"""## Hash grid and colour field (pure PyTorch) on {device.type.upper()}

`python scripts/bench_hashgrid.py --threads {args.threads} --write` on {machine_info()}; load average
{'unknown' if load is None else f'{load:.1f}'} at the start. Median of {args.repeats} runs after a warm-up; points
are Gaussian-centre-like (a noisy unit-sphere shell). The colour field is Compact-3DGS's (16 levels x 2
features, base resolution 16, x1.447 per level, 2 hidden layers of 64); one training step of the `compact`
preset runs the field once per camera in the batch.

{chr(10).join(table)}
"""
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
