#!/usr/bin/env bash
# Submits a residual extraction to SLURM: an array of TASKS shards, then the merge once every shard
# succeeded (--dependency=afterok).
#   scripts/slurm/submit-extract.sh TASKS [--gpu] -- EXTRACT-FLAGS... (with --output-dir DIR)
# e.g. scripts/slurm/submit-extract.sh 20 -- --model models/small --data-dir data/genres --output-dir runs/residuals
# Prints the two job ids; `musicgen-interp extract --status --output-dir DIR` follows the run.
set -euo pipefail
usage() { echo "usage: $0 TASKS [--gpu] -- EXTRACT-FLAGS... --output-dir DIR" >&2; exit 2; }
[ $# -ge 1 ] || usage
tasks=$1; shift
[[ "$tasks" =~ ^[1-9][0-9]*$ ]] || { echo "$0: TASKS must be a positive whole number, got $tasks" >&2; exit 2; }
device=cpu; gres=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  case $1 in --gpu) device=cuda; gres=(--gres=gpu:1) ;; *) usage ;; esac
  shift
done
[ "${1:-}" = -- ] || usage
shift
out=""; args=("$@")
for ((k = 0; k < ${#args[@]}; k++)); do
  case ${args[k]} in --output-dir|--save-dir) out=${args[k+1]:-} ;; --output-dir=*|--save-dir=*) out=${args[k]#*=} ;; esac
done
[ -n "$out" ] || { echo "$0: the extract flags need --output-dir DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${MUSICGEN_INTERP:-}" ]; then
  if [ -x "$here/../../target/release/musicgen-interp" ]; then MUSICGEN_INTERP=$(realpath "$here/../../target/release/musicgen-interp"); else MUSICGEN_INTERP=musicgen-interp; fi
fi
export MUSICGEN_INTERP
array=$(sbatch --parsable --array=0-$((tasks - 1)) "${gres[@]}" "$here/extract.sbatch" "$tasks" "$device" "$@")
array=${array%%;*}
merge=$(sbatch --parsable --dependency=afterok:"$array" --kill-on-invalid-dep=yes "$here/extract.sbatch" merge cpu --output-dir "$out")
merge=${merge%%;*}
echo "extraction job $array ($tasks task(s))"
echo "merge job $merge (after extraction job $array succeeds)"
