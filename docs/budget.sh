#!/usr/bin/env bash
# Beyond the paper: every head at equal parameter budgets, same model, tokens and seeds as RESULTS.md,
# with fixed maps and with the learned map (--reassign 100). Resumable.
set -euo pipefail
OUT=${OUT:-runs/results/budget}
SEEDS=${SEEDS:-0,1}
COMMON="--corpus pydocs --tokenizer bpe:16384 --model tiny --steps 1500 --eval-every 500 --checkpoint-every 500
  --final-eval-tokens 65536 --out $OUT --head-budgets 0.005,0.01,0.02,0.05,0.1 --seeds $SEEDS"
vqlogits sweep $COMMON --heads vq,hybrid,twolevel,hybrid-twolevel,vq-lowrank,rvq,lowrank
vqlogits sweep $COMMON --heads vq,hybrid,twolevel,hybrid-twolevel,vq-lowrank,rvq --reassign 100
