#!/usr/bin/env bash
# Configures and builds the instrumented tree that scripts/sanitize.sh and
# scripts/fuzz.sh share: clang, AddressSanitizer + UndefinedBehaviorSanitizer
# on every target, libFuzzer coverage, -O1 with line tables for the reports.
# One tree serves both, so shardlm's sources are compiled once more, not twice.
# Usage: scripts/sanitize_build.sh TARGET...   (into $SHARDLM_SANITIZE_BUILD_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${SHARDLM_SANITIZE_BUILD_DIR:-build-sanitize}
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 "${launcher[@]}" \
  -DSHARDLM_SANITIZE=address,undefined -DSHARDLM_FUZZ=ON -DSHARDLM_CUDA=OFF >/dev/null
cmake --build "$build_dir" -j"$(nproc)" --target "$@"
