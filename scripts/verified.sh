#!/usr/bin/env bash
# docs/PRETRAINED.md, "verified decoding": dense fp32, the head cast to bf16, approximate and verified
# greedy decoding, end to end in one run (heads interleaved), on SmolLM2-135M-Instruct (real
# weights, batch 1 and 16, identity against its own generate() on 64 pydocs test prompts) and at
# the Gemma-3-270M and Llama-3.2-1B shapes with synthetic clustered heads (studies/verified.py says
# how they are built). One core, one thread; about 40 minutes.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -n "${GEMMA:-}" ] || taskset -c ${CORE:-1} python -m vqlogits.studies.verified docs/pretrained ${CACHE:-$HOME/.cache/vqlogits}
# Real Gemma-3-270M (GEMMA=1): its head indexed by `vqlogits accelerate` (peak memory and time
# printed; the Q8_0 rows written in 8 bits), then every decoding mode (dense fp32 and bf16, the head
# cast, q8 and q4 heads, approximate, verified fp32 and bf16) at batch 1, 4 and 16 on pydocs and
# devdocs test prompts, the identity checks in both dtypes on 64 prompts of each, and the probes
# of the drafts (studies/gemma_decoding.py); about an hour.
if [ -n "${GEMMA:-}" ]; then
  D=${GEMMA_FOLDER:-runs/gemma-fast8}
  [ -f "$D/vqlogits.json" ] || /usr/bin/time -f "accelerate: %e s, peak %M KB" taskset -c ${CORE:-1} \
    vqlogits accelerate --model gemma3 --out "$D" --cache ${CACHE:-$HOME/.cache/vqlogits}
  du -b "$D"/*.safetensors
  taskset -c ${CORE:-1} python -m vqlogits.studies.gemma_decoding "$D" docs/pretrained/gemma
fi
