#!/usr/bin/env bash
# Sets up everything musicgen-interp needs on a fresh machine, idempotently:
#   - .venv: the exporter's Python environment (torch, transformers, onnx) and the onnxruntime
#     library the Rust runtime loads (from the PyPI onnxruntime wheel; onnxruntime-gpu with --gpu);
#   - the Rust build (release);
#   - models/tiny: a test-sized random-weight bundle (models/small too with --small: ~2 GB);
#   - models/classifier: a small random-weight ONNX audio classifier for the demo configs.
# Usage: bash scripts/setup.sh [--gpu] [--small]
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0; small=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --small) small=1 ;;
    *) echo "setup.sh: unknown option $arg (use --gpu, --small)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$python" -m venv .venv
fi
want=$(cat onnx/requirements.txt python/requirements.txt scripts/setup.sh | sha256sum | cut -c1-16)-$gpu
if [ "$(cat .venv/.musicgen-interp-stamp 2>/dev/null)" != "$want" ]; then
  echo "== installing the Python environment (torch from PyPI is large: a few minutes the first time)"
  # torch's PyPI wheel brings CUDA's wheels: the environment is about 6 GB, and pip needs about 3 GB more
  # while it unpacks. Say so before starting rather than fail half-way with a full disk.
  need_kib=$((10 * 1024 * 1024))
  free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
  if [ "$free_kib" -lt "$need_kib" ]; then
    echo "setup.sh: the Python environment needs about 10 GB free beside the project; $(df -Ph . | awk 'NR == 2 { print $4 }') is free here" >&2
    exit 1
  fi
  # pip unpacks in the project's own folder (a small /tmp must not fail the install), keeps no second
  # copy of the wheels in its cache, and leaves nothing behind.
  export TMPDIR="$PWD/.venv/pip-tmp"
  mkdir -p "$TMPDIR"
  pip_install() { .venv/bin/python -m pip install -q --no-cache-dir "$@"; }
  pip_install --upgrade pip
  pip_install -r onnx/requirements.txt
  pip_install -r python/requirements.txt   # maturin: builds the Python package
  if [ "$gpu" = 1 ]; then
    # The GPU wheel provides the same `onnxruntime` package with the CUDA provider; CUDA and cuDNN
    # come as PyPI wheels too (see README "GPU hosts").
    ort_version=$(grep -E '^onnxruntime==' onnx/requirements.txt | cut -d= -f3)
    .venv/bin/python -m pip uninstall -q -y onnxruntime
    pip_install "onnxruntime-gpu[cuda,cudnn]==$ort_version"
  fi
  rm -rf "$TMPDIR"
  unset TMPDIR
  echo "$want" > .venv/.musicgen-interp-stamp
fi

echo "== building (release)"
cargo build --release --workspace --quiet
echo "== installing the Python package musicgen_interp into .venv (python/; cargo rebuilds only what changed)"
.venv/bin/maturin develop --release --quiet -m python/Cargo.toml

format_version=$(sed -n 's/^FORMAT_VERSION = \([0-9]*\)$/\1/p' onnx/export.py)
export_bundle() { # NAME (again when the bundle was written in an older format)
  have=$(.venv/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['format_version'])" "models/$1/manifest.json" 2>/dev/null || true)
  if [ "$have" != "$format_version" ]; then
    rm -rf "models/$1"
    echo "== exporting the random-weight '$1' bundle to models/$1"
    .venv/bin/python onnx/export.py --preset "$1" --random-weights --seed 0 --out "models/$1"
  fi
}
mkdir -p models
export_bundle tiny
if [ ! -f models/tiny/random_directions.npy ]; then
  # Demo steering weights for configs/steering.yaml: random [layers, 4 classes, d_model] directions
  # (real ones come from `train-probes`).
  .venv/bin/python -c "import json, numpy as np; m = json.load(open('models/tiny/manifest.json'))['decoder']; np.save('models/tiny/random_directions.npy', np.random.default_rng(0).standard_normal((m['num_layers'], 4, m['d_model'])).astype(np.float32))"
fi
if [ ! -f models/classifier/classifier.onnx ]; then
  # A small random-weight audio classifier with AudioSet-style labels, the judge of the demo configs
  # (configs/intervene.yaml, configs/decoder-lens.yaml); use a real one (e.g. PaSST) for real work.
  .venv/bin/python onnx/make_classifier.py --out models/classifier
fi
if [ "$small" = 1 ]; then export_bundle small; fi
echo "== ready: ./target/release/musicgen-interp info --model models/tiny"
