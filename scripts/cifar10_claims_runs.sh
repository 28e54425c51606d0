#!/usr/bin/env bash
# Issue 22's runs (docs/claims.md): seeds 1-3 of ReCU and tau = 1 at 100 epochs, the float twin, and
# the centring/standardisation set at 30 epochs, all on full CIFAR-10 with configs/cifar10_resnet20_100ep.yaml.
# Two lanes, one thread each, so the two runs of a seed train side by side with the same settings. Each
# lane walks its list: a finished run (its log ends with "final test top-1") is skipped, an unfinished
# one is started or resumed (--resume when last.pt exists) with the time left until the deadline, and
# the lane goes on to the next run only when that one finished. Logs append to docs/runs/<name>.log,
# each segment headed by its start time, CPU and settings (docs/results.md records them).
# bf16 binary convolutions where the CPU has AMX-BF16 (as the seed-0 runs), float32 elsewhere.
# Usage: RECU_CIFAR10_DIR=... scripts/cifar10_claims_runs.sh [TIME_LIMIT]   (returns at once; lanes run in
# background; TIME_LIMIT from now, default 2h25m: a 3-hour work period less the time to commit)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RECU_CIFAR10_DIR:?point RECU_CIFAR10_DIR at cifar-10-batches-py}"
LIMIT="${1:-2h25m}"
OUT=docs/runs
command -v recu > /dev/null || { echo "recu is not on PATH: activate its environment (. .venv/bin/activate)"; exit 1; }
SECONDS_LEFT=$("$(dirname "$(command -v recu)")/python" -c \
  "from recu.train.config import parse_duration as p; print(int(p('$LIMIT')))")
DEADLINE=$(( $(date +%s) + SECONDS_LEFT ))
DTYPE=float32
grep -q amx_bf16 /proc/cpuinfo && DTYPE=bfloat16
TAU1="--set tau_schedule=constant --set tau_start=1.0"
CENTER_ONLY="--set binary.standardize=false"
STANDARDIZE_ONLY="--set binary.center=false"
NEITHER="--set binary.center=false --set binary.standardize=false"

finished() { [ -f "$OUT/$1.log" ] && grep -q "^final test top-1" "$OUT/$1.log"; }

# one run: NAME [overrides...]; returns 0 when the run finished, 1 when it stopped for time or failed
run() {
  local name="$1"; shift
  finished "$name" && return 0
  local left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -lt 600 ] && return 1
  local resume=""
  [ -f "$OUT/$name/last.pt" ] && resume="--resume"
  echo "# segment started $(date -u +%FT%TZ) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs),"\
       "binary.compute_dtype=$DTYPE, time limit ${left}s" >> "$OUT/$name.log"
  OMP_NUM_THREADS=1 recu train -c configs/cifar10_resnet20_100ep.yaml --set out_dir=$OUT --set name="$name" \
    --set binary.compute_dtype=$DTYPE --set progress=false --time-limit "$left" $resume "$@" \
    >> "$OUT/$name.log" 2>&1 || return 1
  finished "$name"
}

lane_a() {
  run r20_recu_full_e100_s1 --set seed=1 && run r20_recu_full_e100_s2 --set seed=2 &&
  run r20_recu_full_e100_s3 --set seed=3 && run r20_fp_full_e100_s0 --set model=resnet20_fp --set seed=0 &&
  run r20_recu_full_e30_s0 --set epochs=30 --set seed=0 &&
  run r20_center_only_full_e30_s0 --set epochs=30 --set seed=0 $CENTER_ONLY &&
  run r20_standardize_only_full_e30_s0 --set epochs=30 --set seed=0 $STANDARDIZE_ONLY &&
  run r20_neither_full_e30_s0 --set epochs=30 --set seed=0 $NEITHER
}

lane_b() {
  run r20_tau1_full_e100_s1 --set seed=1 $TAU1 && run r20_tau1_full_e100_s2 --set seed=2 $TAU1 &&
  run r20_tau1_full_e100_s3 --set seed=3 $TAU1 &&
  run r20_recu_full_e30_s1 --set epochs=30 --set seed=1 &&
  run r20_center_only_full_e30_s1 --set epochs=30 --set seed=1 $CENTER_ONLY &&
  run r20_standardize_only_full_e30_s1 --set epochs=30 --set seed=1 $STANDARDIZE_ONLY &&
  run r20_neither_full_e30_s1 --set epochs=30 --set seed=1 $NEITHER
}

nohup bash -c "$(declare -f finished run lane_a); OUT=$OUT DEADLINE=$DEADLINE DTYPE=$DTYPE \
  TAU1='$TAU1' CENTER_ONLY='$CENTER_ONLY' STANDARDIZE_ONLY='$STANDARDIZE_ONLY' NEITHER='$NEITHER'; lane_a" \
  > /dev/null 2>&1 &
echo "lane a: pid $!"
nohup bash -c "$(declare -f finished run lane_b); OUT=$OUT DEADLINE=$DEADLINE DTYPE=$DTYPE \
  TAU1='$TAU1' CENTER_ONLY='$CENTER_ONLY' STANDARDIZE_ONLY='$STANDARDIZE_ONLY' NEITHER='$NEITHER'; lane_b" \
  > /dev/null 2>&1 &
echo "lane b: pid $!"
