#!/usr/bin/env bash
# Installs what is missing, builds everything in Release and runs the test suite (CTest).
# With nvcc on the PATH it also compiles the CUDA backend (build only: no GPU is needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
jobs=$(nproc)
# CUDA first (build only: CI has no GPU), in its own build dir and only the CUDA targets, so
# a CUDA compile break never lands; the CPU build never needs the CUDA toolkit. The CTest
# summary then stays the last thing printed.
if command -v nvcc >/dev/null 2>&1; then
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DTERNARY_BUILD_BENCH=OFF \
    -DTERNARY_BUILD_EXAMPLES=OFF -DTERNARY_CUDA=ON >/dev/null
  cmake --build build-cuda -j"$jobs" --target ternary_cuda_tests
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTERNARY_BUILD_BENCH=OFF >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure
