#!/usr/bin/env bash
# Exact rows for the most frequent tokens + k-means for the rest, at the same K (same head size).
set -euo pipefail
OUT=${OUT:-runs/pretrained}
STAGE1_MIN=${STAGE1_MIN:-2}
EVAL="--corpus pydocs --max-tokens 8192"
for KN in 1024:512 4096:2048; do
  K=${KN%:*}; N=${KN#*:}
  D=$OUT/smollm2-vq$K-exact$N
  rm -rf "$D"
  vqlogits compress --model smollm2 --codebook-size $K --exact-tokens $N --corpus pydocs --out "$D"
  vqlogits eval "$D" $EVAL --json > "$D/eval_kmeans.json"
  vqlogits calibrate "$D" --corpus pydocs --stages 1 --budget-minutes $STAGE1_MIN
  vqlogits eval "$D" $EVAL --json > "$D/eval_stage1.json"
  vqlogits generate "$D" "The os module provides" --max-new-tokens 40 > "$D/generation.txt"
done
# Stage 2 for the best K = 4096 variant.
D=$OUT/smollm2-vq4096-exact2048
vqlogits calibrate "$D" --corpus pydocs --stages 2 --budget-minutes ${STAGE2_MIN:-6} --train-layers 4
vqlogits eval "$D" $EVAL --json > "$D/eval_stage2.json"
vqlogits generate "$D" "The os module provides" --max-new-tokens 40 > "$D/generation.txt"
