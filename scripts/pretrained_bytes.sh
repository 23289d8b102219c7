#!/usr/bin/env bash
# docs/PRETRAINED.md, "at equal bytes": SmolLM2-135M-Instruct's head quantized (8, 4, 3 and 2 bits in
# groups of 32, HQQ rounding; 4 bits in groups of 48 too) against hybrid-twolevel at 20%, 8.5% and 5%
# of the head's parameters, in fp32 and with 4-bit parts (20% with 4-bit parts lands at 4.18 MB,
# next to the 4 MB goal; 8.5% and 5% with 4-bit parts below it), and the head cast to bf16. The GGUF stores the model's blocks as Q4_1
# but this head (the tied token embedding) as Q8_0, blocks of 32: 8 bits in groups of 32 nearly
# reproduce it, 4 bits do not, and groups of 48 straddle its blocks. Every model is evaluated on
# the whole pydocs test split, uncalibrated and after the same calibration: STAGE1_STEPS steps of
# stage 1 (the head on 32,768 cached hidden states of the pydocs train split, 512 per step, CE +
# KL to the original; the hybrids keep their k-means map, a quantized head trains its scales and
# offsets). Resumable: a finished step is skipped. One job on one core (CORE, one thread).
# Cost: about 20 minutes a model (compress 1-3, two evaluations of 4-9, calibration 4-15): 10 models ~ 3.5 h.
# The model folders (~1 GB each) stay on the machine; the report keeps the rows of models measured on
# an earlier machine (its rows.json) unless they are measured again. ONLY="ht-b0.05 ..." runs just
# the models named (bf16 names the reference).
set -euo pipefail
OUT=${OUT:-runs/pretrained-bytes}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
vqlogits() { taskset -c "${CORE:-1}" vqlogits "$@"; }
STAGE1_STEPS=${STAGE1_STEPS:-250}
EVAL="--corpus pydocs --max-tokens 1000000"  # the whole test split (68,864 tokens)
into() { "${@:2}" > "$1.tmp" && mv "$1.tmp" "$1"; }
only() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
model() {  # name, calibrate options, compress options...
  only "$1" || return 0
  local D=$OUT/$1 cal=$2; shift 2
  [ -f "$D/vqlogits.json" ] || vqlogits compress --model smollm2 --corpus pydocs --out "$D" "$@"
  [ -s "$D/eval_kmeans.json" ] || into "$D/eval_kmeans.json" vqlogits eval "$D" $EVAL --json
  if [ ! -s "$D/eval_stage1.json" ]; then
    vqlogits calibrate "$D" --corpus pydocs --stages 1 --max-steps $STAGE1_STEPS --budget-minutes 60 $cal
    into "$D/eval_stage1.json" vqlogits eval "$D" $EVAL --json
  fi
}
mkdir -p "$OUT"
if only bf16 && [ ! -s "$OUT/bf16.json" ]; then
  into "$OUT/bf16.json" taskset -c "${CORE:-1}" python -m vqlogits.studies.cast smollm2 bfloat16
fi
# The decisive models first (a partial run still compares quantization, VQ and both near 4-18 MB).
# 8 bits early: the GGUF stores this head as Q8_0, so q8 is the original's rows, and its stage 1
# measures what the calibration's adaptation to pydocs alone is worth.
for B in 4 2 8; do model q$B-g32 "" --head quantized --bits $B --group-size 32; done
model ht-b0.2-parts4 "--reassign-every 0" --head hybrid-twolevel --head-budget 0.2 --part-bits 4
model ht-b0.085-parts4 "--reassign-every 0" --head hybrid-twolevel --head-budget 0.085 --part-bits 4
# The quick quantized ones (about 10 minutes each) before the slower hybrids.
model q3-g32 "" --head quantized --bits 3 --group-size 32
model q4-g48 "" --head quantized --bits 4 --group-size 48
model ht-b0.05-parts4 "--reassign-every 0" --head hybrid-twolevel --head-budget 0.05 --part-bits 4
for F in 0.085 0.05; do model ht-b$F "--reassign-every 0" --head hybrid-twolevel --head-budget $F; done
REPORT=${REPORT:-docs/pretrained/bytes}
vqlogits report "$OUT" --out "$REPORT" $([ -f "$REPORT/rows.json" ] && echo --previous "$REPORT/rows.json")
