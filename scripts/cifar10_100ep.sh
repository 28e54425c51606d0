#!/usr/bin/env bash
# Issue 9's two 100-epoch CIFAR-10 ResNet-20 runs (full training set), ReCU and tau = 1, side by side,
# one thread each, started or resumed (--resume when last.pt exists), each stopping cleanly within
# TIME_LIMIT (default 2h25m: a 3-hour work period less the time to commit). Logs append to
# docs/runs/<name>.log. bf16 binary convolutions where the CPU has AMX/bf16 units (docs/results.md: no
# detectable accuracy cost), float32 elsewhere; every segment's CPU and settings go to docs/results.md.
# Usage: RECU_CIFAR10_DIR=... scripts/cifar10_100ep.sh [TIME_LIMIT]     (returns at once; runs in background)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RECU_CIFAR10_DIR:?point RECU_CIFAR10_DIR at cifar-10-batches-py}"
LIMIT="${1:-2h25m}"
OUT=docs/runs
DTYPE=float32
grep -q amx_bf16 /proc/cpuinfo && DTYPE=bfloat16
start() {
  local name="$1"; shift
  local resume=""
  [ -f "$OUT/$name/last.pt" ] && resume="--resume"
  echo "# segment started $(date -u +%FT%TZ) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs),"\
       "binary.compute_dtype=$DTYPE, time limit $LIMIT" >> "$OUT/$name.log"
  OMP_NUM_THREADS=1 nohup recu train -c configs/cifar10_resnet20_100ep.yaml --set out_dir=$OUT --set name="$name" \
    --set binary.compute_dtype=$DTYPE --set progress=false --time-limit "$LIMIT" $resume "$@" \
    >> "$OUT/$name.log" 2>&1 &
  echo "$name: pid $!"
}
start r20_recu_full_e100_s0
start r20_tau1_full_e100_s0 --set tau_schedule=constant --set tau_start=1.0
