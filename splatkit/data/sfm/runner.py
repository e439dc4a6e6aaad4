"""Running one SfM stage in a child process and turning any failure into one line.

pycolmap failures can abort the interpreter (a failed glog ``CHECK``, a vocabulary tree it cannot
download): :func:`run_stage` starts ``python -m splatkit.data.sfm.worker`` for each stage, appends
the child's output to a log file, and raises :class:`~splatkit.errors.SplatkitError` with the
stage's name and the most telling line of that output when the child fails or dies.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from splatkit.errors import SplatkitError
from splatkit.data.sfm.worker import ERROR_PREFIX


def _reason(output: str, returncode: int) -> str:
    """The line that says why: the worker's own error line, a glog fatal/check line, the last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(ERROR_PREFIX):
            return ln[len(ERROR_PREFIX):]
    for ln in reversed(lines):
        # glog: "F20261202 09:50:01.123 123 file.cc:42] Check failed: ..." (F = fatal).
        if "Check failed" in ln or (ln[:1] == "F" and "]" in ln and ln[1:2].isdigit()):
            return ln.split("] ", 1)[-1]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        tail = f" (last output: {lines[-1][:160]})" if lines else ""
        return f"the pycolmap process was killed by {name}{tail}"
    return lines[-1][:200] if lines else f"exit status {returncode}, no output"


# The worker uses pycolmap 4's API (frames and rigs, GLOMAP's global_mapping, Database.open).
MIN_PYCOLMAP = (4, 0)


def check_pycolmap() -> None:
    """A one-line error unless a pycolmap the worker can drive is installed (checked without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("pycolmap")
    except PackageNotFoundError:
        raise SplatkitError("structure from motion needs pycolmap (pip install 'pycolmap>=4.0')") from None
    parts = tuple(int(p) for p in v.split(".")[:2] if p.isdigit())
    if parts < MIN_PYCOLMAP:
        raise SplatkitError(f"structure from motion needs pycolmap >= 4.0, found {v} (pip install -U pycolmap)")


def run_stage(op: str, job: dict, workdir: Path, *, label: Optional[str] = None, log: Optional[Path] = None,
              timeout: Optional[float] = None) -> dict:
    """Run worker ``op`` on ``job`` in a child process; returns its result dict.

    ``workdir`` holds the job and result files; the child's stdout and stderr are appended to
    ``log`` (default ``workdir/sfm.log``)."""
    check_pycolmap()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    label = label or op
    job_path, result_path = workdir / f"job_{op}.json", workdir / f"result_{op}.json"
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps({**job, "op": op}, indent=1))
    log = Path(log) if log is not None else workdir / "sfm.log"
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "splatkit.data.sfm.worker", str(job_path), str(result_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SplatkitError(f"structure from motion: {label} did not finish within {timeout:.0f} s") from exc
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"==== {label} ({op}), exit {proc.returncode}, {time.time() - t0:.1f} s\n{proc.stdout}\n")
    if proc.returncode != 0 or not result_path.is_file():
        raise SplatkitError(f"structure from motion failed at {label}: {_reason(proc.stdout, proc.returncode)} "
                            f"(full log: {log})")
    result = json.loads(result_path.read_text())
    result["seconds"] = time.time() - t0
    return result
