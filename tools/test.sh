#!/usr/bin/env bash
# Installs what is missing, builds everything in Release and runs the test suite (CTest),
# after running it once more under ASan + UBSan with the fuzz targets (build-asan).
# With nvcc on the PATH it also compiles the CUDA backend (build only: no GPU is needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
jobs=$(nproc)
# CUDA first (build only: CI has no GPU), in its own build dir and only the CUDA targets (the
# CUDA tests and the nvcc-built train_gpt with --device cuda and NCCL), so
# a CUDA compile break never lands; the CPU build never needs the CUDA toolkit. The CTest
# summary then stays the last thing printed.
if command -v nvcc >/dev/null 2>&1; then
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DTERNARY_BUILD_BENCH=OFF \
    -DTERNARY_BUILD_EXAMPLES=ON -DTERNARY_CUDA=ON >/dev/null
  cmake --build build-cuda -j"$jobs" --target ternary_cuda_tests train_gpt
fi
# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (clang, build-asan), plus
# the libFuzzer targets of tests/fuzz for a short fixed count each. TERNARY_SKIP_SANITIZERS=1
# skips it.
if [ "${TERNARY_SKIP_SANITIZERS:-0}" != 1 ]; then
  bash tools/configure_sanitizers.sh
  cmake --build build-asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -j"$jobs" --output-on-failure
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTERNARY_BUILD_BENCH=OFF >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure
