"""How OpenMP's waiting policy decides the training speed when another process shares the CPU,
recorded in docs/benchmarks.md ("OpenMP waiting on a shared CPU").

A laptop is rarely idle: a browser, an indexer or a second benchmark keeps a core busy. torch's
kernels and ours run in OpenMP parallel regions, and libgomp's threads wait for each other at every
barrier; by default they spin first, so a thread the other process displaced stalls the step. For
each waiting policy this trains the demo's scene (`splatkit train --preset fast`, a child process
as a user runs it) twice: "shared", beside a load process this script starts (one thread of
matrix products in a session of its own, as a program started elsewhere runs), and "idle", without it. The rate is
read from the run's log (steps per second between the first and the last logged step, so the
start-up and the kernel build are left out); the test PSNR shows that the policy leaves the
result unchanged.

    .venv/bin/python scripts/bench_cpu_sharing.py [--shared-steps 50] [--idle-steps 400] [--repeats 2] [--write]

Run it with nothing else on the machine: the "idle" rows assume the load process is the only other
work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import OPENMP_POLICIES, child_env, machine_info, run_cli, wait_for_quiet, write_section  # noqa: E402

SECTION = "bench_cpu_sharing"

# (label, environment set for the child, torch imported before splatkit)
POLICIES = {
    "default": OPENMP_POLICIES["default"],
    "active": OPENMP_POLICIES["active"],
    "spin20k": ("`GOMP_SPINCOUNT=20000` (spin briefly, then sleep)", {"GOMP_SPINCOUNT": "20000"}, False),
    "passive": OPENMP_POLICIES["passive"],
    "one_thread": ("one thread (`SPLATKIT_CPU_THREADS=1 OMP_NUM_THREADS=1`)",
                   {"SPLATKIT_CPU_THREADS": "1", "OMP_NUM_THREADS": "1"}, False),
}
# A busy core as another program makes one: single-threaded, never done, in a session of its own.
# With the kernel's autogroup scheduling (on by default on desktop Linux) `nice` only orders the
# processes of one session, so a job started from another terminal competes at full weight however
# niced; a niced child of this script would not (measured: no slowdown at all).
LOAD = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")


def log_rate(run: Path) -> float:
    """Steps per second between the first and the last step the run logged."""
    entries = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    entries = [e for e in entries if "elapsed_s" in e]
    if len(entries) < 2:
        raise SystemExit(f"{run}: fewer than two logged steps; raise --shared-steps / --idle-steps")
    first, last = entries[0], entries[-1]
    return (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])


def measure(scene: Path, out: Path, key: str, steps: int, log_every: int) -> tuple[float, float]:
    _, extra, torch_first = POLICIES[key]
    r = run_cli(["--data", str(scene), "--preset", "fast", "--steps", str(steps), "--set", f"log_every={log_every}"],
                out, env=child_env(extra), torch_first=torch_first)
    return log_rate(out), r["summary"]["mean"].get("psnr", float("nan"))


def start_load() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOAD], env=child_env({"OMP_NUM_THREADS": "1"}),
                            start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_cpu_sharing")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"of {', '.join(POLICIES)}")
    parser.add_argument("--shared-steps", type=int, default=50)
    parser.add_argument("--idle-steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    keys = [k.strip() for k in args.policies.split(",") if k.strip()]
    unknown = [k for k in keys if k not in POLICIES]
    if unknown:
        raise SystemExit(f"unknown --policies {unknown}; choose from {', '.join(POLICIES)}")

    from splatkit.cli.demo import prepare_scene

    scene = prepare_scene(args.out / "scene")
    load_before = wait_for_quiet()
    if load_before is not None and load_before > 0.5:
        print(f"warning: load average {load_before:.1f} before the start: the idle rows will not be idle", flush=True)
    results: dict[str, dict[str, list]] = {k: {"shared": [], "idle": []} for k in keys}
    for setting, steps in (("shared", args.shared_steps), ("idle", args.idle_steps)):
        load = start_load() if setting == "shared" else None
        try:
            time.sleep(1.0 if load else 0.0)  # the load process at work before the first step
            for rep in range(args.repeats):
                for key in keys:
                    rate, psnr = measure(scene, args.out / f"{key}_{setting}_{rep}", key, steps,
                                         log_every=max(1, min(10, steps // 5)))
                    results[key][setting].append((rate, psnr))
                    print(f"{setting:6s} {key:10s} repeat {rep}: {rate:.2f} it/s, test PSNR {psnr:.3f}", flush=True)
        finally:
            if load is not None:
                load.kill()
                load.wait()

    def rates(cells):
        return ", ".join(f"{r:.1f}" for r, _ in cells) or "-"

    rows = []
    for key in keys:
        shared, idle = results[key]["shared"], results[key]["idle"]
        psnr = " / ".join(", ".join(sorted({f"{p:.2f}" for _, p in cells})) or "-" for cells in (shared, idle))
        rows.append(f"| {POLICIES[key][0]} | {rates(shared)} | {rates(idle)} | {psnr} |")
    # The waiting policy must not change what is computed: one PSNR per setting across policies
    # (a different thread count may reorder a reduction, so one thread is left out of the check).
    differs = [s for s in ("shared", "idle")
               if len({f"{p:.4f}" for k in keys if k != "one_thread" for _, p in results[k][s]}) > 1]
    load_note = "machine load unknown" if load_before is None else f"load average {load_before:.1f} at the start"
    text = f"""## OpenMP waiting on a shared CPU

`python scripts/bench_cpu_sharing.py --shared-steps {args.shared_steps} --idle-steps {args.idle_steps} --repeats {args.repeats} --write` on {machine_info(openmp="per row")}; {load_note}.
`splatkit train --data SCENE --preset fast --steps N` on the demo's scene, one child process per
run; the rate (steps per second) is read from the run's log between its first and last logged step.
"Shared": a load process (one thread of matrix products, in a session of its own) keeps a core
busy, as any other program on a laptop would; "idle": nothing else runs. One figure per repeat.

| OpenMP waiting | shared: it/s ({args.shared_steps} steps) | idle: it/s ({args.idle_steps} steps) | test PSNR (dB), shared / idle |
|---|---:|---:|---:|
""" + "\n".join(rows) + "\n"
    text += ("\nThe waiting policies trained the same scene to the same test PSNR (to 4 decimals) in each "
             "setting.\n" if not differs else
             f"\nThe test PSNR differs between the waiting policies ({', '.join(differs)}): see the rows.\n")
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
