#!/usr/bin/env bash
# The runs behind docs/RESULTS.md. Resumable: rerunning skips finished runs and resumes broken ones.
set -euo pipefail
OUT=${OUT:-runs/results/pydocs-bpe16k}
COMMON="--corpus pydocs --tokenizer bpe:16384 --model tiny --steps 1500 --eval-every 250 --checkpoint-every 250 --final-eval-tokens 65536 --out $OUT"
V=vqlogits
# Codebook size K in {V/256, V/64, V/16, V/4} with a random balanced map, against dense; 2 seeds.
$V sweep $COMMON --heads dense,vq --codebook-sizes 64,256,1024,4096 --mappings random --seeds 0,1
# Bias off; fixed maps (frequency-interleaved, k-means of a dense head after a 300-step warm-up); learned map.
$V sweep $COMMON --heads vq --codebook-sizes 1024 --mappings random --bias false --seeds 0,1
$V sweep $COMMON --heads vq --codebook-sizes 1024 --mappings frequency,kmeans --seeds 0,1
$V sweep $COMMON --heads vq --codebook-sizes 1024 --mappings random --reassign 100 --seeds 0,1
# Baselines named by the paper: adaptive softmax, and a low-rank head of about VQ K=1024's size (r=9).
$V sweep $COMMON --heads adaptive,lowrank --rank 9 --seeds 0,1
