#!/usr/bin/env bash
# The whole pipeline offline on the CPU (`make demo`): the built-in `demo` recipe
# of `tinystories run` (synth -> tokenize -> train -> sample -> eval), then
# interpret heads / neurons and the HTML report (runs/demo/model/report.html). Each
# stage prints its time; a re-run skips what is done and resumes training.
# DEMO_OUT names the pipeline folder, DEMO_TIME caps training time (the result
# is decided by the recipe's token budget, not by the clock).
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(run --recipe demo --run "${DEMO_OUT:-runs/demo}")
[ -n "${DEMO_TIME:-}" ] && ARGS+=(--time "$DEMO_TIME")
.venv/bin/tinystories "${ARGS[@]}"
# Interpretability and the one-page report of the trained model.
MODEL="${DEMO_OUT:-runs/demo}/model"
scripts/timed interpret-heads .venv/bin/tinystories interpret heads --run "$MODEL" >/dev/null
scripts/timed interpret-neurons .venv/bin/tinystories interpret neurons --run "$MODEL" >/dev/null
scripts/timed report .venv/bin/tinystories report --run "$MODEL"
