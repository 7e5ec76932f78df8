#!/usr/bin/env bash
# Installs what shardlm needs to build and test on Debian 12: the toolchain
# libraries from Debian, and the Python packages the tests use. Idempotent:
# packages already present are not fetched again.
set -euo pipefail

DEBIAN_PACKAGES=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libyaml-cpp-dev iproute2
  catch2 libfmt-dev libdnnl-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev
  python3 python3-pip
  # The sanitizer and fuzzing builds (scripts/sanitize.sh, scripts/fuzz.sh):
  # clang, its sanitizer and libFuzzer runtimes, and its OpenMP runtime.
  clang-14 libclang-rt-14-dev libomp-14-dev)
PYTHON_PACKAGES=(numpy pytest tokenizers matplotlib)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=$(command -v python3)
if ! "$python" -c "import numpy, pytest, tokenizers, matplotlib" >/dev/null 2>&1; then
  echo "installing Python packages for $python: ${PYTHON_PACKAGES[*]}"
  "$python" -m pip install -q "${PYTHON_PACKAGES[@]}" 2>/dev/null ||
    "$python" -m pip install -q --break-system-packages "${PYTHON_PACKAGES[@]}"
fi
