#!/usr/bin/env bash
# The runs behind docs/PRETRAINED.md: SmolLM2-135M-Instruct, VQ head at three K, three stages each.
set -euo pipefail
OUT=${OUT:-runs/pretrained}
STAGE1_MIN=${STAGE1_MIN:-2}
STAGE2_MIN=${STAGE2_MIN:-6}
EVAL="--corpus pydocs --max-tokens 8192"
for K in 1024 256 4096; do
  D=$OUT/smollm2-vq$K
  rm -rf "$D"
  vqlogits compress --model smollm2 --codebook-size $K --out "$D"
  vqlogits eval "$D" $EVAL --json > "$D/eval_kmeans.json"
  vqlogits calibrate "$D" --corpus pydocs --stages 1 --budget-minutes $STAGE1_MIN
  vqlogits eval "$D" $EVAL --json > "$D/eval_stage1.json"
  vqlogits calibrate "$D" --corpus pydocs --stages 2 --budget-minutes $STAGE2_MIN --train-layers 4
  vqlogits eval "$D" $EVAL --json > "$D/eval_stage2.json"
  vqlogits generate "$D" "The os module provides" --max-new-tokens 40 > "$D/generation.txt"
done
