#!/usr/bin/env bash
# Beyond the paper: every head at equal parameter budgets, same model, tokens and seeds as RESULTS.md,
# with fixed maps, with the learned map (--reassign 100), and without the per-token bias. Resumable:
# rerunning skips finished runs and resumes broken ones.
set -euo pipefail
OUT=${OUT:-runs/results/budget}
SEEDS=${SEEDS:-0,1}
C="--corpus pydocs --tokenizer bpe:16384 --model tiny --steps 1500 --eval-every 500 --checkpoint-every 500
  --final-eval-tokens 65536 --out $OUT"
B="--head-budgets 0.005,0.01,0.02,0.05,0.1 --seeds $SEEDS"
vqlogits sweep $C $B --heads vq,hybrid,twolevel,hybrid-twolevel,vq-lowrank,rvq,lowrank
vqlogits sweep $C $B --heads vq,hybrid,twolevel,hybrid-twolevel,vq-lowrank,rvq --reassign 100
vqlogits sweep $C --head-budgets 0.01,0.02,0.05 --seeds 0 --heads hybrid,vq --reassign 100 --bias false
vqlogits sweep $C --head-budgets 0.02,0.05 --seeds $SEEDS --heads hybrid-twolevel --reassign 100 --bias false
# A larger share of tokens moving per reassignment (the 5% cap binds at every reassignment).
vqlogits sweep $C --head-budgets 0.005,0.01,0.02,0.05,0.1 --seeds $SEEDS --heads vq --reassign 100 --reassign-frac 0.2
vqlogits sweep $C --head-budgets 0.02 --seeds 0 --heads hybrid,hybrid-twolevel --reassign 100 --reassign-frac 0.2
vqlogits sweep $C --head-budgets 0.02 --seeds 0 --heads vq --reassign 100 --reassign-frac 0.5
vqlogits report runs/results/pydocs-bpe16k/{dense-s0,dense-s1,adaptive-s0,adaptive-s1} "$OUT" --out docs/results/budget
