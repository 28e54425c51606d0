#!/usr/bin/env bash
# The short-budget CIFAR-10 ResNet-20 runs of docs/results.md and docs/claims.md, one after another.
# Usage: RECU_CIFAR10_DIR=... scripts/cifar10_short_budget.sh [EPOCHS] [SEED] [SUBSET]
# SUBSET trains on that many training images (a fixed seeded subset; "null" = all 50,000);
# the test set is always the full 10,000 images.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${1:-10}"
SEED="${2:-0}"
SUBSET="${3:-null}"
TAG="e${EPOCHS}_s${SEED}"
[ "$SUBSET" != "null" ] && TAG="n${SUBSET}_${TAG}"
OUT=docs/runs
run() {
  local name="$1"; shift
  if [ -f "$OUT/$name/metrics.jsonl" ] && [ "$(wc -l < "$OUT/$name/metrics.jsonl")" -ge "$EPOCHS" ]; then return; fi
  local resume=""
  [ -f "$OUT/$name/last.pt" ] && resume="--resume"
  recu train -c configs/cifar10_resnet20_short.yaml --set out_dir=$OUT --set name="$name" \
    --set epochs="$EPOCHS" --set seed="$SEED" --set subset="$SUBSET" --set data_dir="$RECU_CIFAR10_DIR" $resume "$@" \
    >> "$OUT/$name.log" 2>&1
}
run "r20_recu_${TAG}"
run "r20_tau1_${TAG}" --set tau_schedule=constant --set tau_start=1.0
run "r20_fp_${TAG}" --set model=resnet20_fp
run "r20_mask_${TAG}" --set binary.clamp=mask
run "r20_clampste_${TAG}" --set binary.clamp=clamp_ste
