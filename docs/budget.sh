#!/usr/bin/env bash
# Beyond the paper: every head at equal parameter budgets, same model, tokens and seed as RESULTS.md.
# Resumable; add seeds with SEEDS=0,1.
set -euo pipefail
OUT=${OUT:-runs/results/budget}
SEEDS=${SEEDS:-0}
vqlogits sweep --corpus pydocs --tokenizer bpe:16384 --model tiny --steps 1500 --eval-every 500 --checkpoint-every 500 \
  --final-eval-tokens 65536 --out "$OUT" --heads vq,hybrid,twolevel,vq-lowrank,rvq,lowrank \
  --head-budgets 0.005,0.01,0.02,0.05,0.1 --seeds "$SEEDS"
