#!/usr/bin/env bash
# GPU throughput beside transformers, in under 4 minutes, on the machine's own python3 and torch
# (no network, no test data: it makes random-token data). See benchmarks/gpu_bench.py.
#
#   bash benchmarks/gpu.sh                  # on a GPU machine, from the repository root
#   GPU_BENCH_TINY=1 bash benchmarks/gpu.sh # a few seconds per case on a CPU: checks the script itself
#
# JSON lines on stdout; with $OUT set, also appended to $OUT/gpu.jsonl as they come.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null || true

# Smoke phase (60 s at most): a tiny model trains and samples through the real code paths.
if ! timeout 60 "$PY" benchmarks/gpu_bench.py --phase smoke "$@"; then
  echo "gpu.sh: ABORTED -- the 60-second smoke phase failed or timed out (see the error above); no measurements" >&2
  exit 1
fi

# Measurements: each case is skipped (with a JSON line saying so) once the 4-minute budget would run out.
timeout $((235 - SECONDS)) "$PY" benchmarks/gpu_bench.py --phase measure --budget $((228 - SECONDS)) "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu.sh: the measurement phase hit the time limit; the lines above are what was measured" >&2
echo "gpu.sh: total ${SECONDS} s" >&2
exit $rc
