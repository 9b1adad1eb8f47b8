#!/usr/bin/env bash
# The programs on bad input: each case must exit non-zero and print a message that names
# what is at fault (the flag, the file, the field), never crash (exit code >= 128) or hang.
#
#   tests/program_errors.sh <train_gpt> <finetune_ternary> <work-dir>
set -uo pipefail
train_gpt=$1
finetune=$2
work=$3
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail=0
expect() {  # expect <what> <regex> <command...>
  local what=$1 regex=$2
  shift 2
  out=$(timeout 120 "$@" 2>&1 >/dev/null)
  rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -ge 124 ]; then
    echo "FAIL: $what: exit code $rc"; fail=1
  elif ! grep -Eq -- "$regex" <<<"$out"; then
    echo "FAIL: $what: message does not match /$regex/:"; echo "$out" | tail -3; fail=1
  else
    echo "ok: $what: $(grep -E -- "$regex" <<<"$out" | head -1 | cut -c1-150)"
  fi
}
common=(--layers 2 --heads 2 --kv-heads 1 --seq 32 --batch 2 --steps 2 --threads 1)
small=("${common[@]}" --dim 32)

expect "zero width" "--dim" "$train_gpt" --dim 0
expect "heads not dividing dim" "dim 30 is not a multiple of n_heads 4" "$train_gpt" --dim 30 --heads 4
expect "unknown preset" "unknown preset 'huge'" "$train_gpt" --preset huge
expect "warmdown out of range" "--warmdown" "$train_gpt" --warmdown 2
expect "GPU precision on the CPU" "--precision bf16 applies to --device cuda" "$train_gpt" --precision bf16
expect "unknown precision" "--precision" "$train_gpt" --device cuda --precision fp8
expect "missing resume file" "nothing.safetensors.*cannot open" "$train_gpt" "${small[@]}" --resume nothing.safetensors
printf 'not a checkpoint' > junk.safetensors
expect "junk checkpoint" "junk.safetensors" "$train_gpt" "${small[@]}" --resume junk.safetensors
"$train_gpt" "${small[@]}" --save ok.safetensors --export ok.artifact >/dev/null 2>&1 || { echo "FAIL: small run"; fail=1; }
head -c 3000 ok.safetensors > cut.safetensors
expect "truncated checkpoint" "cut.safetensors" "$train_gpt" "${small[@]}" --resume cut.safetensors
expect "checkpoint of another shape" "shape" "$train_gpt" "${common[@]}" --dim 64 --resume ok.safetensors
expect "missing training file" "no_such.txt" "$train_gpt" "${small[@]}" --train no_such.txt
printf '' > empty.txt
expect "empty training text" "empty.txt.*empty" "$train_gpt" "${small[@]}" --train empty.txt
printf 'garbage that is not a shard at all' > bad.bin
expect "bad shard" "bad.bin.*(shorter|magic)" "$train_gpt" "${small[@]}" --vocab 1024 --train bad.bin --val bad.bin
expect "shards without --val" "need --val" "$train_gpt" "${small[@]}" --train 'x_*.bin'
expect "junk fp checkpoint for finetune" "junk.safetensors" "$finetune" junk.safetensors --steps 1
exit "$fail"
