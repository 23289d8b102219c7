#!/usr/bin/env bash
# docs/PRETRAINED.md, "verified decoding": dense fp32, the head cast to bf16, approximate and verified
# greedy decoding, end to end in one run (heads interleaved), on SmolLM2-135M-Instruct (real
# weights, batch 1 and 16, identity against its own generate() on 64 pydocs test prompts) and at
# the Gemma-3-270M and Llama-3.2-1B shapes with synthetic clustered heads (studies/verified.py says
# how they are built). One core, one thread; about 40 minutes.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
taskset -c ${CORE:-1} python -m vqlogits.studies.verified docs/pretrained ${CACHE:-$HOME/.cache/vqlogits}
