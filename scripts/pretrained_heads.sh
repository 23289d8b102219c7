#!/usr/bin/env bash
# docs/PRETRAINED.md, "any head, any budget": SmolLM2-135M-Instruct compressed with vq, hybrid and
# hybrid-twolevel at 8.5%, 5% and 2% of the head's parameters, each with and without the learned
# map in stage 1. Calibration budget per model: STAGE1_MIN + STAGE2_MIN = 30 CPU-minutes by default
# (stage 1: the head on cached hidden states; stage 2: the last 4 blocks + norm + head).
# Resumable: a finished step is skipped; calibration resumes its own time budget.
# Each stage is evaluated on the first 8,192 tokens of the pydocs test split, the final model on all of it
# (~69k tokens). Cost: about 45 minutes per model on one core: 18 models ~ 13.5 h.
# One job on one core (CORE, one thread), so a CPU-minute is a minute of one core.
set -euo pipefail
OUT=${OUT:-runs/pretrained-heads}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
vqlogits() { taskset -c "${CORE:-0}" vqlogits "$@"; }  # taskset runs the installed command, not this function
STAGE1_MIN=${STAGE1_MIN:-9}
STAGE2_MIN=${STAGE2_MIN:-21}
BUDGETS=${BUDGETS:-0.085 0.05 0.02}
HEADS=${HEADS:-hybrid-twolevel hybrid vq}
LEARNS=${LEARNS:-50 0}  # MapLearner reassignment interval in stage 1; 0 keeps the k-means map
EVAL="--corpus pydocs --max-tokens 8192"
into() { "${@:2}" > "$1.tmp" && mv "$1.tmp" "$1"; }  # into FILE CMD...: FILE appears only once CMD has finished
for B in $BUDGETS; do for H in $HEADS; do for LEARN in $LEARNS; do
  D=$OUT/smollm2-$H-b$B-learn$LEARN
  [ -f "$D/vqlogits.json" ] || vqlogits compress --model smollm2 --head $H --head-budget $B --corpus pydocs --out "$D"
  [ -s "$D/eval_kmeans.json" ] || into "$D/eval_kmeans.json" vqlogits eval "$D" $EVAL --json
  # if-blocks, not `[ ] || { a && b; }`: set -e ignores a failure left of &&, so a failed
  # calibration (a full disk, here) went on to evaluate the model of the stage before.
  if [ ! -s "$D/eval_stage1.json" ]; then
    vqlogits calibrate "$D" --corpus pydocs --stages 1 --budget-minutes $STAGE1_MIN --reassign-every $LEARN
    into "$D/eval_stage1.json" vqlogits eval "$D" $EVAL --json
  fi
  if [ ! -s "$D/eval_stage2.json" ]; then
    vqlogits calibrate "$D" --corpus pydocs --stages 2 --budget-minutes $STAGE2_MIN --train-layers 4
    into "$D/eval_stage2.json" vqlogits eval "$D" $EVAL --json
  fi
  [ -s "$D/eval_full.json" ] || into "$D/eval_full.json" vqlogits eval "$D" --corpus pydocs --max-tokens 1000000 --json  # the whole test split
  [ -s "$D/generation.txt" ] || into "$D/generation.txt" vqlogits generate "$D" "The os module provides" --max-new-tokens 40
  rm -f "$D"/calib_stage*.pt.prev  # a fallback only while a stage runs; ~1 GB a model, and 18 filled this disk
done; done; done
# The report covers the models in $OUT only: a partial run on a new machine reports elsewhere (REPORT=...).
vqlogits report "$OUT" --out "${REPORT:-docs/pretrained/heads}"
