#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (Catch2 unit
# tests, multi-rank tests under mpiexec, and the NumPy-reference tests), then
# the hardening checks (docs/hardening.md): the unit tests, multi-rank tests
# and a 2-rank generate under AddressSanitizer + UndefinedBehaviorSanitizer,
# and every fuzz target over its committed corpora plus a short fuzzing run
# of $SHARDLM_FUZZ_RUNS inputs each (default 3000) from a fixed seed, so that
# the inputs tried are the same on every machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
(cd "${SHARDLM_BUILD_DIR:-build}" && ctest --output-on-failure --timeout 1800)
bash scripts/sanitize.sh
SHARDLM_FUZZ_RUNS=${SHARDLM_FUZZ_RUNS:-3000} bash scripts/fuzz.sh
