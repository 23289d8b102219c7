#!/usr/bin/env bash
# The converged benchmark behind docs/RESULTS.md: devdocs, bpe:16384, every head at five token
# budgets from one WSD chain per run. Resumable: rerun the same stage and it continues where it
# stopped (finished budgets are skipped, a broken one resumes from its last checkpoint).
#
#   scripts/converged.sh all      # everything below, in this order, on one core
#   scripts/converged.sh dense    # the dense baseline: SEEDS (default 0,1,2), convergence and seed spread
#   scripts/converged.sh heads    # every head, seed 0
#   scripts/converged.sh seeds    # seeds 1 and 2 of the best two heads and of the learned vq at 2% and 5%
#   scripts/converged.sh cosine   # a separate cosine run (COSINE_STEPS, default 8000), to check the WSD cool-downs against
#   scripts/converged.sh report   # docs/results/converged/{summary.json, report.md, PNGs}
#
# One job per core (taskset + one thread), so tokens_per_s means the same in every run; each
# results.json records its cores, threads and the load average (host).
#
# Protocol: model `tiny` (2 layers, d = 128) with context 128 and 16 sequences per step (2,048
# tokens), lr 2e-3, 200 warm-up steps, WSD with the last 20% of each budget decaying to 0.1 lr.
# Budgets: 1k, 2k, 4k, 8k, 16k steps = 2.0M, 4.1M, 8.2M, 16.4M, 32.8M tokens (train split: 25.2M).
# WSD_STEPS=1000,2000 runs a shorter chain (its budgets are the same runs as the long chain's).
#
# Budget, one core (measured 1 thread: dense 3.1k tok/s, vq at 2% ~14k, hybrid-twolevel at 2% ~12k
# before the learned map's statistics). A chain to 16k steps costs 0.8 * 16k + 0.2 * 31k = 19k
# steps = 38.9M tokens:
#   dense, 3 seeds                      3 x 3.5 h  = 10.5 h
#   7 head chains (seed 0)              7 x ~1.2 h =  8.5 h
#   2 heads x 2 more seeds              4 x ~1.2 h =  5 h
#   cosine dense at 8k steps (16.4M)                  1.5 h
#   total                                            ~26 h of one core; two cores: ~13 h of wall time
set -euo pipefail
STAGE=${1:?usage: scripts/converged.sh dense|heads|seeds|cosine|report}
OUT=${OUT:-runs/converged}
CORE=${CORE:-0}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
V="taskset -c $CORE vqlogits"
C="--corpus devdocs --tokenizer bpe:16384 --model tiny --block-size 128 --batch-size 16 --lr 0.002
   --warmup-steps 200 --eval-every 1000 --eval-tokens 32768 --checkpoint-every 500
   --final-eval-tokens 262144 --out $OUT"
CHAIN="--wsd-steps ${WSD_STEPS:-1000,2000,4000,8000,16000}"
case $STAGE in
  all)
    # Dense seed 0 first (it decides whether the protocol converges), then every head, then the
    # seeds that measure the spread, then the cosine check.
    for s in "dense SEEDS=0" heads "dense SEEDS=1,2" seeds cosine; do
      set -- $s
      env ${2:-} bash "$0" "$1"
    done ;;
  dense)
    $V sweep $C $CHAIN --heads dense --seeds ${SEEDS:-0,1,2} ;;
  heads)
    # Ours: the learned map at 2% and 5% of the dense head.
    $V sweep $C $CHAIN --heads vq,hybrid-twolevel --head-budgets 0.02,0.05 --reassign 100 --seeds 0
    # The paper's vq with fixed maps (random, frequency) at the same sizes, and its K ablation.
    $V sweep $C $CHAIN --heads vq --head-budgets 0.02 --mappings random,frequency --seeds 0
    $V sweep $C $CHAIN --heads adaptive --seeds 0
    $V sweep $C $CHAIN --heads vq --head-budgets 0.01,0.05,0.1 --seeds 0 ;;
  seeds)
    # The best two heads at the largest budget (adaptive; hybrid-twolevel learned at 5%), then the
    # learned vq at our goal's 2% and at 5%.
    $V sweep $C $CHAIN --heads adaptive --seeds 1,2
    $V sweep $C $CHAIN --heads hybrid-twolevel --head-budgets 0.05 --reassign 100 --seeds 1,2
    $V sweep $C $CHAIN --heads vq --head-budgets 0.02,0.05 --reassign 100 --seeds 1,2 ;;
  cosine)
    S=${COSINE_STEPS:-8000}
    $V train $C --head dense --steps $S --seed 0 --out $OUT/cosine/dense-s0-steps$S ;;
  report)
    vqlogits report $OUT --out docs/results/converged ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
