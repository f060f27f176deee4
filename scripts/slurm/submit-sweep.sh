#!/usr/bin/env bash
# Submits an interchange sweep to SLURM: the means phase (an array over concepts), then the
# intervention array, which starts only when every means task succeeded (--dependency=afterok).
#   scripts/slurm/submit-sweep.sh CONFIG.yaml TASKS [--gpu] [--means-tasks M]
# TASKS: intervention shards (array tasks); M: means shards (default: TASKS, at most 10, one per
# concept); --gpu: one GPU per task (--gres=gpu:1, --device cuda). Other sbatch settings (partition,
# account, time limit) come from the environment: SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT.
# Prints the two job ids; `musicgen-interp intervene --status --config CONFIG.yaml` follows the run.
set -euo pipefail
usage() { echo "usage: $0 CONFIG.yaml TASKS [--gpu] [--means-tasks M]" >&2; exit 2; }
[ $# -ge 2 ] || usage
config=$(realpath "$1"); tasks=$2; shift 2
[ -f "$config" ] || { echo "$0: no config file $config" >&2; exit 2; }
[[ "$tasks" =~ ^[1-9][0-9]*$ ]] || { echo "$0: TASKS must be a positive whole number, got $tasks" >&2; exit 2; }
device=cpu; gres=(); means_tasks=$(( tasks < 10 ? tasks : 10 ))
while [ $# -gt 0 ]; do
  case $1 in
    --gpu) device=cuda; gres=(--gres=gpu:1) ;;
    --means-tasks) means_tasks=${2:?--means-tasks needs a number}; shift ;;
    *) usage ;;
  esac
  shift
done
[[ "$means_tasks" =~ ^[1-9][0-9]*$ ]] || { echo "$0: --means-tasks must be a positive whole number" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${MUSICGEN_INTERP:-}" ]; then
  if [ -x "$here/../../target/release/musicgen-interp" ]; then MUSICGEN_INTERP=$(realpath "$here/../../target/release/musicgen-interp"); else MUSICGEN_INTERP=musicgen-interp; fi
fi
export MUSICGEN_INTERP
means=$(sbatch --parsable --array=0-$((means_tasks - 1)) "${gres[@]}" "$here/means.sbatch" "$config" "$means_tasks" "$device")
means=${means%%;*}
array=$(sbatch --parsable --array=0-$((tasks - 1)) --dependency=afterok:"$means" --kill-on-invalid-dep=yes "${gres[@]}" "$here/intervene.sbatch" "$config" "$tasks" "$device")
array=${array%%;*}
echo "means job $means ($means_tasks task(s))"
echo "intervention job $array ($tasks task(s), after means job $means succeeds)"
echo "resubmit a killed task K: sbatch --array=K ${gres[*]} $here/intervene.sbatch $config $tasks $device"
