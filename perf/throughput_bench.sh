#!/usr/bin/env bash
# Throughput of the CPU backend at every batch and context (issue 14), two
# builds side by side: BEFORE and AFTER binaries run the same `shardlm bench`
# rows alternately (before, after, after, before, ...), so load from other work
# on the machine falls on both alike; the table gives per-row medians over the
# rounds and the after/before ratio, then the AFTER binary's roofline columns.
#
#   perf/throughput_bench.sh BEFORE_BIN AFTER_BIN [MODEL_DIR]
# Environment: ROUNDS (1: each binary runs every row ROUNDS times), THREADS (2),
# OUT (perf/results/throughput.md). The model defaults to models-out/1b-bf16,
# made with `shardlm make-model --preset 1b --dtype bf16` when missing.
# ROWS: "name|bench args;name|bench args;..." (default: decode at batch 1, 8
# and 32 after a 128-token prompt, -n 16; one 512-token prompt, prefill;
# decode at a 4096-token context, batch 1). A row whose name starts with
# "prefill" compares prefill tok/s, the others decode tok/s; the batch-1
# decode row also gives the 128-token prompt's prefill. BEFORE may predate
# --context and --kv-dtype: every row is given as a prompt length, and the
# roofline columns come from the AFTER run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BEFORE=$1 AFTER=$2
MODEL=${3:-$ROOT/models-out/1b-bf16}
ROUNDS=${ROUNDS:-1} THREADS=${THREADS:-2}
OUT=${OUT:-$ROOT/perf/results/throughput.md}
[[ -f $MODEL/config.json ]] || "$AFTER" make-model --preset 1b --dtype bf16 --out "$MODEL"
# How idle threads wait is left to shardlm (docs/cpu_backend.md, "Idle
# threads"): it spins on idle cores and sleeps beside other work.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

DEFAULT_ROWS="decode b1|-p 128 -n 16 -b 1;decode b8|-p 128 -n 16 -b 8;decode b32|-p 128 -n 16 -b 32"
DEFAULT_ROWS+=";prefill 512|-p 512 -n 1 -b 1;decode ctx4096 b1|-p 4096 -n 8 -b 1"
IFS=';' read -r -a ROWS <<< "${ROWS:-$DEFAULT_ROWS}"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 0; round < ROUNDS; round++)); do
  for i in "${!ROWS[@]}"; do
    args=${ROWS[$i]#*|}
    # Alternate which binary goes first, row by row and round by round.
    if (( (round + i) % 2 == 0 )); then order="before after"; else order="after before"; fi
    for which in $order; do
      bin=$BEFORE; [[ $which == after ]] && bin=$AFTER
      # shellcheck disable=SC2086
      "$bin" bench --model "$MODEL" -t "$THREADS" -r 1 -o csv $args 2>/dev/null | tail -1 \
        > "$TMP/$which.$i.$round.csv"
    done
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$TMP" "$ROUNDS" "$load_start" "$load_end" "$MODEL" "$THREADS" "${ROWS[@]}" <<'PY' | tee "$OUT"
import statistics, sys
tmp, rounds, load_start, load_end, model, threads = sys.argv[1:7]
rows = [r.split("|", 1) for r in sys.argv[7:]]
rounds = int(rounds)
cols = ("model,ranks,weights,threads,batch,p,n,prefill_tok_s,decode_tok_s,prefill_mfu,decode_bw_util,"
        "decode_bytes_per_token,peak_flops,bandwidth_Bps,d,kv_dtype,decode_roofline,prefill_roofline").split(",")
def load(which, i):
    out = []
    for r in range(rounds):
        vals = open(f"{tmp}/{which}.{i}.{r}.csv").read().strip().split(",")
        out.append(dict(zip(cols, vals)))
    return out
def med(runs, key):
    return statistics.median(float(r[key]) for r in runs)
print("# CPU throughput: batched decode, long context, prefill (before / after)\n")
print(f"Model {model}, {threads} threads, `shardlm bench -r 1 -o csv` per row, {rounds} rounds per binary,")
print("binaries alternating row by row; medians over the rounds. The machine has 2 cores shared with")
print(f"other work: load average {load_start} at the start, {load_end} at the end, so absolute numbers")
print("are low and noisy; the ratios compare runs that saw the same load.\n")
print("| row | bench args | before tok/s | after tok/s | after/before | after: roofline fraction | after: MFU | after: BW util | peak GFLOP/s | BW GB/s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for i, (name, args) in enumerate(rows):
    before, after = load("before", i), load("after", i)
    key = "prefill_tok_s" if name.startswith("prefill") else "decode_tok_s"
    roof = "prefill_roofline" if key == "prefill_tok_s" else "decode_roofline"
    b, a = med(before, key), med(after, key)
    print(f"| {name} ({'prefill' if key == 'prefill_tok_s' else 'decode'}) | `{args}` | {b:.2f} | {a:.2f} | {a / b:.2f}x | "
          f"{100 * med(after, roof):.0f}% | {100 * med(after, 'prefill_mfu'):.0f}% | "
          f"{100 * med(after, 'decode_bw_util'):.0f}% | {med(after, 'peak_flops') / 1e9:.0f} | "
          f"{med(after, 'bandwidth_Bps') / 1e9:.1f} |")
    if name == "decode b1":  # the 128-token prompt's prefill rides on the batch-1 row
        b, a = med(before, "prefill_tok_s"), med(after, "prefill_tok_s")
        print(f"| prefill 128 (prefill) | `{args}` | {b:.2f} | {a:.2f} | {a / b:.2f}x | "
              f"{100 * med(after, 'prefill_roofline'):.0f}% | {100 * med(after, 'prefill_mfu'):.0f}% | | "
              f"{med(after, 'peak_flops') / 1e9:.0f} | {med(after, 'bandwidth_Bps') / 1e9:.1f} |")
print("\nRoofline fraction: measured tok/s over the tok/s of max(bytes / bandwidth, FLOP / peak) per step")
print("(weights + KV bytes, bf16 KV cache in the after build); peak and bandwidth as `bench` measures them.")
PY
