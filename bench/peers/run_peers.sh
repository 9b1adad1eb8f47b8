#!/usr/bin/env bash
# Runs our bench_train_step and the LibTorch peer alternately on one config and prints the
# ratio of tokens/s (ours / theirs' best), fp32 and ternary (STE).
#
#   bench/peers/run_peers.sh [build-dir] [rounds]        (defaults: build-perf, 3)
#
# Needs: cmake --build <build-dir> --target bench_train_step, and Debian's libtorch-dev with
# OpenBLAS as the BLAS (apt-get install libtorch-dev libopenblas0-pthread; check with
# update-alternatives --display libblas.so.3-x86_64-linux-gnu; the reference BLAS makes
# LibTorch ~20x slower). The peer is built here into <build-dir>/peers. Each figure is the
# best of `rounds` alternating runs (best, because other load on the machine only slows).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build-perf}
rounds=${2:-3}
cd "$root"
cmake -S bench/peers -B "$build/peers" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build/peers" > /dev/null
config="--layers 4 --dim 256 --heads 4 --kv-heads 4 --mlp-mult 4 --vocab 1024 --seq 256 --batch 16"
steps=${STEPS:-5}
ours_threads=${OURS_THREADS:-2}
# adamw: the peer's optimizer (AdamW on every parameter); golf: ours with Muon (more work)
optimizer=${OPTIMIZER:-adamw}
tok() { sed -n 's/.*"tokens_per_s": \([0-9.]*\).*/\1/p' | tail -1; }
best() { printf '%s\n' "$@" | sort -g | tail -1; }

for mode in fp32 ternary; do
  flag=""; [ "$mode" = ternary ] && flag="--ternary"
  ours=(); t1=(); t2=()
  for ((r = 0; r < rounds; ++r)); do
    ours+=("$("$build/bench/bench_train_step" $config --threads "$ours_threads" --steps "$steps" --optimizer "$optimizer" $flag 2>/dev/null | tok)")
    t1+=("$("$build/peers/gpt_libtorch" $config --threads 1 --steps "$steps" $flag | tok)")
    t2+=("$("$build/peers/gpt_libtorch" $config --threads 2 --steps "$steps" $flag | tok)")
    echo "$mode round $r: ours(${ours_threads}t) ${ours[-1]}  libtorch(1t) ${t1[-1]}  libtorch(2t) ${t2[-1]} tokens/s" >&2
  done
  o=$(best "${ours[@]}"); a=$(best "${t1[@]}"); b=$(best "${t2[@]}")
  peer=$(best "$a" "$b"); pt=1; [ "$peer" = "$b" ] && pt=2
  ratio=$(awk -v o="$o" -v p="$peer" 'BEGIN { printf "%.2f", o / p }')
  echo "$mode: ours $o tokens/s ($ours_threads threads, $optimizer), libtorch $peer tokens/s (best: $pt threads; 1t $a, 2t $b), ratio $ratio"
done
