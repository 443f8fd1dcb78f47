#!/usr/bin/env bash
# The rows a GPU user needs, in one go, within a time budget (default 470 s: < 8 min on one GPU).
#
# Usage (from the repository root; PyTorch rows need `pip install -e '.[bench]'` with a CUDA torch):
#   bash benchmarks/run_gpu.sh [--quick] [OUT_DIR]      # default OUT_DIR: benchmarks/results/gpu
#   BUDGET_S=900 bash benchmarks/run_gpu.sh /tmp/gpu    # a longer budget
#
# In order of priority (a step that no longer fits in the budget is recorded as skipped):
#   1. bench_train: the full DMF train step with base encoders (and the naive one) at batch 16 and
#      32, float32 and bfloat16, and the batch-1 / batch-64 inference latency of DMF vs naive
#      (DMF reports 91 vs 63 ms per sample) -> OUT_DIR/bench_train.jsonl; the same lines with the
#      model FLOP utilisation against the device's datasheet peak (benchmarks/mfu.py) ->
#      OUT_DIR/train_mfu.jsonl.
#   2. bench_vs_torch: DMF layer train step vs PyTorch eager and torch.compile, Wav2Vec2-base and
#      BERT-base forward / forward+backward vs transformers' PyTorch models, then the MBAF layer
#      -> OUT_DIR/bench_vs_torch.jsonl. Skipped with a message when PyTorch is not installed.
# Every step appends one {"bench": "_run", "cmd", "utc", "loadavg_before", "loadavg_after",
# "wall_s", "rc"} line to its file (rc 124: stopped at the budget). stderr goes to
# OUT_DIR/<script>.log. A persistent XLA compilation cache in OUT_DIR/jax_cache lets the second
# batch size of a dtype reuse the inference compilations.
#
# --quick: tiny encoders and layers, float32, one batch size, no torch.compile (a smoke check on
# any machine, tests/test_run_gpu.py runs it on the CPU).
set -u
QUICK=""
OUT_DIR=""
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK="--quick" ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) OUT_DIR="$arg" ;;
  esac
done
OUT_DIR="${OUT_DIR:-benchmarks/results/gpu}"
BUDGET_S="${BUDGET_S:-470}"
PY="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$OUT_DIR/jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
START=$(date +%s)

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

run() {  # run NAME ARGS...: python -m benchmarks.NAME ARGS..., within what is left of the budget
  local name="$1"; shift
  local out="$OUT_DIR/$name.jsonl" cmd="$PY -m benchmarks.$name $*"
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if (( left < 15 )); then
    printf '{"bench": "_run", "name": "%s", "cmd": "%s", "utc": "%s", "skipped": "time budget %s s spent"}\n' \
      "$name" "$cmd" "$(date -u +%FT%TZ)" "$BUDGET_S" >>"$out"
    echo "skip: $cmd (budget spent)" >&2
    return 0
  fi
  local load0 t0 rc
  load0="$(loadavg)"; t0=$(date +%s.%N)
  echo "[$(date -u +%H:%M:%S)] $cmd  (load $load0, ${left} s left)" >&2
  timeout --signal=TERM --kill-after=10 "$left" $PY -m "benchmarks.$name" "$@" \
    >>"$out" 2>>"$OUT_DIR/$name.log"
  rc=$?
  [[ -s "$OUT_DIR/$name.log" ]] || rm -f "$OUT_DIR/$name.log"
  printf '{"bench": "_run", "name": "%s", "cmd": "%s", "utc": "%s", "loadavg_before": "%s", "loadavg_after": "%s", "wall_s": %.1f, "rc": %d}\n' \
    "$name" "$cmd" "$(date -u +%FT%TZ)" "$load0" "$(loadavg)" \
    "$(echo "$(date +%s.%N) - $t0" | bc)" "$rc" >>"$out"
  echo "  -> rc=$rc" >&2
}

if [[ -n "$QUICK" ]]; then
  run bench_train --quick --batch 4 --dtype float32
else
  for batch in 16 32; do
    for dtype in float32 bfloat16; do
      run bench_train --batch "$batch" --dtype "$dtype" --iters 10 --warmup 2
    done
  done
fi
$PY -m benchmarks.mfu "$OUT_DIR/bench_train.jsonl" >"$OUT_DIR/train_mfu.jsonl"

if $PY -c "import torch" 2>/dev/null; then
  if [[ -n "$QUICK" ]]; then
    run bench_vs_torch --quick --no-compile --only dmf,bert
  else
    run bench_vs_torch --only dmf,wav2vec2,bert --rounds 5 --wav2vec2-batch 8 --bert-batch 32
    run bench_vs_torch --only mbaf --rounds 3 --mbaf-compile cebs
  fi
else
  echo "skip bench_vs_torch: PyTorch is not installed (pip install -e '.[bench]')" >&2
fi
echo "wall $(( $(date +%s) - START )) s; results in $OUT_DIR" >&2
