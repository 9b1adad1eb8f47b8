#!/usr/bin/env bash
# Data-parallel scaling on one machine of several GPUs (docs/distributed.md, "Measured"):
# train_gpt at the golf preset with the same global batch and seed on 1 GPU and on N GPUs
# (tools/launch), then compares the two loss curves step by step and the steady tokens/s.
# Run from the repository root over a train_gpt built with -DTERNARY_CUDA=ON. Appends to two
# files in $OUT, under a "== $TAG" heading: dist_summary.txt (the comparison) and dist_logs.txt
# (the runs' logs and results).
#
#   BUILD=build-cuda OUT=/tmp/dist GPUS=2 STEPS=10 bash bench/run_cuda_dist.sh [train_gpt flags]
#
# Each run is stopped after RUN_TIMEOUT seconds (default 300), so a hang cannot eat a lease.
#
# Default flags: --preset golf --batch 512 --micro-batch 16 (524,288 tokens a step, as the
# Parameter Golf reference); extra flags (e.g. --ternary, --precision bf16) are appended.
set -uo pipefail
# NVLink multicast stays off on shared machines (the device tool's KINDS.md says why).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ROOT=$PWD
B=$ROOT/${BUILD:-build-cuda}
OUT=${OUT:-/tmp/dist}
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
STEPS=${STEPS:-10}
TAG=${TAG:-golf}
mkdir -p "$OUT"
WORK=$(mktemp -d)
args=(--device cuda --preset golf --batch 512 --micro-batch 16 --steps "$STEPS" --warmup 2
  --eval-batches 2 --log-every 1 "$@")

status=0
echo "== $TAG: train_gpt ${args[*]}" >>"$OUT/dist_logs.txt"
echo "== $TAG: train_gpt ${args[*]}" >>"$OUT/dist_summary.txt"
for w in 1 "$GPUS"; do
  log=$WORK/w$w.jsonl
  echo "== $w GPU(s), $(date +%T): train_gpt ${args[*]}" >&2
  if [ "$w" = 1 ]; then
    timeout "${RUN_TIMEOUT:-300}" "$B/examples/train_gpt" "${args[@]}" --log "$log" --export "$WORK/w1.artifact" \
      >"$WORK/w1.json" 2>"$WORK/w1.err"
  else
    timeout "${RUN_TIMEOUT:-300}" "$ROOT/tools/launch" -n "$w" -- "$B/examples/train_gpt" "${args[@]}" --log "$log" \
      --export "$WORK/w$w.artifact" >"$WORK/w$w.json" 2>"$WORK/w$w.err"
  fi
  st=$?
  echo "   finished $(date +%T), status $st" >&2
  tail -c 1500 "$WORK/w$w.err" | tr '\r' '\n' | grep -v '^ *$' | tail -8 >&2
  [ "$st" = 0 ] || { echo "FAILED: $w GPU(s), status $st" >&2; status=1; }
  for f in jsonl json err; do
    echo "--- $w GPU(s): $f"
    tr '\r' '\n' <"$WORK/w$w.$f" | grep -v '^ *$' | tail -40
  done >>"$OUT/dist_logs.txt"
done

python3 - "$WORK/w1.jsonl" "$WORK/w$GPUS.jsonl" "$GPUS" "$WORK/w1.json" "$WORK/w$GPUS.json" \
  <<'PY' | tee -a "$OUT/dist_summary.txt"
import json, sys
def read(path):
    return [json.loads(l) for l in open(path) if l.strip()]
one, many, gpus = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3])
def final(path):  # the program's last stdout line is its JSON result ("[rank 0] " first)
    lines = [l[l.index("{"):] for l in open(path) if "{" in l and l.rstrip().endswith("}")]
    return json.loads(lines[-1]) if lines else {}
f1, fn = final(sys.argv[4]), final(sys.argv[5])
tokens = 512 * 1024
def steady(log, skip=2):
    # tokens_per_s is cumulative (steps so far over the time since the start), so the time
    # at step n is n * tokens / tokens_per_s; the steady rate leaves out the first steps.
    t = {r["step"]: r["step"] * tokens / r["tokens_per_s"] for r in log}
    last = max(t)
    return (last - skip) * tokens / (t[last] - t[skip]), (t[last] - t[skip]) / (last - skip)
r1, ms1 = steady(one); rn, msn = steady(many)
print(f"{'step':>4s} {'loss, 1 GPU':>14s} {f'loss, {gpus} GPUs':>14s} {'rel. diff':>10s}")
worst3 = worst = 0.0
for a, b in zip(one, many):
    d = abs(a["loss"] - b["loss"]) / abs(a["loss"])
    worst = max(worst, d)
    if a["step"] <= 3: worst3 = max(worst3, d)
    print(f"{a['step']:4d} {a['loss']:14.6f} {b['loss']:14.6f} {d:10.2e}")
print(f"loss curves: max relative difference {worst3:.2e} over steps 1-3, {worst:.2e} over all")
print(f"steady rate (steps 3-{len(one)}): 1 GPU {r1:,.0f} tokens/s ({1e3*ms1:.1f} ms/step), "
      f"{gpus} GPUs {rn:,.0f} tokens/s ({1e3*msn:.1f} ms/step): scaling {rn/r1:.2f}x")
for name, f in (("1 GPU", f1), (f"{gpus} GPUs", fn)):
    if f: print(f"{name}: val bpb {f.get('val_bpb')}, reloaded {f.get('val_bpb_artifact')}, "
                f"artifact {f.get('artifact_bytes')} bytes")
PY
[ "${PIPESTATUS[0]}" = 0 ] || status=1
rm -rf "$WORK"
exit $status
