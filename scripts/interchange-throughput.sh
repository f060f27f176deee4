#!/usr/bin/env bash
# Interchange throughput: 4 s clips per minute of `intervene` at batch 1, 16 and 64 and at the batch
# `auto` picks, on one pair (jazz -> rock), one prompt, both modes, judged by the tests' classifier.
# The concept means are made once first, so each timing is the interventions (and one baseline).
# Usage: bash scripts/interchange-throughput.sh DEVICE MODEL [SECONDS] [BATCHES]
#   e.g. bash scripts/interchange-throughput.sh cuda models/small-fp16
#        bash scripts/interchange-throughput.sh cpu tests/data/tiny 1 "1 4 auto"   (a quick check)
set -euo pipefail
cd "$(dirname "$0")/.."
device=$1 model=$2 seconds=${3:-4} batches=${4:-"1 16 64 auto"}
bin=./target/release/musicgen-interp
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
layers=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['decoder']['num_layers'])" "$model/manifest.json")
run=(--device "$device" intervene --model "$model" --concepts jazz,rock --fixed-concept jazz --n-prompts-per-concept 1
     --duration "$seconds" --modes adjust,replace --seed 0
     --judge-model tests/data/classifier/classifier.onnx --judge-labels tests/data/classifier/labels.csv --judge-sample-rate 16000)
"$bin" "${run[@]}" --means-only --output-dir "$out/means" > "$out/means.log" 2>&1 || { cat "$out/means.log"; exit 1; }
echo "batch,interventions,seconds,clips_per_minute"
for b in $batches; do
  # Two batches' worth of interventions (both modes over `sites` sites), at most every site.
  rows=$b; [ "$b" = auto ] && rows=64; [ "$rows" = 1 ] && rows=8
  sites=$(( rows < 3 * layers ? rows : 3 * layers ))
  list=$(.venv/bin/python -c "import sys; L=int(sys.argv[2]); print(','.join(f'blocks.{i // 3}.{c}' for i, c in zip(range(int(sys.argv[1])), ['attn', 'cross_attn', 'mlp'] * L)))" "$sites" "$layers")
  start=$(date +%s.%N)
  "$bin" "${run[@]}" --sites "$list" --batch-size "$b" --pre-computed-means "$out/means/means" --output-dir "$out/b$b" 2> "$out/log$b" > /dev/null \
    || { cat "$out/log$b"; exit 1; }
  end=$(date +%s.%N)
  grep -h "interventions: batch size" "$out/log$b" >&2 || true
  .venv/bin/python -c "import sys; n, t = 2 * int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3]); print(f'{sys.argv[1]},{n},{t:.1f},{n / t * 60:.1f}')" "$b" "$sites" "$start" "$end"
done
