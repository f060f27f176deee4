#!/usr/bin/env bash
# The sweep under a real scheduler: installs (if missing) and starts a single-node SLURM with munge
# from the distribution's packages, submits the means phase and a 3-task intervention array on the
# tiny bundle (scripts/slurm/submit-sweep.sh), and checks that the merged results equal a single-host
# run byte for byte; then kills one array task mid-run (scancel), resubmits that task alone, and
# checks the same again; last, an extraction as a 3-task array plus its merge (submit-extract.sh)
# against one host. Skipped, with a line saying why, only where the packages cannot be installed.
# Needs the fixtures (tests/data/tiny, tests/data/classifier), target/release/musicgen-interp and .venv.
# Run from anywhere as root (CI): bash scripts/slurm/ci-test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release/musicgen-interp
limit=${SLURM_TEST_TIMEOUT:-300}   # seconds for each wait on the scheduler
start=$(date +%s)
say() { echo "[slurm-test $(( $(date +%s) - start ))s] $*"; }
fail() { echo "slurm-test FAILED: $*" >&2; exit 1; }

[ -x "$bin" ] && [ -d "$root/tests/data/tiny" ] && [ -d "$root/tests/data/classifier" ] || fail "needs target/release/musicgen-interp and the fixtures (bash scripts/test.sh first)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing slurm-wlm and munge"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >/tmp/slurm-test-apt.log 2>&1; then
      echo "SKIP slurm-test: apt-get could not install slurm-wlm and munge (log: /tmp/slurm-test-apt.log)"; exit 0
    fi
  else
    echo "SKIP slurm-test: slurm-wlm and munge are not installed and cannot be (needs root and apt-get)"; exit 0
  fi
fi

work=$(mktemp -d /tmp/slurm-test.XXXXXX)
cd "$work"   # the jobs' slurm-*.out land here
export SLURM_CONF=$work/slurm.conf
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${munge_pid:-}" ] && kill "$munge_pid" 2>/dev/null || true
}
trap cleanup EXIT

# munge: the packaged key, a daemon of our own unless one already answers
if ! munge -n </dev/null >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged --force
  munge_pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
  munge -n </dev/null | unmunge >/dev/null || fail "munged does not answer"
fi

# one node: this machine's CPUs and memory
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p "$work/state" "$work/spool" "$work/log"
cat >"$SLURM_CONF" <<CONF
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=${SLURM_TEST_PORT:-16817}
SlurmdPort=$(( ${SLURM_TEST_PORT:-16817} + 1 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld -D -c >"$work/log/slurmctld.out" 2>&1 & pids+=($!)
slurmd -D >"$work/log/slurmd.out" 2>&1 & pids+=($!)
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
  case $state in idle*|mix*|alloc*) break ;; esac
  sleep 1
done
case ${state:-} in idle*|mix*|alloc*) say "SLURM up: node $host, $cpus CPUs, $mem MB ($state)" ;; *) cat "$work/log/"*; fail "the node did not come up (state: ${state:-none})" ;; esac

# the run: tiny bundle, three concepts, short clips
run_config() {
  cat >"$work/$1.yaml" <<CONF
model: $root/tests/data/tiny
concepts: [jazz, rock, piano]
n_prompts_per_concept: 4
duration: 1.5
seed: 3
modes: [adjust, replace]
batch_size: 2
means_batch_size: 2
save_extremes: true
judge:
  plugin: onnx-judge
  settings:
    model: $root/tests/data/classifier/classifier.onnx
    labels: $root/tests/data/classifier/labels.csv
    sample_rate: 16000
output: $work/$1
CONF
}
for r in single sweep killed; do run_config $r; done
t0=$(date +%s)
"$bin" --device cpu --threads 1 intervene --config "$work/single.yaml" >"$work/single.log" 2>&1 || { cat "$work/single.log"; fail "single-host run"; }
say "single-host run: $(( $(date +%s) - t0 )) s"

# waits until none of the given jobs is queued or running
wait_jobs() {
  local deadline=$(( $(date +%s) + limit ))
  while [ -n "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { squeue; fail "jobs $1 still queued after $limit s"; }
    sleep 1
  done
}
same_as_single() {
  local dir=$1
  [ -f "$dir/summary.csv" ] || fail "$dir was not merged"
  cmp "$work/single/summary.csv" "$dir/summary.csv" || fail "$dir/summary.csv differs from the single-host run"
  diff -r "$work/single/results" "$dir/results" >/dev/null || fail "$dir/results differs from the single-host run"
  diff -r "$work/single/extremes" "$dir/extremes" >/dev/null || fail "$dir/extremes differs from the single-host run"
  say "$dir: results/, extremes/ and summary.csv byte-identical to the single-host run ($(ls "$dir/results" | wc -l) files)"
}
job_ids() { awk '/^means job/ {m=$3} /^intervention job/ {a=$3} END {print m, a}' "$1"; }

# 1. means phase + 3-task array
MUSICGEN_INTERP=$bin bash "$root/scripts/slurm/submit-sweep.sh" "$work/sweep.yaml" 3 | tee "$work/submit1.log"
read -r means array < <(job_ids "$work/submit1.log")
t0=$(date +%s)
wait_jobs "$means,$array"
say "sweep under SLURM: $(( $(date +%s) - t0 )) s"
"$bin" intervene --status "$work/sweep"
same_as_single "$work/sweep"

# 2. one array task killed mid-run (after its first part), then resubmitted alone
MUSICGEN_INTERP=$bin bash "$root/scripts/slurm/submit-sweep.sh" "$work/killed.yaml" 3 | tee "$work/submit2.log"
read -r means array < <(job_ids "$work/submit2.log")
wait_jobs "$means"
deadline=$(( $(date +%s) + limit ))
until grep -qs '"shard": "1/3"' "$work"/killed/parts/*/*.time.json; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "task 1 finished no part within $limit s"
  sleep 0.1
done
scancel "${array}_1"
say "cancelled task ${array}_1 after its first part"
wait_jobs "$array"
"$bin" intervene --status "$work/killed" | tee "$work/status-killed.log"
pending=$(awk '/parts done/ {for (i = 1; i <= NF; i++) if ($i == "pending") print $(i-1)}' "$work/status-killed.log")
[ "${pending:-0}" -gt 0 ] || fail "task 1 finished before it was cancelled: make the run longer"
[ ! -f "$work/killed/summary.csv" ] || fail "a run with pending parts was merged"
resub=$(MUSICGEN_INTERP=$bin sbatch --parsable --array=1 "$root/scripts/slurm/intervene.sbatch" "$work/killed.yaml" 3 cpu)
say "resubmitted task 1 as job ${resub%%;*}"
wait_jobs "${resub%%;*}"
"$bin" intervene --status "$work/killed"
same_as_single "$work/killed"

# 3. extract: a 3-task array and the merge after it (submit-extract.sh) against one host
"$root/.venv/bin/python" "$root/scripts/demo_dataset.py" "$work/audio" --tracks 2 --seconds 3 >/dev/null
ext=(--model "$root/tests/data/tiny" --data-dir "$work/audio" --segment-seconds 2 --steps 6 --seed 1)
"$bin" --device cpu --threads 1 extract "${ext[@]}" --output-dir "$work/extract-single" >"$work/extract-single.log" 2>&1 || { cat "$work/extract-single.log"; fail "single-host extract"; }
MUSICGEN_INTERP=$bin bash "$root/scripts/slurm/submit-extract.sh" 3 -- "${ext[@]}" --output-dir "$work/extract-sweep" | tee "$work/submit3.log"
read -r array merge < <(awk '/^extraction job/ {a=$3} /^merge job/ {m=$3} END {print a, m}' "$work/submit3.log")
t0=$(date +%s)
wait_jobs "$array,$merge"
say "extract under SLURM: $(( $(date +%s) - t0 )) s"
"$bin" extract --status --output-dir "$work/extract-sweep" | tee "$work/status-extract.log"
grep -q ", 0 pending (0 failed)" "$work/status-extract.log" && grep -q "^merged: residuals_cond.npy" "$work/status-extract.log" || fail "extract --status does not show a finished, merged run"
for f in residuals_cond.npy residuals_uncond.npy labels.npy segments.json; do
  [ -f "$work/extract-sweep/$f" ] || fail "extract-sweep was not merged ($f missing)"
  cmp "$work/extract-single/$f" "$work/extract-sweep/$f" || fail "extract-sweep/$f differs from the single-host extract"
done
say "extract-sweep: residuals_cond.npy, residuals_uncond.npy, labels.npy and segments.json byte-identical to the single-host extract"
say "passed in $(( $(date +%s) - start )) s"
