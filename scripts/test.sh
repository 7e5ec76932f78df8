#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (Catch2 unit
# tests, multi-rank tests under mpiexec, and the NumPy-reference tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
cd "${SHARDLM_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 1800
