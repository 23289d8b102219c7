#!/usr/bin/env bash
# docs/PRETRAINED.md, "A 262k vocabulary at equal bytes": Gemma-3-270M's head (262,144 x 640; Q8_0
# in the GGUF) as quantized heads (8, 4, 3, 2 bits, groups of 32), frequent-token rows (the N most
# frequent pydocs tokens keep exact rows, the rest share one code plus a bias), hybrid and
# hybrid-twolevel heads with 4-bit parts at the same budgets, and the paper's vq at 1% and 5%.
# Every model is evaluated uncalibrated and after the same calibration (STAGE1_STEPS steps of
# stage 1 on 32,768 cached hidden states of the pydocs train split) on two domains: the whole
# pydocs test split (the calibration domain) and the first DEVDOCS_TOKENS tokens of the devdocs
# test split (another domain), the same tokens for every model.
#
# Budget: one core, one thread (CORE). Cost on this CPU: a quantized or frequent-token model about
# 40 minutes (two calibrations of the head's 262k rows dominate), a k-means head 1-2 hours more;
# ~15 h in all, more than one machine's session.
# Resumable, across machines too: the model folders live in OUT (not kept), and what the report
# needs, each model's vqlogits.json and eval_*.json, is written to KEEP, which is kept in git. A
# model whose four evaluations are in KEEP is skipped; a half-done one resumes from OUT if OUT still
# holds it, else it is rebuilt. KEEP/commits names, for every result file, the commit whose code
# wrote it; the study runs a clean checkout of one commit, so editing the repository does not
# change it mid-run. From the repository root:
#   git worktree add --detach ../study HEAD
#   PATH=$PWD/.venv/bin:$PATH PYTHONPATH=../study/src CORE=1 bash ../study/scripts/pretrained_bytes_gemma.sh
# A second job on the other core takes other models: ONLY="name ..." (the names below; it picks,
# the order stays the script's).
set -euo pipefail
OUT=${OUT:-runs/pretrained-bytes-gemma}
KEEP=${KEEP:-docs/pretrained/bytes-gemma/measured}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
vqlogits() { taskset -c "${CORE:-1}" vqlogits "$@"; }
STAGE1_STEPS=${STAGE1_STEPS:-250}
DEVDOCS_TOKENS=${DEVDOCS_TOKENS:-65536}
into() {  # file, command: the command's output, written whole, and the commit that wrote it
  "${@:2}" > "$1.tmp" && mv "$1.tmp" "$1" && echo "${1#"$KEEP"/} $commit" >> "$KEEP/commits"
}
only() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
kept() { [ -s "$KEEP/$1/eval_$2.json" ] && [ -s "$KEEP/$1/eval_$2-devdocs.json" ]; }
evals() {  # name, stage: both domains, written to KEEP
  local D=$OUT/$1 K=$KEEP/$1
  mkdir -p "$K" && cp "$D/vqlogits.json" "$K/vqlogits.json"
  [ -s "$K/eval_$2.json" ] || into "$K/eval_$2.json" vqlogits eval "$D" --corpus pydocs --max-tokens 1000000 --json
  [ -s "$K/eval_$2-devdocs.json" ] || into "$K/eval_$2-devdocs.json" vqlogits eval "$D" --corpus devdocs --max-tokens $DEVDOCS_TOKENS --json
}
model() {  # name, calibrate options, compress options...
  only "$1" || return 0
  local name=$1 D=$OUT/$1 cal=$2; shift 2
  kept "$name" kmeans && kept "$name" stage1 && return 0
  [ -f "$D/vqlogits.json" ] || vqlogits compress --model gemma3 --corpus pydocs --out "$D" "$@"
  kept "$name" kmeans || evals "$name" kmeans
  [ -f "$D/calib_done" ] || vqlogits calibrate "$D" --corpus pydocs --stages 1 --max-steps $STAGE1_STEPS --budget-minutes 600 $cal
  touch "$D/calib_done"
  evals "$name" stage1
}
mkdir -p "$OUT" "$KEEP"
src=$(python -c 'import vqlogits, pathlib; print(pathlib.Path(vqlogits.__file__).parent)')
commit=$(git -C "$src" rev-parse HEAD)
[ -z "$(git -C "$src" status --porcelain --untracked-files=no)" ] || { echo "$src has uncommitted changes: run a clean checkout (git worktree add --detach DIR HEAD; PYTHONPATH=DIR/src)" >&2; exit 2; }
if only bf16; then
  [ -s "$KEEP/bf16.json" ] || into "$KEEP/bf16.json" taskset -c "${CORE:-1}" python -m vqlogits.studies.cast gemma3 bfloat16 pydocs
  [ -s "$KEEP/bf16-devdocs.json" ] || into "$KEEP/bf16-devdocs.json" taskset -c "${CORE:-1}" python -m vqlogits.studies.cast gemma3 bfloat16 devdocs $DEVDOCS_TOKENS
fi
# Cheapest and most decisive first: the original's own rows at 8 bits, frequent-token rows (no
# k-means), then the lower widths, then the k-means heads.
model q8-g32 "" --head quantized --bits 8 --group-size 32
for F in 0.2 0.1 0.05; do model frequent-b$F-parts4 "--reassign-every 0" --head frequent --head-budget $F --part-bits 4; done
for B in 4 2 3; do model q$B-g32 "" --head quantized --bits $B --group-size 32; done
model vq-b0.01 "--reassign-every 0" --head vq --head-budget 0.01
for F in 0.05 0.1 0.2; do model hybrid-b$F-parts4 "--reassign-every 0" --head hybrid --head-budget $F --part-bits 4; done
for F in 0.05 0.1 0.2; do model ht-b$F-parts4 "--reassign-every 0" --head hybrid-twolevel --head-budget $F --part-bits 4; done
model vq-b0.05 "--reassign-every 0" --head vq --head-budget 0.05
REPORT=${REPORT:-docs/pretrained/bytes-gemma}
vqlogits report "$KEEP" --out "$REPORT"
