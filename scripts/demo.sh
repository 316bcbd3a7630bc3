#!/usr/bin/env bash
# The pipeline as it exists so far, offline on the CPU: tokenize real
# TinyStories text, train a tiny model, sample from it, evaluate its loss.
set -euo pipefail
cd "$(dirname "$0")/.."
TS=".venv/bin/tinystories"
DATA="${TINYSTORIES_TESTDATA:-../shared/data}/tinystories/TinyStories-valid.first201.txt"
OUT="${DEMO_OUT:-runs/demo}"
[ -f "$DATA" ] || { echo "demo: $DATA not found (set TINYSTORIES_TESTDATA)" >&2; exit 2; }
rm -rf "$OUT"
mkdir -p "$OUT"
scripts/timed tokenize $TS tokenize --data "$DATA" --vocab-size 512 --out "$OUT/data"
scripts/timed train $TS train --data "$OUT/data" --run "$OUT/run" --preset llama-260k --time "${DEMO_TIME:-3m}"
scripts/timed sample $TS sample --run "$OUT/run" --prompt "Once upon a time" -n 2 --max-new-tokens 120 --temperature 0.8 --top-p 0.9
scripts/timed eval-loss $TS eval loss --run "$OUT/run" --data "$DATA"
