#!/usr/bin/env bash
# The whole pipeline offline on the CPU (`make demo`): the built-in `demo` recipe
# of `tinystories pipeline` (synth -> tokenize -> train -> sample -> eval -> interpret
# -> report), ending with the path of runs/demo/report.html. Each stage prints
# its time; a re-run skips what is done and resumes training.
# DEMO_OUT names the pipeline folder, DEMO_TIME caps training time (the result
# is decided by the recipe's token budget, not by the clock).
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(pipeline --recipe demo --out "${DEMO_OUT:-runs/demo}")
[ -n "${DEMO_TIME:-}" ] && ARGS+=(--time "$DEMO_TIME")
exec .venv/bin/tinystories "${ARGS[@]}"
