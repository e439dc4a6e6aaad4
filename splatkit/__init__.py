"""splatkit: sparse-view 3D reconstruction with Gaussian splats and hash-grid NeRFs."""

import os as _os

# OpenMP threads that spin while they wait (libgomp's default) ruin a shared CPU: on 2 cores with
# one other busy process a training step ran 14x slower than with passive waiting, which costs
# nothing measurable on an idle machine (docs/benchmarks.md, "OpenMP waiting on a shared CPU").
# The policy is read once, when the OpenMP runtime loads with torch, so it is set before anything
# imports torch; a value the user exported (OMP_WAIT_POLICY=ACTIVE) wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from splatkit.errors import SplatkitError  # noqa: E402

__all__ = ["SplatkitError", "__version__"]
