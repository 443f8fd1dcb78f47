#!/usr/bin/env bash
# Runs every benchmark at full (issue) size, one at a time, appending JSON lines.
#
# Usage (from the repository root):
#   bash benchmarks/run_all.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results
#   ONLY="bench_cbp bench_dmf_layer" bash benchmarks/run_all.sh
#   bash benchmarks/run_all.sh OUT_DIR bench_encoders --models bert   # one command, same logging
#
# Each benchmark's JSON lines go to OUT_DIR/<name>.jsonl (appended). Before and after
# each run one extra JSON line {"bench": "_run", ...} records the exact command, the
# load average (/proc/loadavg), the wall time and the exit status, so every result
# can be read beside the machine load it was measured under. stderr goes to
# OUT_DIR/<name>.log (removed when empty).
set -u
OUT_DIR="${1:-benchmarks/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

run() {  # run NAME ARGS...  (runs `python -m benchmarks.NAME ARGS...`)
  local name="$1"; shift
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return 0; fi
  if [[ ! -f "benchmarks/$name.py" ]]; then
    echo "skip $name: benchmarks/$name.py does not exist" >&2; return 0
  fi
  local out="$OUT_DIR/$name.jsonl" cmd="$PY -m benchmarks.$name $*"
  local load0 t0 rc load1 t1
  load0="$(loadavg)"; t0=$(date +%s.%N)
  echo "[$(date -u +%H:%M:%S)] $cmd  (load $load0)" >&2
  $PY -m "benchmarks.$name" "$@" >>"$out" 2>>"$OUT_DIR/$name.log"
  rc=$?
  [[ -s "$OUT_DIR/$name.log" ]] || rm -f "$OUT_DIR/$name.log"  # keep only non-empty stderr
  t1=$(date +%s.%N); load1="$(loadavg)"
  printf '{"bench": "_run", "name": "%s", "cmd": "%s", "utc": "%s", "loadavg_before": "%s", "loadavg_after": "%s", "wall_s": %.1f, "rc": %d}\n' \
    "$name" "$cmd" "$(date -u +%FT%TZ)" "$load0" "$load1" "$(echo "$t1 - $t0" | bc)" "$rc" >>"$out"
  echo "  -> rc=$rc, $(echo "$t1 - $t0" | bc) s" >&2
}

if [[ $# -ge 2 ]]; then  # OUT_DIR NAME ARGS...: just that one run
  shift; run "$@"; exit 0
fi

run mbaf_param_count
run bench_matmul
run bench_cbp
run bench_dmf_layer
run bench_dmf_layer --dtype bfloat16
run bench_mbaf_layer --iters 5 --warmup 1
# Wav2Vec2 split per mode/batch so that one out-of-memory (fwd_bwd at batch 32 needs a
# 26.6 GB buffer: more than a 24 GiB host) does not stop the others. bench_encoders also records
# an OOM in-process ({"status": "oom"}) and goes on, but a separate process returns the memory.
run bench_encoders --models wav2vec2 --modes fwd,conv_fwd --iters 3 --warmup 1
run bench_encoders --models wav2vec2 --modes fwd_bwd,fwd_bwd_frozen --batches 8 --iters 3 --warmup 1
run bench_encoders --models wav2vec2 --modes fwd_bwd_frozen --batches 32 --iters 3 --warmup 1
run bench_encoders --models wav2vec2 --modes fwd_bwd --batches 32 --iters 3 --warmup 1
run bench_encoders --models bert --iters 3 --warmup 1
# sincnet_utterance forward+backward at the default 8 utterances ran > 5 min at 12.7 GB on 2 cores
run bench_mbaf_encoders --only sincnet_windows,text_cnn_rnn,cebs_lstm --iters 5 --warmup 1
run bench_mbaf_encoders --only sincnet_utterance --utterances 2 --iters 3 --warmup 1
run bench_audio
run bench_pipeline
run bench_scaling
run bench_train --iters 2 --warmup 0  # one base-size step takes ~37 s on 2 cores
