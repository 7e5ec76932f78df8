#!/usr/bin/env bash
# The AddressSanitizer + UndefinedBehaviorSanitizer run (docs/hardening.md):
# builds the unit tests, the multi-rank tests and the shardlm binary
# instrumented (scripts/sanitize_build.sh), then runs the unit tests, the
# multi-rank tests on 2 and 4 ranks, and a short generate on 2 ranks under
# mpirun. Any report (memory error, leak, undefined behaviour) fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${SHARDLM_SANITIZE_BUILD_DIR:-build-sanitize}
export SHARDLM_SANITIZE_BUILD_DIR=$build_dir
bash scripts/sanitize_build.sh shardlm shardlm_unit_tests shardlm_mpi_tests >/dev/null

suppressions=$PWD/tests/sanitizers/lsan.supp
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1
export LSAN_OPTIONS=suppressions=$suppressions:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_WAIT_POLICY=passive
# mpirun itself is not instrumented; only the ranks are. OpenMPI's libraries
# have no frame pointers: the ranks unwind with DWARF so that each leak's
# stack reaches the library that made it, which the suppressions name.
mpirun=(mpirun -x ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0" -x LSAN_OPTIONS
  -x UBSAN_OPTIONS)

step() { printf '== %s\n' "$*"; }
step "unit tests (all but [refits]: arithmetic over the planner that ctest runs, 13 minutes here)"
"$build_dir/tests/shardlm_unit_tests" "~[refits]"
for ranks in 2 4; do
  step "multi-rank tests, $ranks ranks"
  "${mpirun[@]}" -n "$ranks" "$build_dir/tests/shardlm_mpi_tests"
done

model=$build_dir/sanitize-model
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
step "make-model tiny"
"$build_dir/shardlm" make-model --preset tiny --out "$model" >/dev/null
step "generate, 2 ranks"
"${mpirun[@]}" -n 2 "$build_dir/shardlm" generate --model "$model" --prompt "Hello, my name is" \
  --max-new-tokens 4 --threads 1 --json --dump-logits "$out/prefill.npy" >"$out/generate.json"
# The same request on one rank must give the same tokens: the sharded run
# above computed, not just survived.
"$build_dir/shardlm" generate --model "$model" --prompt "Hello, my name is" \
  --max-new-tokens 4 --threads 1 --json >"$out/single.json"
python3 - "$out/generate.json" "$out/single.json" <<'PY'
import json, sys
two, one = (json.load(open(p))["generated_ids"] for p in sys.argv[1:])
assert two == one, f"2 ranks generated {two}, 1 rank {one}"
print("generated ids", two[0], "on 2 ranks and on 1")
PY
step "sanitizers: no reports"
