#!/usr/bin/env bash
# Issue #13's GPU figures in one go, for a session that has a CUDA GPU (about 9 minutes on an H200):
#   1. nerfacc's first-call JIT build (timed), then the CUDA tests: nerfacc's marching and packed
#      rendering against the PyTorch references, and NeRF / HollowNeRF training on the GPU whose
#      checkpoints render the same on a CPU;
#   2. scripts/profile_nerf_step.py: steps/s of the two launch-bound chunk sizes (opaque pass,
#      hash encoding) at both sizes, where a step's time goes, torch.profiler's top operators;
#   3. scripts/bench_nerf.py on CUDA for 1 minute, three runs side by side: the `nerf` preset (sized
#      for a CPU), Instant-NGP's sizes (4096 rays, 16 levels to 2048 cells, 2^19 entries, 128^3
#      occupancy grid) and the preset at 4096 rays, written as the sections bench_nerf_cuda,
#      bench_nerf_cuda_ngp and bench_nerf_cuda_rays4096;
#   4. scripts/bench_nerf_hollow.py on CUDA: plain 2^19 / 2^17 grids and HollowNeRF at 2^17 / 2^16,
#      eight runs side by side on the one GPU at the demo's 200x150, each with the step count that
#      ~2.5 minutes hold at the rate step 3 measured (a wall-clock guard stops a slower run), then
#      gathered into the section bench_nerf_hollow_cuda.
#
# Needs a Python whose torch has CUDA, the package's dependencies and a CUDA toolkit (nerfacc
# JIT-compiles its kernels on first use):
#     PYTHON=python3 bash scripts/gpu_nerf.sh
# (scripts/setup.sh installs the CPU wheel of torch: on a GPU machine use a CUDA build of torch.)
# Logs go to $GPU_LOG (default /tmp/gpu_nerf); docs/benchmarks.md and the HollowNeRF runs' ledger
# docs/results/bench_nerf_hollow.json are updated in place (bring both back from a lent machine).
# STAGES (default "tests bench profile hollow") picks the parts to run; nerfacc is always built.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
LOG="${GPU_LOG:-/tmp/gpu_nerf}"
HOLLOW_MINUTES="${HOLLOW_MINUTES:-2.5}"
STAGES=" ${STAGES:-tests bench profile hollow} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
mkdir -p "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$(date +%s)
say() { echo "[gpu_nerf +$(( $(date +%s) - t0 ))s] $*"; }

"$PY" - <<'PYCHECK' || exit 1
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_nerf.sh needs a CUDA GPU visible to torch (torch {torch.__version__}, cuda {torch.version.cuda})")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")
PYCHECK

say "building nerfacc's CUDA kernels (JIT, first use)"
"$PY" -c "import torch, nerfacc.cuda._backend as b; assert b._C is not None, 'nerfacc did not build'" \
    > "$LOG/nerfacc_build.log" 2>&1 || { tail -n 40 "$LOG/nerfacc_build.log"; say "nerfacc build failed"; exit 1; }
say "nerfacc built"

if want tests; then
say "CUDA tests"
# A failing CUDA path stops here: the benchmarks would spend the lease on it (on 2026-12-04 a wrong
# termination plane kept inference re-marching rays, and both benchmarks hung).
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_nerf.py tests/test_nerf_kernels.py \
    > "$LOG/tests.log" 2>&1
status=$?
tail -n 15 "$LOG/tests.log"
[ $status -eq 0 ] || { say "CUDA tests failed ($status): stopping"; exit 1; }
say "tests passed"
fi

NGP=(nerf_rays=4096 nerf_levels=16 nerf_max_resolution=2048 nerf_log2_hashmap_size=19 nerf_occ_resolution=128)
if want profile; then
say "profile_nerf_step: chunk sizes at the preset's and Instant-NGP's sizes, one process at a time"
# The defaults first: --phases and --profile look at the first variant.
timeout 150 "$PY" scripts/profile_nerf_step.py --device cuda --opaque 256 16 --hash 524288 32768 --phases \
    --profile 5 --out /tmp/profile_nerf --write > "$LOG/profile.log" 2>&1
timeout 90 "$PY" scripts/profile_nerf_step.py --device cuda --opaque 256 --hash 524288 --phases --set "${NGP[@]}" \
    --section profile_nerf_step_cuda_ngp --out /tmp/profile_nerf --write > "$LOG/profile_ngp.log" 2>&1
grep -h "^| [0-9]" "$LOG/profile.log" "$LOG/profile_ngp.log" || tail -n 20 "$LOG/profile.log" "$LOG/profile_ngp.log"
say "profile done"
fi

if want bench; then
say "bench_nerf: nerf preset, Instant-NGP sizes and the preset at 4096 rays, 1 minute each, side by side"
timeout 240 "$PY" scripts/bench_nerf.py --device cuda --minutes 1 --seeds 0 --replans 0 --threads 2 \
    --out /tmp/bench_nerf_cuda --write > "$LOG/bench_nerf.log" 2>&1 &
timeout 240 "$PY" scripts/bench_nerf.py --device cuda --minutes 1 --seeds 0 --replans 0 --threads 2 --set "${NGP[@]}" \
    --section bench_nerf_cuda_ngp --out /tmp/bench_nerf_cuda_ngp --write > "$LOG/bench_nerf_ngp.log" 2>&1 &
# The preset with 4096 rays: a launch-bound GPU step costs about the same at 4x the rays (a CUDA
# preset candidate).
timeout 240 "$PY" scripts/bench_nerf.py --device cuda --minutes 1 --seeds 0 --replans 0 --threads 2 --set nerf_rays=4096 \
    --section bench_nerf_cuda_rays4096 --out /tmp/bench_nerf_cuda_rays4096 --write > "$LOG/bench_nerf_rays4096.log" 2>&1 &
wait
grep -h "^| 1 min" "$LOG"/bench_nerf*.log || tail -n 20 "$LOG"/bench_nerf*.log
say "bench_nerf done"
fi
want hollow || { say "all done"; exit 0; }

# Steps per HollowNeRF run: the Instant-NGP run's rate (its sizes are the closest), halved for eight
# processes sharing the GPU, over the guard's time.
STEPS=$("$PY" - "$LOG/bench_nerf_ngp.log" "$HOLLOW_MINUTES" <<'PYSTEPS'
import ast, sys
rows = [ast.literal_eval(line) for line in open(sys.argv[1]) if line.startswith("{'minutes'")]
rate = rows[-1]["steps"] / rows[-1]["train_s"] if rows else 20.0
print(max(500, int(rate * 0.5 * float(sys.argv[2]) * 60 * 0.9) // 100 * 100))
PYSTEPS
)
say "bench_nerf_hollow: $STEPS steps per run, eight runs side by side"
H=(--steps "$STEPS" --width 200 --height 150 --rays 4096 --march-steps 512 --levels 16 --max-resolution 1024
   --hollow-lr 0.1 --rho 0.0001 --threads 1 --device cuda --max-minutes "$HOLLOW_MINUTES")
"$PY" -c "from splatkit.data.synthetic import write_synthetic_scene as w; w('/tmp/hollow_cuda/scene-200x150', seed=0, width=200, height=150)"
hollow_run() {  # name, then the script's own arguments
    local name=$1; shift
    timeout "$(awk "BEGIN { print int($HOLLOW_MINUTES * 60 + 150) }")" \
        "$PY" scripts/bench_nerf_hollow.py "${H[@]}" "$@" --out /tmp/hollow_cuda > "$LOG/hollow_$name.log" 2>&1
}
hollow_run p19s0 --plain 19 --hollow --seeds 0 &
hollow_run p19s1 --plain 19 --hollow --seeds 1 &
hollow_run p17s0 --plain 17 --hollow --seeds 0 &
hollow_run p17s1 --plain 17 --hollow --seeds 1 &
hollow_run h17b2s0 --plain --hollow 17 --budget 0.2 --seeds 0 &
hollow_run h17b2s1 --plain --hollow 17 --budget 0.2 --seeds 1 &
hollow_run h17b5s0 --plain --hollow 17 --budget 0.5 --seeds 0 &
hollow_run h16b2s0 --plain --hollow 16 --budget 0.2 --seeds 0 &
wait
rows=$(ls /tmp/hollow_cuda/*/rows.json 2>/dev/null)
"$PY" scripts/bench_nerf_hollow.py "${H[@]}" --report-only \
    --reuse $rows --out /tmp/hollow_cuda --write 2>&1 | tee "$LOG/hollow_all.log" | grep "^| 2\|met"
say "all done"
