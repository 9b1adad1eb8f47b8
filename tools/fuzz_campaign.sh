#!/usr/bin/env bash
# The long fuzz runs of docs/reliability.md: every target of tests/fuzz for SECONDS each
# (default 600), all at once at nice 19, from fresh seed corpora. Prints, per target, the
# inputs executed and the crashes found (each crash is saved under
# build-asan/fuzz-campaign/<target>/crash-*, with the input that reproduces it).
#
#   tools/fuzz_campaign.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
targets=(safetensors shard text token_table artifact cli)
bash tools/configure_sanitizers.sh
cmake --build build-asan -j"$(nproc)" --target fuzz_seeds "${targets[@]/#/fuzz_}"
out=$PWD/build-asan/fuzz-campaign
rm -rf "$out" && mkdir -p "$out"
build-asan/tests/fuzz/fuzz_seeds "$out/corpus"
for t in "${targets[@]}"; do
  mkdir -p "$out/$t"
  (cd "$out/$t" && nice -n 19 "$PWD/../../tests/fuzz/fuzz_$t" -max_total_time="$seconds" \
     -max_len=8192 -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 "$out/corpus/$t" \
     > "$out/$t.log" 2>&1 || true) &
done
wait
printf '%-12s %12s %8s\n' target executions crashes
for t in "${targets[@]}"; do
  runs=$(grep -a 'stat::number_of_executed_units' "$out/$t.log" | awk '{print $2}')
  crashes=$(find "$out/$t" -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' | wc -l)
  printf '%-12s %12s %8s\n' "$t" "${runs:-?}" "$crashes"
done
