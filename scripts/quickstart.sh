#!/usr/bin/env bash
# Sets up everything on a fresh Debian 12 machine, writes a random-weight model
# and generates from it. MODEL_PRESET=small (or 1b) picks a bigger one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
preset=${MODEL_PRESET:-tiny}
model_dir=${MODEL_DIR:-models-out/$preset}
[ -f "$model_dir/config.json" ] || ./build/shardlm make-model --preset "$preset" --out "$model_dir"
./build/shardlm generate --model "$model_dir" --prompt-ids 1,15043,29892,590,1024,338 --max-new-tokens 32
