#!/usr/bin/env bash
# Builds the library's examples (examples/*.rs) and runs each on a tiny test bundle, as users run them;
# fails on the first that exits non-zero (steer_with_a_closure exits non-zero if steering changed nothing).
#   bash scripts/examples.sh [BUNDLE]    (default tests/data/tiny, exported by scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-tests/data/tiny}
if [ ! -f "$bundle/manifest.json" ]; then
  echo "no model bundle at $bundle: run \`bash scripts/test.sh\` first (it exports tests/data/tiny)" >&2
  exit 1
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo build --release --examples

# Every example is run here, so a new one cannot be forgotten.
for file in examples/*.rs; do
  case "$(basename "$file" .rs)" in
    record_residuals | steer_with_a_closure) ;;
    *) echo "examples.sh does not run $file: add it" >&2; exit 1 ;;
  esac
done

echo "== example record_residuals"
cargo run -q --release --example record_residuals -- "$bundle" "$out/resid_post.npy"
test -s "$out/resid_post.npy" || { echo "record_residuals wrote no $out/resid_post.npy" >&2; exit 1; }

echo "== example steer_with_a_closure"
cargo run -q --release --example steer_with_a_closure -- "$bundle"
