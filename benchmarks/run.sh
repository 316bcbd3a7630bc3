#!/usr/bin/env bash
# Runs every benchmark in turn (never two at once: they time a shared CPU),
# then rebuilds the table in benchmarks/README.md from benchmarks/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for b in benchmarks/bench_*.py; do
  scripts/timed "$(basename "$b" .py)" "$PY" "$b"
done
