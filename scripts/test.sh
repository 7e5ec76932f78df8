#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (Catch2 unit
# tests, multi-rank tests under mpiexec, and the NumPy-reference tests), then
# the hardening checks (docs/hardening.md): the unit tests, multi-rank tests
# and a 2-rank generate under AddressSanitizer + UndefinedBehaviorSanitizer,
# and every fuzz target over its committed corpora plus a short fuzzing run
# ($SHARDLM_FUZZ_SECONDS each, default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
(cd "${SHARDLM_BUILD_DIR:-build}" && ctest --output-on-failure --timeout 1800)
bash scripts/sanitize.sh
bash scripts/fuzz.sh "${SHARDLM_FUZZ_SECONDS:-15}"
