#!/usr/bin/env bash
# Runs what a newcomer is told to run, exactly as written, and fails on the first non-zero exit:
#   1. every ```sh block of README.md, in order, in a temporary copy of the working tree;
#   2. the header command(s) of every configs/*.yaml (comment lines "#   COMMAND" before the first
#      YAML line; a trailing "\" continues on the next comment line), in a second fresh copy.
# Each copy starts like a fresh clone after set-up: the tracked files, the project's target/ and
# .venv (linked, nothing is rebuilt or installed) and a models/ folder made here the way
# scripts/setup.sh makes it (random-weight tiny bundle, demo classifier, demo steering directions).
# Offline (no Hugging Face hub); a few minutes on 2 cores.
#
# Marking README blocks (the fence's info string after "sh"):
#   ```sh                  run as written
#   ```sh setup            the set-up command: "bash scripts/setup.sh &&" is left out (the copy is
#                          already set up, see above) and the rest runs as written
#   ```sh skip: REASON     not run (heavy set-up, the hub, a GPU, the test suite); printed with REASON
# ```text blocks and indented blocks are output or formulas, never run.
#
# Usage: bash scripts/readme-check.sh        (after scripts/setup.sh; KEEP=1 keeps the temporary folder)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

for need in target/release/musicgen-interp .venv/bin/python; do
  if [ ! -x "$need" ]; then
    echo "readme-check: $need is missing; run 'bash scripts/setup.sh' first" >&2
    exit 2
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/readme-check.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "readme-check: kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)

# What scripts/setup.sh puts in models/, made once and copied into each working copy.
echo "== preparing models/ (tiny bundle, demo classifier, demo directions) in $work"
mkdir -p "$work/models"
.venv/bin/python onnx/export.py --preset tiny --random-weights --seed 0 --out "$work/models/tiny" >"$work/export.log" 2>&1 \
  || { cat "$work/export.log"; exit 1; }
.venv/bin/python -c "import json, sys, numpy as np; d = sys.argv[1]; m = json.load(open(d + '/manifest.json'))['decoder']; np.save(d + '/random_directions.npy', np.random.default_rng(0).standard_normal((m['num_layers'], 4, m['d_model'])).astype(np.float32))" "$work/models/tiny"
.venv/bin/python onnx/make_classifier.py --out "$work/models/classifier" >"$work/classifier.log" 2>&1 \
  || { cat "$work/classifier.log"; exit 1; }

fresh_copy() { # DIR: the tracked files of the working tree (with their edits), target/ and .venv linked
  mkdir -p "$1"
  git ls-files -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$1"
  ln -s "$root/target" "$1/target"
  ln -s "$root/.venv" "$1/.venv"
  cp -r "$work/models" "$1/models"
}

ran=0; skipped=0
run_block() { # DIR LABEL TEXT
  local dir=$1 label=$2 text=$3 t0 rc
  echo
  echo "== $label"
  printf '%s\n' "$text" | sed 's/^/$ /'
  t0=$(date +%s)
  set +e
  (cd "$dir" && bash -euo pipefail -c "$text" </dev/null) 2>&1 | sed 's/^/  | /'
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" != 0 ]; then
    echo "readme-check: FAILED (exit $rc): $label" >&2
    exit 1
  fi
  echo "  ok ($(( $(date +%s) - t0 )) s)"
  ran=$((ran + 1))
}

# 1. README.md: its ```sh blocks, in order. The extractor writes each block as NN.kind.line with its
#    text, and NN.reason for a skipped one.
readme=$work/readme; fresh_copy "$readme"
blocks=$work/blocks; mkdir -p "$blocks"
awk -v out="$blocks" '
  /^```/ {
    if (infence) { infence = 0; inblock = 0; next }
    infence = 1
    info = substr($0, 4)
    if (info ~ /^sh( |$)/) {
      n++; inblock = 1; kind = "run"; reason = ""
      rest = substr(info, 3); sub(/^ +/, "", rest)
      if (rest ~ /^setup$/) kind = "setup"
      else if (rest ~ /^skip/) { kind = "skip"; reason = rest; sub(/^skip:? */, "", reason) }
      else if (rest != "") { print "README.md line " NR ": unknown block mark \"" rest "\"" > "/dev/stderr"; exit 3 }
      file = sprintf("%s/%02d.%s.%d", out, n, kind, NR)
      printf "" > file
      if (kind == "skip") print reason > sprintf("%s/%02d.reason", out, n)
    }
    next
  }
  inblock { print >> file }
' README.md

for f in $(ls "$blocks" | grep -v '\.reason$' | sort); do
  n=${f%%.*}; rest=${f#*.}; kind=${rest%%.*}; line=${rest#*.}
  text=$(cat "$blocks/$f")
  case "$kind" in
    skip)
      echo
      echo "== README.md line $line: SKIPPED ($(cat "$blocks/$n.reason"))"
      printf '%s\n' "$text" | sed 's/^/  # /'
      skipped=$((skipped + 1)) ;;
    setup)
      stripped=$(printf '%s\n' "$text" | sed 's/^bash scripts\/setup\.sh && //')
      if [ "$stripped" = "$text" ]; then
        echo "readme-check: README.md line $line: a 'setup' block must start with 'bash scripts/setup.sh && '" >&2
        exit 3
      fi
      echo
      echo "== README.md line $line: set-up (the copy is set up already; running the rest as written)"
      run_block "$readme" "README.md line $line" "$stripped" ;;
    run)
      run_block "$readme" "README.md line $line" "$text" ;;
  esac
done
readme_blocks=$ran

# 2. configs/*.yaml: each file's header command(s), in a copy of its own (a fresh clone's state).
for cfg in configs/*.yaml; do
  dir=$work/config-$(basename "$cfg" .yaml); fresh_copy "$dir"
  cmds=$(awk '
    !/^#/ { exit }
    /^#   / {
      line = substr($0, 5); sub(/^ +/, "", line)
      cmd = (cont ? cmd " " : "") line
      if (cmd ~ /\\$/) { sub(/ *\\$/, "", cmd); cont = 1; next }
      print cmd; cmd = ""; cont = 0
    }
  ' "$cfg")
  if [ -z "$cmds" ]; then
    echo "readme-check: $cfg has no header command (a comment line '#   COMMAND' before the first YAML line)" >&2
    exit 3
  fi
  i=0
  while IFS= read -r cmd; do
    i=$((i + 1))
    run_block "$dir" "$cfg header command $i" "$cmd"
  done <<< "$cmds"
done

echo
echo "readme-check: passed: $readme_blocks README block(s) and $((ran - readme_blocks)) config header command(s) ran, $skipped README block(s) skipped, $(( $(date +%s) - start )) s"
