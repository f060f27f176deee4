#!/usr/bin/env bash
# Runs every test: the exporter's own checks (pytest) and the Rust tests, which compare the ONNX path
# against transformers reference outputs written by onnx/reference.py into tests/data/.
# The fixtures (two tiny random-weight bundles with their references) are regenerated whenever the
# exporter, the reference script or the presets change.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

stamp=$(cat onnx/*.py onnx/presets/*.json onnx/requirements.txt onnx/t5_tokenizer_corpus.txt | sha256sum | cut -c1-16)
if [ "$(cat tests/data/.stamp 2>/dev/null)" != "$stamp" ]; then
  echo "== exporting test fixtures into tests/data"
  rm -rf tests/data
  mkdir -p tests/data
  for preset in tiny tiny2; do
    .venv/bin/python onnx/export.py --preset "$preset" --random-weights --seed 0 --out "tests/data/$preset"
    .venv/bin/python onnx/reference.py --bundle "tests/data/$preset"
    .venv/bin/python onnx/reference_generate.py --bundle "tests/data/$preset"
    .venv/bin/python onnx/reference_steering.py --bundle "tests/data/$preset"
    .venv/bin/python onnx/reference_decoder_lens.py --bundle "tests/data/$preset"
    .venv/bin/python onnx/reference_interchange.py --bundle "tests/data/$preset"
    .venv/bin/python onnx/reference_residuals.py --bundle "tests/data/$preset"
  done
  # the fp16 profile (GPU hosts): float16 graphs, no CPU copies; transformers in float16 and in float32 on the same rounded weights
  for preset in tiny tiny2; do
    .venv/bin/python onnx/export.py --preset "$preset" --random-weights --seed 0 --precision fp16 --out "tests/data/$preset-fp16"
    .venv/bin/python onnx/reference.py --bundle "tests/data/$preset-fp16"
    .venv/bin/python onnx/reference.py --bundle "tests/data/$preset-fp16" --dtype float32 --out "tests/data/$preset-fp16/reference-fp32"
    .venv/bin/python onnx/reference_generate.py --bundle "tests/data/$preset-fp16"
    .venv/bin/python onnx/reference_steering.py --bundle "tests/data/$preset-fp16"
    .venv/bin/python onnx/reference_decoder_lens.py --bundle "tests/data/$preset-fp16"
  done
  .venv/bin/python onnx/make_classifier.py --out tests/data/classifier
  # the seed's judge, PaSST, untrained (tests/passt.rs)
  .venv/bin/python onnx/export_passt.py --random-weights --seed 0 --out tests/data/passt
  .venv/bin/python onnx/quantize.py --bundle tests/data/tiny --out tests/data/tiny-int8 --bits 8 --reference-checkpoint
  .venv/bin/python onnx/reference.py --bundle tests/data/tiny-int8
  .venv/bin/python onnx/reference_sampling.py --out tests/data/sampling
  # a T5-style SentencePiece tokenizer in a tiny bundle, and transformers' T5 tokenizer on it (tests/tokenizer.rs)
  .venv/bin/python onnx/make_t5_tokenizer.py --out tests/data/t5-tokenizer.json
  .venv/bin/python onnx/export.py --preset tiny --random-weights --seed 0 --tokenizer tests/data/t5-tokenizer.json --out tests/data/tiny-t5tok
  .venv/bin/python onnx/reference_tokenizer.py --bundle tests/data/tiny-t5tok
  echo "$stamp" > tests/data/.stamp
fi
if [ "${MUSICGEN_INTERP_FIXTURES_ONLY:-}" = 1 ]; then exit 0; fi   # scripts/gpu-check.sh: the fixtures, no CPU tests

echo "== exporter checks (pytest)"
.venv/bin/python -m pytest -q onnx/tests

echo "== the kernels' pool under loom (every interleaving of the claim protocol; own target dir, as --cfg loom rebuilds what it touches)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -q -p musicgen-interp-pool --lib

echo "== Rust tests"
# --release shares the build with scripts/setup.sh (one compile instead of two on CI's two cores)
cargo test --workspace --release
bash scripts/examples.sh   # examples/*.rs on the library API, run on tests/data/tiny; any non-zero exit fails
bash scripts/interchange-throughput.sh cpu tests/data/tiny 0.3 "1 auto"   # gpu-check.sh's throughput step, on CPU

echo "== Python package (python/tests on tiny and tiny2, then examples/python on the tiny bundle)"
.venv/bin/maturin develop --release --quiet -m python/Cargo.toml
.venv/bin/python -m pytest -q python/tests
examples_out=$(mktemp -d)
for example in residual_norms train_probes steer_with_probe; do
  .venv/bin/python "examples/python/$example.py" tests/data/tiny "$examples_out/$example"
done
rm -rf "$examples_out"
