#!/usr/bin/env bash
# Configures build-asan: clang, AddressSanitizer + UndefinedBehaviorSanitizer, -O0 (it compiles
# 4x faster than -O1 and the suite still runs in a minute or two), the tests and the libFuzzer
# targets of tests/fuzz. Used by tools/test.sh and tools/fuzz_campaign.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=clang CXX=clang++ cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g0 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
  -DTERNARY_BUILD_BENCH=OFF -DTERNARY_BUILD_EXAMPLES=OFF -DTERNARY_FUZZ=ON >/dev/null
