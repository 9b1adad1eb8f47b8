#!/usr/bin/env bash
# Crash safety, with a real kill: train_gpt killed (SIGKILL) at a random step while it writes
# a checkpoint every step, then resumed from that checkpoint, must give the same loss at every
# step, and the same final bits per byte, as an uninterrupted run: bit for bit (the losses
# are compared as printed, shortest round-trip decimal), same seed, same thread count.
#
#   tests/kill_resume.sh <train_gpt> <work-dir> [seed-for-the-kill-point]
set -euo pipefail
train_gpt=$1
work=$2
RANDOM=${3:-$$}
steps=120
rm -rf "$work" && mkdir -p "$work" && cd "$work"
args=(--layers 2 --dim 32 --heads 2 --kv-heads 1 --mlp-mult 2 --seq 64 --batch 4
      --steps "$steps" --warmup 5 --threads 1 --eval-batches 4 --log-every 100000 --codec zlib)

"$train_gpt" "${args[@]}" --log a.jsonl --export a.artifact > a.json 2> a.err

# The interrupted run: kill it once its log has reached a random step.
kill_at=$((5 + RANDOM % (steps - 20)))
"$train_gpt" "${args[@]}" --save ck.safetensors --save-every 1 --log b.jsonl \
  --export b.artifact > b1.json 2> b1.err &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  n=0; [ -f b.jsonl ] && n=$(wc -l < b.jsonl)
  if [ "$n" -ge "$kill_at" ]; then kill -KILL "$pid"; break; fi
  sleep 0.002
done
wait "$pid" 2>/dev/null && { echo "FAIL: the run finished before the kill (step $kill_at)"; exit 1; }
[ -s b1.json ] && { echo "FAIL: the killed run printed its result"; exit 1; }
ls ck.safetensors.tmp.* >/dev/null 2>&1 && echo "note: the kill left a temporary file (never read)"
resumed_from=$(grep -o '"step":"[0-9]*"' <(strings ck.safetensors | head -c 100000) | head -1 || true)
echo "killed at log line $(wc -l < b.jsonl) (target $kill_at); checkpoint metadata $resumed_from"

"$train_gpt" "${args[@]}" --resume ck.safetensors --save ck.safetensors --save-every 1 \
  --log b.jsonl --export b.artifact > b2.json 2> b2.err
grep -q "resumed from ck.safetensors" b2.err || { echo "FAIL: no resume"; cat b2.err; exit 1; }

# step -> loss, exactly as logged.
losses() { sed -E 's/.*"loss":([^,}]*).*"step":([0-9]+).*/\2 \1/' "$1"; }
losses a.jsonl | sort -n > a.losses
[ "$(wc -l < a.losses)" -eq "$steps" ] || { echo "FAIL: uninterrupted log has $(wc -l < a.losses) steps"; exit 1; }
fail=0
while read -r step loss; do
  want=$(awk -v s="$step" '$1 == s { print $2 }' a.losses)
  if [ "$loss" != "$want" ]; then echo "FAIL: step $step: loss $loss after resume, $want uninterrupted"; fail=1; fi
done < <(losses b.jsonl)
covered=$(losses b.jsonl | awk '{print $1}' | sort -un | wc -l)
[ "$covered" -eq "$steps" ] || { echo "FAIL: resumed logs cover $covered of $steps steps"; fail=1; }
bpb() { grep -o '"val_bpb_artifact":[^,}]*' "$1"; }
[ "$(bpb a.json)" = "$(bpb b2.json)" ] || { echo "FAIL: $(bpb a.json) uninterrupted, $(bpb b2.json) resumed"; fail=1; }
[ "$fail" -eq 0 ] && echo "PASS: $steps steps, killed at step ~$kill_at, resumed: every loss and $(bpb b2.json) identical"
exit "$fail"
