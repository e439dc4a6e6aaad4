"""splatkit: sparse-view 3D reconstruction with Gaussian splats and hash-grid NeRFs."""

import os as _os
import sys as _sys

# OpenMP threads that spin while they wait (libgomp's default) ruin a shared CPU: on 2 cores with
# one other busy program a training step ran 10x slower than with passive waiting. On an idle
# machine passive waiting costs 5-10% of a Gaussian training step and about 30% of the diffusion
# repair's small-tensor work (a 3-view repair run 19:08 against 14:58), a smaller loss than 10x
# (docs/benchmarks.md, "OpenMP waiting on a shared CPU"); export OMP_WAIT_POLICY=ACTIVE on a
# dedicated machine. The runtime reads the policy once, when it loads with torch, so it is set
# before anything imports torch; an exported value wins. Where torch loaded first (a script's
# `import torch` above `import splatkit`) the runtime has read it already and the value set here
# reaches only child processes.
_OMP_POLICY_AT_LOAD = None if "torch" not in _sys.modules else _os.environ.get("OMP_WAIT_POLICY", "")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def openmp_wait_policy() -> str:
    """How this process's OpenMP threads wait: ``passive``, ``active`` or ``libgomp default`` (spin
    about 3 ms, then sleep; what a process gets when torch loaded before splatkit and nothing was
    exported). Benchmarks record it: on the 2-core CPU it moved an idle run's time by 5-30% and a
    shared one's 10x (docs/benchmarks.md)."""
    value = _os.environ.get("OMP_WAIT_POLICY", "") if _OMP_POLICY_AT_LOAD is None else _OMP_POLICY_AT_LOAD
    value = value.strip().lower()
    return value if value in ("passive", "active") else "libgomp default"

__version__ = "0.1.0"

from splatkit.errors import SplatkitError  # noqa: E402

__all__ = ["SplatkitError", "__version__", "openmp_wait_policy"]
