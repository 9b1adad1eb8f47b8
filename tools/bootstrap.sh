#!/usr/bin/env bash
# Installs the Debian 12 packages ternary builds with, if any are missing. Safe to re-run.
set -euo pipefail
packages=(cmake g++ make ccache pkg-config libeigen3-dev libxsimd-dev libomp-dev catch2
          libbenchmark-dev zlib1g-dev libzstd-dev liblzma-dev libcli11-dev nlohmann-json3-dev
          clang libclang-rt-14-dev)  # clang: the sanitizer build and libFuzzer
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
