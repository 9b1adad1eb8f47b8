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
#            (PROFILE_ARGS=--ternary adds bench_cuda_gpt flags; PROFILE_TAG names the files:
#            $tag.txt, the summary, and $tag.csv.gz, every kernel)
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
      step bash -c "$B/bench/bench_cuda_gpt --batch 64 --accum 8 --steps 2 --warmup 1 $args \
        2>$OUT/gpt_$name.log | tee $OUT/gpt_$name.txt"
    done ;;
  train)
    step bash -c "cd $OUT && $B/examples/train_gpt --device cuda --train $ROOT/data/kjv.txt.zst \
      --export tiny_cuda.artifact 2>&1 | tail -15 | tee train_tiny_cuda.txt" ;;
  profile)
    tag=${PROFILE_TAG:-ncu}
    step bash -c "ncu --clock-control none --metrics gpu__time_duration.sum --csv \
      $B/bench/bench_cuda_gpt --layers 2 --batch 8 --steps 1 --warmup 1 --tf32 ${PROFILE_ARGS:-} \
      >$OUT/$tag.csv 2>$OUT/$tag.err"
    step python3 - "$OUT/$tag.csv" <<'PY' | tee "$OUT/$tag.txt"
import csv, collections, re, sys
rows = list(csv.reader(open(sys.argv[1])))  # the program's own output comes first
rows = rows[next(i for i, r in enumerate(rows) if "Kernel Name" in r):]
head = rows[0]; ki = head.index("Kernel Name"); vi = head.index("Metric Value"); ui = head.index("Metric Unit")
by_base = collections.Counter(); n_base = collections.Counter()
by_full = collections.Counter(); n_full = collections.Counter()
for r in rows[1:]:
    v = float(r[vi].replace(",", ""))
    v *= {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r[ui]]
    full = r[ki].replace("void ", "")
    base = re.sub(r"\(.*", "", full).split("<")[0][:60]
    by_base[base] += v; n_base[base] += 1
    by_full[full[:160]] += v; n_full[full[:160]] += 1
s = sum(by_base.values())
print(f"{'kernel':60s} {'calls':>6s} {'us':>10s} {'%':>6s}")
for n, v in by_base.most_common(30): print(f"{n:60s} {n_base[n]:6d} {v:10.0f} {100*v/s:6.1f}")
print(f"total {s/1000:.1f} ms over {sum(n_base.values())} kernels (2 steps incl. warm-up)")
print("\nby full name (first 160 characters):")
for n, v in by_full.most_common(40): print(f"{v:10.0f} us {100*v/s:5.1f}% {n_full[n]:5d}x  {n}")
PY
    tail -5 "$OUT/$tag.err" >>"$OUT/$tag.txt"; rm -f "$OUT/$tag.err"
    gzip -f "$OUT/$tag.csv" ;;
  *) echo "unknown part '$what' (tests, bench, train, profile)" >&2; exit 2 ;;
  esac
done
exit $status
