#!/usr/bin/env bash
# docs/PRETRAINED.md, "accelerate or compress": IndexedHead on SmolLM2-135M-Instruct (pydocs test
# split: agreement, certification, rows read, TV distance, head and decode speed) and decode speed
# at the Gemma-3-270M and Llama-3.2-1B shapes (random weights). About 20 minutes on one core.
set -euo pipefail
OMP_NUM_THREADS=${THREADS:-2} taskset -c ${CORES:-0,1} python -m vqlogits.studies.accelerate docs/pretrained
