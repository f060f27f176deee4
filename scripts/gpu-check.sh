#!/usr/bin/env bash
# The GPU path, proved on a CUDA host in one command:
#   1. set-up with onnxruntime-gpu and its CUDA / cuDNN wheels (scripts/setup.sh --gpu);
#   2. the test fixtures (the tiny bundles, float32 and the fp16 profile, with their transformers
#      references) and a random-weight bundle of musicgen-small's sizes in the fp16 GPU profile;
#   3. the half-precision parity, greedy-generation and host<->device traffic tests on CUDA
#      (MUSICGEN_INTERP_TEST_DEVICE=cuda; float32 bundles are refused on CUDA, see README "GPU hosts");
#   4. `info --device cuda --placement`: the provider of every node of the decoder's graphs (none may
#      fall back to the CPU), and a float32 bundle refused with the profile to export;
#   5. `bench --device cuda`: steps/s at batch 1 with guidance against transformers generate() in
#      float16 on the same GPU and weights in the same run, real-time factor, the bytes crossing
#      between host and device per step;
#   6. interchange throughput (scripts/interchange-throughput.sh): 4 s clips per minute at batch 1,
#      16 and 64, and the batch `auto` picks from the device's free memory.
# Usage: bash scripts/gpu-check.sh [--durations 1,10,30]   (about 10 minutes on an H100-class host)
set -euo pipefail
cd "$(dirname "$0")/.."
durations=1,10,30
if [ "${1:-}" = "--durations" ]; then durations=$2; fi

echo "== set-up (GPU)"
bash scripts/setup.sh --gpu
bin=./target/release/musicgen-interp
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "(nvidia-smi not found)"

echo "== test fixtures"
MUSICGEN_INTERP_FIXTURES_ONLY=1 bash scripts/test.sh
if [ ! -f models/small-fp16/manifest.json ]; then
  echo "== a random-weight musicgen-small-sized bundle, fp16 GPU profile (models/small-fp16)"
  .venv/bin/python onnx/export.py --preset small --random-weights --seed 0 --precision fp16 --targets gpu --out models/small-fp16
fi

echo "== placement (every decoder node on the CUDA provider, or the command fails)"
$bin info --device cuda --placement --model models/small-fp16
if $bin info --device cuda --model tests/data/tiny > /tmp/gpu-check-refusal.txt 2>&1; then
  echo "FAIL: a float32 bundle was accepted on CUDA"; exit 1
fi
echo "float32 bundle on CUDA refused as it should be: $(tail -1 /tmp/gpu-check-refusal.txt)"

echo "== parity, generation and traffic tests on CUDA"
export MUSICGEN_INTERP_TEST_DEVICE=cuda
cargo test --release --test parity -- fp16::
cargo test --release --test generate -- fp16
cargo test --release --test traffic
unset MUSICGEN_INTERP_TEST_DEVICE

echo "== bench on CUDA (musicgen-small sizes, fp16, random weights)"
$bin bench --device cuda --model models/small-fp16 --durations "$durations"
echo "== generate --verbose on CUDA: bytes per step"
$bin generate --device cuda --model models/small-fp16 --text "80s pop track with bassy drums and synth" --duration 4 --output /tmp/gpu-check.wav --verbose | tail -4
echo "== interchange throughput on CUDA: 4 s clips per minute at batch 1, 16, 64 and auto"
bash scripts/interchange-throughput.sh cuda models/small-fp16
echo "== done"
