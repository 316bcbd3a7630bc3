#!/usr/bin/env bash
# Runs every benchmark in turn (never two at once: they time a shared CPU). Each
# writes benchmarks/results/<name>.json and prints the table that
# benchmarks/README.md quotes. The 10-minute learning curves (curve_small.py)
# are not part of this loop; run them on their own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for b in benchmarks/bench_*.py; do
  scripts/timed "$(basename "$b" .py)" "$PY" "$b"
done
