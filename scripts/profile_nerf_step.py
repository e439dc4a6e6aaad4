"""Where a NeRF training step's time goes, on any device, and what the launch-bound knobs change.

Drives the real :class:`splatkit.train.trainer.Trainer` (preset ``nerf``, the demo's synthetic
scene at 200x150) for ``--warmup`` + ``--steps`` steps per variant and reports steps per second
over the timed steps. A variant sets the two chunk sizes that decide how many kernel launches and
host round trips a step takes on a GPU:

* ``opaque``: :attr:`NerfModel.OPAQUE_MAX_CHUNK` for the device: the density-only pass that finds
  where each training ray turns opaque marches 16 samples per ray first and doubles up to this
  (16 = fixed chunks, the CPU's setting: every chunk waits for the last one's survivors);
* ``hash``: :attr:`HashGrid.GPU_MIN_CHUNK`, the smallest number of points the hash encoding
  handles per chunk off the CPU (the CPU keeps the config's 32768).

``--phases`` then times the parts of a step of the first variant with wall-clock wrappers that
synchronise the device around each part (so the rate it runs at is a little lower): batch (the
trainer's batch + the method's ray draw), occupancy (nerfacc's grid update), opaque pass,
march, field (forward), render (packed volume rendering), backward, Adam, finite (the trainer's
NaN check) and the rest of the loop. ``--profile N`` prints torch.profiler's top operators over N
steps of the first variant (in a run of its own).

    python scripts/profile_nerf_step.py --device cuda --opaque 16 256 --hash 32768 524288 \\
        [--set nerf_rays=4096 ...] [--phases] [--profile] [--write --section NAME]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_nerf import Setup, _config, _scene  # noqa: E402  (scripts/ is on sys.path)
from benchdoc import machine_info, write_section  # noqa: E402

import splatkit.methods.nerf as nerf_method  # noqa: E402
from splatkit.models.hashgrid import HashGrid  # noqa: E402
from splatkit.models.nerf_field import NerfField, NerfModel  # noqa: E402
from splatkit.render import volume  # noqa: E402
from splatkit.train import Trainer  # noqa: E402
from splatkit.train.config import parse_set_overrides  # noqa: E402


class PhaseTimer:
    """Exclusive wall time per named part (a part's time excludes the parts called inside it)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [name, time spent in children]
        self.active = False

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*a, **k):
            if not self.active:
                return fn(*a, **k)
            self.sync()
            t0 = time.perf_counter()
            self.stack.append([name, 0.0])
            try:
                return fn(*a, **k)
            finally:
                self.sync()
                dt = time.perf_counter() - t0
                _, children = self.stack.pop()
                self.totals[name] += dt - children
                if self.stack:
                    self.stack[-1][1] += dt

        setattr(owner, attr, timed)


def install_phases(timer: PhaseTimer) -> None:
    timer.wrap(Trainer, "_make_batch", "batch")
    timer.wrap(nerf_method.Nerf, "prepare_batch", "batch")
    timer.wrap(NerfModel, "update_occupancy", "occupancy")
    timer.wrap(NerfModel, "opaque_from", "opaque pass")
    timer.wrap(NerfModel, "march", "march")
    timer.wrap(NerfField, "forward", "field")
    timer.wrap(volume, "render", "render")
    timer.wrap(torch.Tensor, "backward", "backward")
    timer.wrap(nerf_method.Nerf, "optimizer_step", "Adam")
    timer.wrap(Trainer, "_check_finite", "finite")


def run_variant(setup: Setup, out: Path, opaque: int, hash_chunk: int, warmup: int, steps: int,
                timer: PhaseTimer | None = None, profile: int = 0) -> dict:
    kind = torch.device(setup.device).type
    NerfModel.OPAQUE_MAX_CHUNK = {**NerfModel.OPAQUE_MAX_CHUNK, kind: opaque}
    HashGrid.GPU_MIN_CHUNK = hash_chunk
    marks, samples = {}, []
    prof = None

    def mark(trainer, step):
        nonlocal prof
        if timer is not None:
            timer.sync()
        marks[step] = time.perf_counter()
        if step > warmup:
            samples.append(trainer.method.last_samples)
        if timer is not None and step == warmup + steps:  # not the run's closing checkpoint and preview
            timer.active = False
        if step == warmup:
            if timer is not None:
                timer.active = True
            if profile:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if kind == "cuda":
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                prof = torch.profiler.profile(activities=acts)
                prof.__enter__()
        if prof is not None and step == warmup + profile:
            prof.__exit__(None, None, None)
            prof_report(prof, profile, kind)
            prof = None

    trainer = Trainer(_config(setup, out, 0, warmup + steps), quiet=True, callbacks=[mark])
    trainer.train(score=False)
    gaps = [marks[s + 1] - marks[s] for s in range(warmup, warmup + steps)]
    return {"opaque": opaque, "hash": hash_chunk, "steps_per_s": steps / (marks[warmup + steps] - marks[warmup]),
            "median_ms": 1e3 * statistics.median(gaps), "samples": statistics.mean(samples)}


def prof_report(prof, n_steps: int, kind: str) -> None:
    key = "self_cuda_time_total" if kind == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25), flush=True)
    counts = defaultdict(int)
    for e in prof.key_averages():
        if e.key.startswith(("cudaStreamSynchronize", "cudaMemcpyAsync", "cudaLaunchKernel", "aten::nonzero",
                             "aten::item", "cudaDeviceSynchronize")):
            counts[e.key] += e.count
    print("per step: " + ", ".join(f"{k} {v / n_steps:.0f}" for k, v in sorted(counts.items())), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="nerf")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (as `splatkit train --set`)")
    ap.add_argument("--opaque", type=int, nargs="+", default=[NerfModel.OPAQUE_MAX_CHUNK["cpu"]])
    ap.add_argument("--hash", type=int, nargs="+", default=[HashGrid.GPU_MIN_CHUNK])
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--phases", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS", help="torch.profiler over this many steps")
    ap.add_argument("--out", type=Path, default=Path("/tmp/profile_nerf_step"))
    ap.add_argument("--section", default=None)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    setup = Setup(_scene(args.out), args.device, args.preset, parse_set_overrides(args.set))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for i, (opaque, hash_chunk) in enumerate(itertools.product(args.opaque, args.hash)):
        r = run_variant(setup, args.out / f"{stamp}-{i}", opaque, hash_chunk, args.warmup, args.steps)
        rows.append(r)
        print(r, flush=True)
    if args.profile:  # a run of its own: the profiler slows the steps it records
        run_variant(setup, args.out / f"{stamp}-profile", args.opaque[0], args.hash[0], args.warmup, args.profile,
                    profile=args.profile)
    phases = ""
    if args.phases:
        timer = PhaseTimer(torch.device(args.device))
        install_phases(timer)
        r = run_variant(setup, args.out / f"{stamp}-phases", args.opaque[0], args.hash[0], args.warmup, args.steps, timer)
        step_ms = 1e3 / r["steps_per_s"]
        parts = {k: 1e3 * v / args.steps for k, v in timer.totals.items()}
        parts["rest of the loop"] = max(0.0, step_ms - sum(parts.values()))
        phases = "\n".join([
            "", f"Parts of a step (opaque {args.opaque[0]}, hash chunk {args.hash[0]:,}; the device synchronised "
            f"around each part: {step_ms:.1f} ms a step):", "",
            "| part | ms / step | share |", "|---|---:|---:|",
            *(f"| {k} | {v:.2f} | {100 * v / step_ms:.0f}% |" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))])
        print(phases, flush=True)
    text = "\n".join([
        f"## NeRF training step, where the time goes ({args.device})" + (f", {' '.join(args.set)}" if args.set else ""),
        "",
        f"`python scripts/profile_nerf_step.py --device {args.device} --opaque {' '.join(map(str, args.opaque))} "
        f"--hash {' '.join(map(str, args.hash))} --warmup {args.warmup} --steps {args.steps}"
        f"{' --set ' + ' '.join(args.set) if args.set else ''}{' --phases' if args.phases else ''} --write` on "
        f"{machine_info()}. Preset `{args.preset}` on the demo's scene (200x150); steps/s over steps "
        f"{args.warmup + 1}-{args.warmup + args.steps} of one run per row (seed 0). `opaque`: largest chunk "
        "(samples per ray) of the density-only pass that finds where rays turn opaque (16 = fixed chunks); "
        "`hash`: smallest hash-encoding chunk (points) off the CPU.",
        "",
        "| opaque | hash | steps / s | median step | samples / step |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {r['opaque']} | {r['hash']:,} | {r['steps_per_s']:.1f} | {r['median_ms']:.1f} ms | {r['samples']:,.0f} |"
          for r in rows),
        phases,
    ])
    print(text)
    if args.write:
        kind = torch.device(args.device).type
        print(f"wrote {write_section(args.section or f'profile_nerf_step_{kind}', text)}")


if __name__ == "__main__":
    main()
