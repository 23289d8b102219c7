#!/usr/bin/env bash
# The equal-compute study behind docs/RESULTS.md ("At equal compute"): which design gives the best
# small LM when training FLOPs per token are held at the `tiny` dense model's? Every design trains
# at 15,335,424 FLOPs per token (tiny, V = 16,384, context 128: 72 L d^2 + 12 L T d + 6 V d),
# within 10% (model.size_body solves the depth at the width given), on devdocs, and is scored in
# bits per byte of the test split, so tokenizers compare.
#
#   scripts/equal_compute.sh designs   # seed 0 of every design, one WSD chain each
#   scripts/equal_compute.sh seeds     # seeds 1 and 2 of the best dense and the best cheap-head design
#                                   # (BEST, SEEDS and WSD_STEPS name others, e.g. a third seed at 4k only)
#   scripts/equal_compute.sh report    # docs/results/equal_compute/{summary.json, report.md, PNGs}
#                                   # (decode speed needs an idle core; KEEP_SPEED=1 keeps the last one's)
#
# Resumable: rerun the same stage (restart it at the start of each session). Finished budgets are
# skipped; only their results.json files are kept in git (runs/.gitignore), so a new machine
# resumes at the last finished budget and retrains a chain's stable phase if its snapshot is gone.
#
# Protocol (as scripts/converged.sh): context 128, 16 sequences per step (2,048 tokens), AdamW lr 2e-3,
# 200 warm-up steps, WSD with the last 20% of each budget decaying to 0.1 lr, one job per core
# (taskset, one thread). Budgets: 1k, 2k, 4k steps = 2.0M, 4.1M, 8.2M tokens, i.e. 3.1e13, 6.3e13,
# 1.26e14 training FLOPs; the largest is 2x the converged benchmark's largest (4.1M tokens).
# Test: the whole test split (1.42M tokens with bpe:16384); validation: its first 262,144 tokens.
#
# Designs (width 128 unless named; the freed FLOPs become layers):
#   dense-v16k-tiny     dense, bpe:16384, tiny (2 layers, d = 128)
#   dense-v16k-d96      dense, bpe:16384, d = 96, deeper (narrower and deeper)
#   dense-v8k           dense, bpe:8192, deeper
#   dense-v4k           dense, bpe:4096, deeper
#   adaptive            adaptive softmax, bpe:16384, deeper
#   vq5-learned         vq with the learned map at 5% of the dense head, deeper
#   ht5-learned         hybrid-twolevel with the learned map at 5%, deeper
#
# Budget, one core (measured, 1 thread, with another job on the other core: 2.0-3.7k tok/s at
# these shapes; dense tiny is the slowest per FLOP at 2.0k). A chain to 4k steps trains
# 0.8 * 4k + 0.2 * 7k = 4.6k steps = 9.4M tokens, plus ~3 min of evaluation per budget:
#   designs: 7 chains x ~1.1 h                        ~ 7.5 h
#   seeds:   2 designs x 2 more seeds x ~1.1 h        ~ 4.5 h
#   4k only: third seeds of the best two at 4k steps  ~ 2 x 1 h (BEST=... SEEDS=2 WSD_STEPS=4000),
#            and seeds 1 and 2 of adaptive at 4k     ~ 2 x 0.7 h (BEST=adaptive SEEDS=1,2 WSD_STEPS=4000)
#   total                                            ~ 15.5 h of one core
set -euo pipefail
STAGE=${1:?usage: scripts/equal_compute.sh designs|seeds|report}
OUT=${OUT:-docs/results/equal_compute/runs}
CORE=${CORE:-0}
CACHE=${CACHE:-$HOME/.cache/vqlogits}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
F=15335424
C="--corpus devdocs --cache $CACHE --model tiny --block-size 128 --batch-size 16 --lr 0.002
   --warmup-steps 200 --eval-every 1000 --eval-tokens 32768 --checkpoint-every 500
   --final-eval-tokens 4194304 --final-val-tokens 262144 --wsd-steps ${WSD_STEPS:-1000,2000,4000}"
DESIGNS="dense-v16k-tiny vq5-learned ht5-learned dense-v8k dense-v4k adaptive dense-v16k-d96"

options() {
  local grown="--d-model 128 --flops-per-token $F"
  case $1 in
    dense-v16k-tiny) echo "--tokenizer bpe:16384 --heads dense" ;;
    dense-v16k-d96)  echo "--tokenizer bpe:16384 --heads dense --d-model 96 --flops-per-token $F" ;;
    dense-v8k)       echo "--tokenizer bpe:8192 --heads dense $grown" ;;
    dense-v4k)       echo "--tokenizer bpe:4096 --heads dense $grown" ;;
    adaptive)        echo "--tokenizer bpe:16384 --heads adaptive $grown" ;;
    vq5-learned)     echo "--tokenizer bpe:16384 --heads vq --head-budgets 0.05 --reassign 100 $grown" ;;
    ht5-learned)     echo "--tokenizer bpe:16384 --heads hybrid-twolevel --head-budgets 0.05 --reassign 100 $grown" ;;
    *) echo "unknown design $1" >&2; return 2 ;;
  esac
}

train() {  # design, seeds
  opts=$(options "$1")
  echo "== $1 seeds $2 ($(date -u +%H:%M))"
  taskset -c "$CORE" vqlogits sweep $C $opts --seeds "$2" --out "$OUT/$1" > /dev/null
}

case $STAGE in
  designs)
    for d in $DESIGNS; do train "$d" 0; done ;;
  seeds)
    # The best dense and the best cheap-head design at the largest budget, from the report.
    BEST=${BEST:-$(python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["best_dense"], s["best_cheap"])' docs/results/equal_compute/summary.json)}
    for d in $BEST; do train "$d" "${SEEDS:-1,2}"; done ;;
  report)
    taskset -c "$CORE" vqlogits equal-compute "$OUT" --out docs/results/equal_compute ${KEEP_SPEED:+--no-speed} ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
