#!/usr/bin/env bash
# TinyStories-Instruct end to end at demo scale, offline on the CPU:
# procedural stories -> a story model -> OOD Instruct records (Words never with
# Summary) -> fine-tune with --init -> `eval instruct` of both models on
# in-distribution and OOD sets made from held-out stories.
# OUT names the work folder (default runs/instruct-demo); TS is the command.
set -euo pipefail
OUT=${OUT:-runs/instruct-demo}
PY=${PY:-python}
TS=${TS:-"$PY -m tinystories"}
# A context of 512: most Instruct records (instructions + story) are longer than 256 tokens of this
# tokenizer (69%), so at 256 most did not fit a training window and most evaluated stories were cut off
# by the context. Batch 8 keeps 4096 tokens per step, as batch 16 x 256 did.
MODEL=(--model-d-model 128 --model-n-layer 4 --model-n-head 4 --model-n-kv-head 4 --model-max-seq-len 512)
COMMON=(--batch-size 8 --lr 2e-3 --eval-interval 200 --eval-tokens 40000 --log-interval 50 --ckpt-interval 200 --no-progress)
mkdir -p "$OUT"
[ -f "$OUT/proc/job.json" ] || $TS synth --backend procedural --n 12000 --out "$OUT/proc" --no-progress
[ -f "$OUT/heldout/job.json" ] || $TS synth --backend procedural --n 50 --start 1000000 --out "$OUT/heldout" --no-progress
[ -f "$OUT/ds/meta.json" ] || $TS tokenize --data "$OUT/proc/stories.txt" --out "$OUT/ds" --vocab-size 1024 --val-fraction 0.05
[ -f "$OUT/inst/stories.txt" ] || $TS synth instruct --data "$OUT/proc" --out "$OUT/inst" --ood --no-progress
[ -f "$OUT/inst-ds/meta.json" ] || $TS tokenize --data "$OUT/inst/stories.txt" --out "$OUT/inst-ds" --tokenizer "$OUT/ds" --val-fraction 0.05
$PY scripts/instruct_sets.py "$OUT/heldout" "$OUT/sets"
[ -d "$OUT/story" ] || $TS train --data "$OUT/ds" --run "$OUT/story" "${MODEL[@]}" "${COMMON[@]}" --max-steps 600 --seed 1
[ -d "$OUT/instruct" ] || $TS train --data "$OUT/inst-ds" --run "$OUT/instruct" --init "$OUT/story" "${COMMON[@]}" --max-steps 400 --seed 2
for run in story instruct; do
  for kind in id ood; do
    $TS eval instruct --run "$OUT/$run" --sets "$OUT/sets/$kind.jsonl" --data "$OUT/inst" --completions 4 \
      --max-new-tokens 300 --no-write --no-progress > "$OUT/$run-$kind.json"
  done
done
