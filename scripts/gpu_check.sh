#!/usr/bin/env bash
# shellcheck disable=SC2317,SC1091  # step functions run through `step` (bash -c); env.sh is made at run time
# The CUDA backend's check on a lent GPU machine (an H200; docs/cuda_backend.md).
#
# 1. Here, on the build machine (it has the Debian packages the GPU machine
#    lacks):   scripts/gpu_bundle.sh        -> gpu-bundle/ (ignored by git)
# 2. The device tool's `run`, exactly:
#      command:   bash scripts/gpu_check.sh
#      carry:     ["gpu-bundle"]
#      timeout_s: 540
#    The working tree travels with it (tests/python, configs); the bundle
#    (about 10 MiB packed) brings the binaries, their libraries and mpirun.
#
# On the GPU machine it unpacks the bundle to /tmp/shardlm-gpu, finds CUDA's
# libraries (the toolkit's /usr/local/cuda/lib64; libnccl.so.2 from PyTorch's
# nvidia-nccl wheel), and runs, each step under its own `timeout` inside a
# total budget of GPU_CHECK_BUDGET_S (default 440 s, under 8 minutes):
#   libraries   every bundled binary finds every library it needs
#   nvidia-smi  the device, driver and clocks as found
#   doctor      shardlm doctor: versions, devices, the plugin, --backend auto
#   gpu_tests   shardlm_gpu_tests: the CUDA backend against the CPU backend
#   nccl_2ranks shardlm_nccl_tests under mpirun -n 2, both ranks on one GPU
#               where there is one (NCCL before 2.30 refuses that, "Duplicate
#               GPU detected"; then again with a NCCL_HOSTID per rank: two
#               NCCL hosts joined by sockets over the loopback)
#   end_to_end  tests/python/test_cuda.py: generate --backend cuda against
#               --backend cpu (--dump-logits, --dump-step-logits) on every
#               tiny preset, max |Δ| <= 3e-2 max |logit| (the bound is derived
#               in that file), tensor parallelism over NCCL with 2 ranks
#               against 1, and 2 pipeline stages whose residual crosses over
#               NCCL send/recv against the CPU backend and 1 GPU (both with
#               the same NCCL_HOSTID fallback), and decode steps as CUDA
#               graphs against eager steps (equal bit for bit; one GPU, and
#               2 ranks over NCCL)
#   bench       shardlm bench --backend cuda on the 1b preset in bf16: batch-1
#               decode after 128 and 4096 prompt tokens and the 4096-token
#               prefill, against the h200-sxm spec's 989 TFLOP/s dense bf16
#               and 4.8 TB/s
# and leaves $OUT/gpu_check.log (everything printed), $OUT/gpu_check.json
# (the summary: each step's status and time, the comparisons, the bench
# rows) and $OUT/bench.json. Exit status 0 when no step failed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/gpu-check-out}
BUDGET_S=${GPU_CHECK_BUDGET_S:-440}
BUNDLE_TAR=${GPU_BUNDLE:-$ROOT/gpu-bundle/shardlm-gpu.tar.xz}
B=/tmp/shardlm-gpu
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
STEPS=$WORK/steps.tsv
: >"$STEPS"

# step NAME LIMIT_S FUNCTION [ARGS]: runs an exported function under
# `timeout` (LIMIT_S, or what is left of the budget), prints its output and
# records "name status exit seconds note". A step whose output has a line
# starting "SKIPPED:" (the GPU tests' mains without a device) or
# "UNSUPPORTED:" is recorded as such; a passing step's note is its last line
# (pytest's "9 passed, 2 skipped").
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS - 10))
  if [ "$left" -lt 15 ]; then
    echo "=== $name: not run, the ${BUDGET_S} s budget is spent ==="
    printf '%s\tnot_run\t-\t0\tbudget spent\n' "$name" >>"$STEPS"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (timeout ${limit} s) ==="
  local start=$SECONDS rc status note=""
  timeout -k 10 "$limit" bash -c '"$@"' _ "$@" </dev/null >"$WORK/$name.out" 2>&1
  rc=$?
  cat "$WORK/$name.out"
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    status=timeout
  elif note=$(grep -m1 '^UNSUPPORTED:' "$WORK/$name.out"); then
    status=unsupported
  elif [ $rc != 0 ]; then
    status=fail
    note=$(grep -m1 -i 'error' "$WORK/$name.out" | cut -c1-300)
  elif note=$(grep -m1 '^SKIPPED:' "$WORK/$name.out"); then
    status=skipped
  else
    status=pass
    note=$(grep -v '^[[:space:]]*$' "$WORK/$name.out" | tail -1 | cut -c1-300)
  fi
  echo "=== $name: $status (exit $rc, $((SECONDS - start)) s) ==="
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - start))" \
    "$(echo "$note" | tr '\t\n' '  ')" >>"$STEPS"
  return "$rc"
}

setup() {
  echo "gpu_check: $(date -u +%FT%TZ) on $(hostname), $(nproc) CPUs"
  grep -m1 'model name' /proc/cpuinfo
  # The bundle is built for x86-64-v4 (the CPU kernels are AVX-512).
  local flag
  for flag in avx512f avx512bw avx512cd avx512dq avx512vl; do
    if ! grep -q -w "$flag" /proc/cpuinfo; then
      echo "gpu_check: this CPU lacks $flag; the bundle's CPU code (x86-64-v4) cannot run here"
      return 1
    fi
  done
  if [ ! -f "$BUNDLE_TAR" ]; then
    echo "gpu_check: no $BUNDLE_TAR: run scripts/gpu_bundle.sh on the build machine and carry gpu-bundle"
    return 1
  fi
  rm -rf "$B"
  tar -C /tmp -xJf "$BUNDLE_TAR" 2>/dev/null ||
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall('/tmp')" "$BUNDLE_TAR"
  # The GPU tests were built with the build machine's checkout as their
  # source directory: point that path here when it is free.
  local source_dir
  source_dir=$(sed -n 's/^source_dir=//p' "$B/bundle.env" 2>/dev/null)
  if [ -n "$source_dir" ] && [ ! -e "$source_dir" ]; then
    mkdir -p "$(dirname "$source_dir")" && ln -s "$ROOT" "$source_dir"
  fi
  # CUDA's libraries: the toolkit's and the directories of PyTorch's nvidia-*
  # wheels (NCCL is only there). The toolkit first; should the plugin not
  # load so (a cuBLASLt older than the one it was built against, say), the
  # wheels first.
  local toolkit="" wheels d order
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && toolkit="$toolkit:$d"
  done
  wheels=":$(python3 - <<'EOF'
import glob, os, site
roots = set(site.getsitepackages())
try:
    import nvidia
    roots.update(os.path.dirname(p) for p in nvidia.__path__)
except Exception:
    pass
found = []
for root in sorted(roots):
    for lib in ("libnccl.so.2", "libcudart.so.13", "libcublasLt.so.13"):
        for f in glob.glob(os.path.join(root, "nvidia", "**", lib), recursive=True):
            if os.path.dirname(f) not in found:
                found.append(os.path.dirname(f))
print(":".join(found))
EOF
)"
  for order in "$toolkit$wheels" "$wheels$toolkit"; do
    echo "export LD_LIBRARY_PATH=$B/lib$order:${LD_LIBRARY_PATH:-}" >"$WORK/env.sh"
    if (source "$WORK/env.sh" && "$B/bin/shardlm" doctor | grep -q 'CUDA backend: .* loads'); then
      break
    fi
    echo "gpu_check: the plugin does not load with LD_LIBRARY_PATH=$B/lib$order:"
    (source "$WORK/env.sh" && "$B/bin/shardlm" doctor | grep 'CUDA backend')
  done
}

export B ROOT WORK OUT BUNDLE_TAR

libraries() {
  local f lib missing=0
  ls -la "$B/bin"
  for lib in libnccl.so.2 libcudart.so.13 libcublasLt.so.13; do
    echo "$lib -> $(ldd "$B/bin/libshardlm_cuda.so" "$B/bin/shardlm_gpu_tests" 2>/dev/null |
      awk -v l="$lib" '$1 == l {print $3; exit}')"
  done
  for f in "$B"/bin/* "$B"/ompi/bin/orterun; do
    if ldd "$f" | grep -q 'not found'; then
      echo "error: $f: $(ldd "$f" | grep 'not found' | tr -s ' \t\n' ' ')"
      missing=1
    fi
  done
  return "$missing"
}

gpu_info() {
  nvidia-smi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,clocks.max.sm \
    --format=csv
}

doctor() {
  "$B/bin/shardlm" doctor
}

gpu_tests() {
  "$B/bin/shardlm_gpu_tests" --durations yes
}

nccl_2ranks() {
  # NCCL 2.30+ lets two ranks share a GPU when asked; older ones refuse
  # ("Duplicate GPU detected": same host hash, same bus id). Then each rank
  # gets a host id of its own: two NCCL "hosts" joined by the socket
  # transport over the loopback, the same collectives on the same memory.
  local rc
  NCCL_MULTI_RANK_GPU_ENABLE=1 NCCL_DEBUG=WARN mpirun -n 2 "$B/bin/shardlm_nccl_tests" 2>&1 |
    tee "$WORK/nccl.out"
  rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ] && grep -q -e 'Duplicate GPU detected' -e 'Multiple Ranks are using the same GPU' "$WORK/nccl.out"; then
    echo "gpu_check: this NCCL refuses two ranks on one GPU; again as two NCCL hosts over sockets"
    # shellcheck disable=SC2016  # expanded by each rank's bash
    NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=lo mpirun -n 2 bash -c \
      'NCCL_HOSTID="shardlm-rank-$OMPI_COMM_WORLD_RANK" exec "$@"' _ "$B/bin/shardlm_nccl_tests"
    rc=$?
  fi
  return "$rc"
}

end_to_end() {
  SHARDLM_BIN="$B/bin/shardlm" SHARDLM_CUDA_REPORT="$WORK/cuda_report.jsonl" \
    PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -rs -p no:cacheprovider \
    "$ROOT/tests/python/test_cuda.py"
}

bench() {
  "$B/bin/shardlm" make-model --preset 1b --dtype bf16 --out "$WORK/1b" || return 1
  # TinyLlama's 2048-position limit, raised: random weights read any position
  # alike, and the 4096-token prefill is what is measured.
  python3 - "$WORK/1b/config.json" <<'EOF' || return 1
import json, sys
config = json.load(open(sys.argv[1]))
config["max_position_embeddings"] = 8192
json.dump(config, open(sys.argv[1], "w"))
EOF
  "$B/bin/shardlm" bench --backend cuda --hardware "$ROOT/configs/hardware/h200-sxm.yaml" \
    --model "$WORK/1b" -p 128,4096 -n 64 -b 1 -r 3 -o json >"$OUT/bench.json" || return 1
  python3 - "$OUT/bench.json" <<'EOF'
import json, sys
bench = json.load(open(sys.argv[1]))
for r in bench["rows"]:
    print(f"p {r['p']:>5}: prefill {r['prefill_tok_s']:10.0f} tok/s = {100 * r['prefill_mfu']:5.1f}% "
          f"of {r['peak_flops'] / 1e12:.0f} TFLOP/s; decode b1 {r['decode_tok_s']:7.1f} tok/s, "
          f"{r['decode_bytes_per_token'] / 1e9:.2f} GB/token = {100 * r['decode_bw_util']:5.1f}% "
          f"of {r['bandwidth_Bps'] / 1e12:.1f} TB/s")
EOF
}

summary() {
  python3 - "$STEPS" "$WORK" "$OUT" <<'EOF'
import json, os, sys
steps_file, work, out = sys.argv[1:]
summary = {"steps": [], "comparisons": [], "bench": None, "doctor": {}}
for line in open(steps_file):
    name, status, rc, seconds, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    summary["steps"].append({"name": name, "status": status, "exit": rc,
                             "seconds": int(seconds or 0), "note": note.strip()})
report = os.path.join(work, "cuda_report.jsonl")
if os.path.exists(report):
    summary["comparisons"] = [json.loads(l) for l in open(report) if l.strip()]
bench = os.path.join(out, "bench.json")
if os.path.exists(bench):
    try:
        summary["bench"] = json.load(open(bench))["rows"]
    except Exception as e:
        summary["bench"] = f"unreadable: {e}"
doctor = os.path.join(work, "doctor.out")
if os.path.exists(doctor):
    for l in open(doctor):
        if ":" in l and l.startswith("  "):
            k, v = l.strip().split(":", 1)
            summary["doctor"][k] = v.strip()
summary["ok"] = all(s["status"] in ("pass", "skipped", "unsupported") for s in summary["steps"])
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print("\n=== summary ===")
for s in summary["steps"]:
    print(f"{s['name']:<12} {s['status']:<11} {s['seconds']:>4} s  {s['note'][:100]}")
for c in summary["comparisons"]:
    if "max_abs_diff" in c:
        print(f"{c['test']:<28} {c['model']:<16} max |d| {c['max_abs_diff']:.3g} = "
              f"{c['relative']:.3g} of max |logit| (bound {c['bound']})")
    else:  # the CUDA graphs tests: steps captured, replayed and run eagerly
        print(f"{c['test']:<28} {c['model']:<16} " +
              ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("test", "model")))
print("gpu_check:", "OK" if summary["ok"] else "FAILED")
sys.exit(0 if summary["ok"] else 1)
EOF
}

main() {
  cd "$ROOT" || return 1
  export -f setup
  step setup 120 setup || { summary; return 1; }
  # shellcheck disable=SC1091
  source "$WORK/env.sh"
  # The relocated OpenMPI finds its components and help below OPAL_PREFIX;
  # PMIx (its launch protocol) is told where its components are.
  export PATH="$B/ompi/bin:$PATH" OPAL_PREFIX="$B/ompi" PMIX_PREFIX="$B/pmix" \
    PMIX_MCA_mca_base_component_path="$B/pmix/lib/pmix"
  export SHARDLM_CONFIGS="$ROOT/configs"
  # mpirun of one machine, as root, without ssh; shared memory without
  # cross-process reads, which a VM may forbid.
  export OMPI_MCA_plm=isolated OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
  export -f libraries gpu_info doctor gpu_tests nccl_2ranks end_to_end bench
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  # GPU_CHECK_SKIP="bench ..." leaves steps out (a dry run without a GPU).
  local name limit function
  while read -r name limit function; do
    case " ${GPU_CHECK_SKIP:-} " in *" $name "*) continue ;; esac
    step "$name" "$limit" "$function"
  done <<'EOF'
libraries 30 libraries
nvidia-smi 30 gpu_info
doctor 60 doctor
gpu_tests 150 gpu_tests
nccl_2ranks 60 nccl_2ranks
end_to_end 240 end_to_end
bench 150 bench
EOF
  summary
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
