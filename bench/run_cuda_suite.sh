#!/usr/bin/env bash
# The CUDA checks and figures of docs/cuda.md in one go, for a GPU machine: run from the
# repository root over binaries built elsewhere with -DTERNARY_CUDA=ON. Logs go to $OUT.
#
#   BUILD=build-cuda OUT=/tmp/cuda-suite bash bench/run_cuda_suite.sh tests bench train profile
#
#   tests    the four CUDA test programs
#   bench    bench_cuda_attention, then bench_cuda_gpt at the golf preset (524,288-token steps)
#            with TF32 and bf16 matrix math, full precision and ternary
#   train    train_gpt --device cuda: the tiny preset on the bundled text, export, reload, bpb
#   profile  per-kernel GPU time of two small steps under Nsight Compute, summed by kernel
#            (PROFILE_ARGS=--ternary adds bench_cuda_gpt flags)
set -uo pipefail
ROOT=$PWD
B=$ROOT/${BUILD:-build-cuda}
OUT=${OUT:-/tmp/cuda-suite}
mkdir -p "$OUT"
status=0
step() { echo "== $*" >&2; "$@" || { echo "FAILED ($?): $*" >&2; status=1; }; }

for what in "$@"; do
  case "$what" in
  tests)
    for t in core ops mlp gpt; do
      step bash -c "$B/tests/cuda/test_cuda_$t 2>&1 | tail -4 | tee $OUT/test_cuda_$t.txt"
    done ;;
  bench)
    step bash -c "$B/bench/bench_cuda_attention | tee $OUT/bench_attention.txt"
    for args in "--tf32" "--bf16" "--tf32 --ternary" "--bf16 --ternary"; do
      name=$(echo "$args" | tr -d ' -')
      step bash -c "$B/bench/bench_cuda_gpt --batch 16 --accum 32 --steps 2 --warmup 1 $args \
        2>$OUT/gpt_$name.log | tee $OUT/gpt_$name.txt"
    done ;;
  train)
    step bash -c "cd $OUT && $B/examples/train_gpt --device cuda --train $ROOT/data/kjv.txt.zst \
      --export tiny_cuda.artifact 2>&1 | tail -15 | tee train_tiny_cuda.txt" ;;
  profile)
    step bash -c "ncu --clock-control none --metrics gpu__time_duration.sum --csv \
      $B/bench/bench_cuda_gpt --layers 2 --batch 8 --steps 1 --warmup 1 --tf32 ${PROFILE_ARGS:-} \
      >$OUT/ncu.csv 2>$OUT/ncu.err"
    step python3 - "$OUT/ncu.csv" <<'PY'
import csv, collections, re, sys
rows = list(csv.reader(open(sys.argv[1])))  # the program's own output comes first
rows = rows[next(i for i, r in enumerate(rows) if "Kernel Name" in r):]
head = rows[0]; ki = head.index("Kernel Name"); vi = head.index("Metric Value"); ui = head.index("Metric Unit")
tot = collections.Counter(); cnt = collections.Counter()
for r in rows[1:]:
    v = float(r[vi].replace(",", ""))
    v *= {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r[ui]]
    name = re.sub(r"\(.*", "", r[ki]).split("<")[0].replace("void ", "")[:60]
    tot[name] += v; cnt[name] += 1
s = sum(tot.values())
print(f"{'kernel':60s} {'calls':>6s} {'us':>10s} {'%':>6s}")
for n, v in tot.most_common(30): print(f"{n:60s} {cnt[n]:6d} {v:10.0f} {100*v/s:6.1f}")
print(f"total {s/1000:.1f} ms over {sum(cnt.values())} kernels (2 steps incl. warm-up)")
PY
    ;;
  *) echo "unknown part '$what' (tests, bench, train, profile)" >&2; exit 2 ;;
  esac
done
exit $status
