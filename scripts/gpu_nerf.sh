#!/usr/bin/env bash
# Issue #13's GPU figures in one go, for a session that has a CUDA GPU (about 10 minutes):
# the NeRF tests (their CUDA cases run where torch sees a GPU: nerfacc's marching and rendering
# against our CPU kernels' layouts), then scripts/bench_nerf.py on CUDA with nerfacc's kernels at
# the CPU table's budgets scaled down (1 and 3 minutes), written to docs/benchmarks.md as the
# section `bench_nerf_cuda` beside the CPU one.
#
# Needs an environment whose torch has CUDA and a CUDA toolkit for nerfacc's first-call JIT build:
#     PYTHON=.venv/bin/python bash scripts/gpu_nerf.sh
# (this repository's scripts/setup.sh installs the CPU wheel of torch: on a GPU machine install the
# CUDA wheel of the same version into the venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
"$PY" - <<'PYCHECK'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_nerf.sh needs a CUDA GPU visible to torch (torch {torch.__version__}, cuda {torch.version.cuda})")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
PYCHECK
"$PY" -m pytest -q tests/test_nerf.py tests/test_nerf_kernels.py tests/test_nerf_hollow.py
"$PY" scripts/bench_nerf.py --device cuda --minutes 1 3 --seeds 0 --threads 4 --out /tmp/bench_nerf_cuda --write
