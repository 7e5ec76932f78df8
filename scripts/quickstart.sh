#!/usr/bin/env bash
# Sets up everything on a fresh Debian 12 machine, writes a random-weight model
# and generates text from it. MODEL_PRESET=small (or 1b) picks a bigger one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
preset=${MODEL_PRESET:-tiny}
model_dir=${MODEL_DIR:-models-out/$preset}
# A model this script wrote before make-model wrote tokenizers lacks
# tokenizer.json: write it again (never over a MODEL_DIR of your own).
if [ ! -f "$model_dir/config.json" ] ||
  { [ -z "${MODEL_DIR:-}" ] && [ ! -f "$model_dir/tokenizer.json" ]; }; then
  ./build/shardlm make-model --preset "$preset" --out "$model_dir"
fi
# Random weights: the continuation is gibberish, but text goes through the
# tokenizer, the engine and back as with a real checkpoint.
./build/shardlm generate --model "$model_dir" --prompt "Hello, my name is" --max-new-tokens 32
