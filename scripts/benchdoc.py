"""Shared by the benchmark scripts: describe the machine and update one section of docs/benchmarks.md."""

from __future__ import annotations

import datetime
import fcntl
import os
import platform
import re
from pathlib import Path

import splatkit  # before torch: the package's OpenMP waiting policy, as a user's run gets it
import torch

from splatkit.utils.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_info(openmp: str | None = None) -> str:
    """The machine, torch and the OpenMP waiting policy the figures ran with (``openmp``: the
    policy of the measured child processes when it is not this process's)."""
    model = cpu_model()
    gpu = ""
    if torch.cuda.is_available():  # the figures of a GPU run depend on the card first
        gpu = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}) with "
    return (f"{gpu}{model}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, OpenMP waiting {openmp or splatkit.openmp_wait_policy()}), "
            f"Python {platform.python_version()}, {datetime.date.today().isoformat()}")


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def wait_for_quiet(below: float = 0.3, max_wait_s: float = 300.0, say=print) -> float | None:
    """Wait until the one-minute load average falls below ``below`` (at most ``max_wait_s``) and
    return it: a timing meant to be taken alone should not start in the tail of the previous job
    (the average decays over about a minute after the machine goes quiet)."""
    import time

    load = load_average()
    deadline = time.monotonic() + max_wait_s
    if load is not None and load >= below:
        say(f"waiting for the machine to go quiet (load average {load:.2f}, waiting for < {below})")
    while load is not None and load >= below and time.monotonic() < deadline:
        time.sleep(5.0)
        load = load_average()
    return load


def mean_std(values, digits: int = 2) -> str:
    """``mean ± std`` of the values that are not None (the value alone when there is one)."""
    import numpy as np

    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def write_section(name: str, text: str) -> Path:
    """Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` (appended when absent).

    Benchmarks often run side by side (one per core): the read-modify-write holds an exclusive lock
    so that two of them finishing together cannot drop each other's section."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    block = f"{start}\n{text.rstrip()}\n{end}"
    with open(DOC.with_name(DOC.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if DOC.exists():
            doc = DOC.read_text()
            if start in doc and end in doc:
                doc = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
            else:
                doc = doc.rstrip() + "\n\n" + block + "\n"
        else:
            doc = "# Benchmarks\n\n" + block + "\n"
        write_text_atomic(DOC, doc)
    return DOC


# Per-run figures behind the tables, committed beside docs/benchmarks.md: run folders live under
# outputs/ (gitignored, gigabytes) and go when a machine goes, and a table regenerated from the runs
# still on disk would silently drop every row measured elsewhere.
RESULTS = ROOT / "docs" / "results"


def results_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def load_results(name: str) -> dict[str, dict]:
    """The ledger ``docs/results/NAME.json``: run key -> the figures recorded for that run."""
    import json

    path = results_path(name)
    return json.loads(path.read_text()) if path.exists() else {}


def record_result(name: str, key: str, entry: dict) -> dict[str, dict]:
    """Add or replace one run's figures in the ledger and return the whole ledger. Locked like
    ``write_section``: parallel measurements append to the same file."""
    import json

    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ledger = load_results(name)
        # The machine too: a ledger outlives machines, and a table rebuilt from it elsewhere must
        # not credit its times to the machine that rebuilt it.
        ledger[key] = {"machine": cpu_model(), **entry, "recorded": datetime.date.today().isoformat()}
        write_text_atomic(path, json.dumps(dict(sorted(ledger.items())), indent=1) + "\n")
    return ledger


# What decides how a child's OpenMP threads wait and how many there are; child_env starts from none of it.
THREAD_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "SPLATKIT_CPU_THREADS")


def child_env(extra: dict) -> dict:
    """This process's environment without the thread settings, plus ``extra``: a child measured
    under one policy must not inherit another from the shell (or from this process's splatkit)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_SETTINGS}
    return {**env, **extra}


# How a child's OpenMP threads wait: label, environment, torch imported before splatkit (the only
# way to get libgomp's own default now that `import splatkit` sets passive). Shared by the scripts
# that time a policy (bench_cpu_sharing, bench_repair_time).
OPENMP_POLICIES = {
    "default": ("libgomp's default (spin about 3 ms, then sleep): torch loaded before splatkit, nothing exported",
                {}, True),
    "active": ("active (`OMP_WAIT_POLICY=ACTIVE`: spin until the barrier opens)", {"OMP_WAIT_POLICY": "ACTIVE"}, False),
    "passive": ("passive (`OMP_WAIT_POLICY=PASSIVE`, what `import splatkit` sets)", {"OMP_WAIT_POLICY": "PASSIVE"},
                False),
}


# Launches `splatkit` in a child process with torch (and so the OpenMP runtime) loaded before
# splatkit's import can set OMP_WAIT_POLICY: what a script that imports torch first gets.
TORCH_FIRST = ("import sys, torch; from splatkit.cli.main import main; "
               "sys.exit(main(sys.argv[1:]))")


def run_cli(args: list[str], out: Path, env: dict | None = None, torch_first: bool = False) -> dict:
    """Run ``splatkit train ARGS --out OUT --quiet`` in a child process, as a user runs it (``OUT``
    replaced; ``env``: the child's whole environment, this one's when None), and return its wall
    time, CPU time (user + system), peak memory, training summary and config. The child's own
    resource usage (``os.wait4``), not that of every child so far."""
    import json
    import shutil
    import subprocess
    import sys
    import time

    shutil.rmtree(out, ignore_errors=True)
    launch = ["-c", TORCH_FIRST] if torch_first else ["-m", "splatkit.cli.main"]
    cmd = [sys.executable, *launch, "train", *args, "--out", str(out), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "summary": json.loads((out / "train_summary.json").read_text()),
            "config": json.loads((out / "config.json").read_text()), "run": out}
