#!/usr/bin/env bash
# The CPU backend's benchmark (issue 5): `shardlm bench` on the given models,
# then tensor parallelism over 2 MPI ranks with one thread each against one
# rank with one thread, written as markdown to $OUT (default perf/results/cpu_bench.md).
#
#   perf/cpu_bench.sh [BUILD_DIR] [MODELS_DIR]
# Environment: P (prompt lengths, default 128,512), N (new tokens, 128),
# WEIGHTS (f32,bf16,int8), THREADS (1,2), BATCH (1), REPS (3), TP_WEIGHTS (bf16).
# Models are made with `shardlm make-model --preset small|1b` when missing.
# Numbers are noisy on a shared machine: compare rows of one run, not runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build-cpu}
MODELS=${2:-$ROOT/models-out}
OUT=${OUT:-$ROOT/perf/results/cpu_bench.md}
P=${P:-128,512} N=${N:-128} WEIGHTS=${WEIGHTS:-f32,bf16,int8} THREADS=${THREADS:-1,2}
BATCH=${BATCH:-1} REPS=${REPS:-3} TP_WEIGHTS=${TP_WEIGHTS:-bf16}
BIN=$BUILD/shardlm
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$(dirname "$OUT")"

for preset in small 1b; do
  [[ -f $MODELS/$preset/config.json ]] || "$BIN" make-model --preset "$preset" --out "$MODELS/$preset"
done

{
  echo "# CPU backend benchmark"
  echo
  echo "$(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews 2-thread rows)."
  for preset in small 1b; do
    echo
    echo "## $preset"
    echo
    echo '```'
    echo "$BIN bench --model $MODELS/$preset -p $P -n $N -t $THREADS -b $BATCH --weights $WEIGHTS -r $REPS"
    echo '```'
    echo
    "$BIN" bench --model "$MODELS/$preset" -p "$P" -n "$N" -t "$THREADS" -b "$BATCH" --weights "$WEIGHTS" -r "$REPS"
  done

  echo
  echo "## Tensor parallelism: 2 ranks x 1 thread vs 1 rank x 1 thread (1b, $TP_WEIGHTS weights)"
  echo
  one=$("$BIN" bench --model "$MODELS/1b" -p "${P##*,}" -n "$N" -t 1 --weights "$TP_WEIGHTS" -r "$REPS" -o csv | tail -1)
  two=$(mpirun -n 2 "$BIN" bench --model "$MODELS/1b" -p "${P##*,}" -n "$N" -t 1 --weights "$TP_WEIGHTS" \
        -r "$REPS" -o csv --ffn-layout 2d --attn-layout heads | tail -1)
  python3 - "$one" "$two" <<'PY'
import sys
cols = "model,ranks,weights,threads,batch,p,n,prefill_tok_s,decode_tok_s".split(",")
one, two = (dict(zip(cols, line.split(","))) for line in sys.argv[1:3])
print("| ranks x threads | p | n | prefill tok/s | decode tok/s |")
print("|---|---:|---:|---:|---:|")
for r in (one, two):
    print(f"| {r['ranks']} x 1 | {r['p']} | {r['n']} | {float(r['prefill_tok_s']):.1f} | {float(r['decode_tok_s']):.2f} |")
print()
print(f"Speed-up of 2 ranks: prefill {float(two['prefill_tok_s']) / float(one['prefill_tok_s']):.2f}x, "
      f"decode {float(two['decode_tok_s']) / float(one['decode_tok_s']):.2f}x (targets 1.7x and 1.6x).")
PY
} | tee "$OUT"
