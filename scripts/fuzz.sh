#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) and runs each one: first over its
# regression inputs and seeds (every one must pass), then fuzzing for SECONDS
# (default 60; 0 runs the corpora only). New inputs collect in
# BUILD/fuzz-work/TARGET between runs; a failing input is saved to
# BUILD/fuzz-findings/TARGET/ and ends the script with status 1.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# SHARDLM_FUZZ_RUNS=N instead fuzzes each target for N inputs from a fixed
# random seed, starting from the committed corpora alone: the same inputs on
# every machine, so a run that passes here passes in CI (which uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
all_targets=(safetensors weight_map model_config hardware_yaml model_yaml experiment_yaml
  tokenizer_json tokenizer_text npy cli)
targets=("${@:-${all_targets[@]}}")
build_dir=${SHARDLM_SANITIZE_BUILD_DIR:-build-sanitize}
export SHARDLM_SANITIZE_BUILD_DIR=$build_dir
# SHARDLM_FUZZ_NO_BUILD=1: run the targets as last built.
[ -n "${SHARDLM_FUZZ_NO_BUILD:-}" ] || bash scripts/sanitize_build.sh "${targets[@]/#/fuzz_}" >/dev/null

# A finding is a crash, a sanitizer report, an escaped exception, a leak, an
# input slower than 10 s, or more than 2 GiB of memory (resident or one
# allocation).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
limits=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -max_len=65536)
status=0
printf '%-16s %8s %10s %s\n' target seconds runs result
for target in "${targets[@]}"; do
  binary=$build_dir/tests/fuzz/fuzz_$target
  seeds=tests/fuzz/corpus/$target
  regressions=tests/fuzz/regressions/$target
  work=$build_dir/fuzz-work/$target
  findings=$build_dir/fuzz-findings/$target
  log=$build_dir/fuzz-logs/$target.log
  mkdir -p "$work" "$findings" "$(dirname "$log")" "$regressions"
  dict=()
  [ -f "tests/fuzz/$target.dict" ] && dict=(-dict="tests/fuzz/$target.dict")
  start=$SECONDS
  result=ok
  # -runs=0: every input of the corpora is run once, nothing new is tried.
  if ! "$binary" "${limits[@]}" -runs=0 -artifact_prefix="$findings/" "$regressions" "$seeds" \
    >"$log" 2>&1; then
    result="FAILED on the committed corpora (log: $log)"
  elif [ -n "${SHARDLM_FUZZ_RUNS:-}" ]; then
    rm -rf "$work.fixed" && mkdir -p "$work.fixed"
    if ! "$binary" "${limits[@]}" "${dict[@]}" -runs="$SHARDLM_FUZZ_RUNS" -seed=1 \
      -artifact_prefix="$findings/" "$work.fixed" "$seeds" "$regressions" >>"$log" 2>&1; then
      result="FOUND $(ls -t "$findings" | head -1) (log: $log)"
    fi
  elif [ "$seconds" -gt 0 ] &&
    ! "$binary" "${limits[@]}" "${dict[@]}" -max_total_time="$seconds" \
      -artifact_prefix="$findings/" "$work" "$seeds" "$regressions" >>"$log" 2>&1; then
    result="FOUND $(ls -t "$findings" | head -1) (log: $log)"
  fi
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  printf '%-16s %8s %10s %s\n' "$target" $((SECONDS - start)) "${runs:--}" "$result"
  if [ "$result" != ok ]; then
    status=1
    tail -n 40 "$log" >&2
  fi
done
exit $status
