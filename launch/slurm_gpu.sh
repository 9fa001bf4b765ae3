#!/usr/bin/env bash
# Submits a multi-node GPU training job to SLURM: one process per GPU, started by srun.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm_gpu.sh --nodes N --gpus-per-node G --config CONFIG --workdir DIR
                           [options] [-- EXTRA MAIN FLAGS]

Submits (sbatch) a job that runs `srun python -m pixnerd_jax.main` with one task per GPU.
Each task calls jax.distributed.initialize(), which reads SLURM's variables
(SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID): process
0's node is the coordinator and task i of a node drives GPU SLURM_LOCALID. So every task
must see all of its node's GPUs: the job asks for --gpus-per-node, never --gpus-per-task
(which would leave each task one GPU, numbered 0).

Run it from a checkout on a filesystem the nodes share; DIR must be shared too.

Required:
  --nodes N                 nodes
  --gpus-per-node G         GPUs per node (= tasks per node)
  --config PATH             config file in the repo, e.g. configs/imagenet256.py
  --workdir DIR             checkpoints and TensorBoard events (shared filesystem or gs://)

Options:
  --partition P             SLURM partition
  --account A               SLURM account
  --time T                  time limit, e.g. 2-00:00:00
  --cpus-per-task C         CPUs per task, for the input pipeline (default 8)
  --job-name NAME           default pixnerd
  --venv DIR                virtualenv to activate on the nodes (default: REPO/.venv)
  --setup                   first create the venv here: pip install -r requirements.txt
                            "jax[cuda13]==VERSION" (VERSION from requirements.txt)
  --dry-run                 print the commands and the batch script instead of running
  -h, --help                this text

Everything after `--` goes to pixnerd_jax.main, e.g. -- --config.mesh.fsdp=8
The job's output goes to DIR/slurm-JOBID.out.
EOF
}

SCRIPT=launch/slurm_gpu.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
positive_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

NODES="" GPUS="" CONFIG="" WORKDIR="" PARTITION="" ACCOUNT="" TIME="" CPUS=8
JOB_NAME="pixnerd" VENV="" SETUP=0 DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nodes) need_value "$@"; NODES="$2"; shift 2 ;;
    --gpus-per-node) need_value "$@"; GPUS="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --partition) need_value "$@"; PARTITION="$2"; shift 2 ;;
    --account) need_value "$@"; ACCOUNT="$2"; shift 2 ;;
    --time) need_value "$@"; TIME="$2"; shift 2 ;;
    --cpus-per-task) need_value "$@"; CPUS="$2"; shift 2 ;;
    --job-name) need_value "$@"; JOB_NAME="$2"; shift 2 ;;
    --venv) need_value "$@"; VENV="$2"; shift 2 ;;
    --setup) SETUP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done

missing=()
[[ -n "$NODES" ]] || missing+=(--nodes)
[[ -n "$GPUS" ]] || missing+=(--gpus-per-node)
[[ -n "$CONFIG" ]] || missing+=(--config)
[[ -n "$WORKDIR" ]] || missing+=(--workdir)
[[ ${#missing[@]} -eq 0 ]] || die "missing required ${missing[*]}"
positive_int --nodes "$NODES"
positive_int --gpus-per-node "$GPUS"
positive_int --cpus-per-task "$CPUS"
[[ -f "$ROOT/$CONFIG" ]] || die "--config $CONFIG: no such file in $ROOT"
VENV="${VENV:-$ROOT/.venv}"
# The job runs from ROOT, so a relative workdir is made absolute here.
[[ "$WORKDIR" == /* || "$WORKDIR" == gs://* ]] || WORKDIR="$PWD/$WORKDIR"
JAX_VERSION="$(jax_pin)" || exit 2
if [[ "$DRY_RUN" != 1 ]]; then
  command -v sbatch >/dev/null || die "sbatch not found; run this on a SLURM login node"
  [[ "$SETUP" == 1 || -f "$VENV/bin/activate" ]] || \
      die "--venv $VENV has no bin/activate; pass --setup to create it"
fi

if [[ "$SETUP" == 1 ]]; then
  run python3 -m venv "$VENV"
  run "$VENV/bin/pip" install -r "$ROOT/requirements.txt" "jax[cuda13]==$JAX_VERSION"
fi

q() { printf '%q' "$1"; }
main_args=(--config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]+"${EXTRA[@]}"}")
main_q=""
for arg in "${main_args[@]}"; do main_q+=" $(q "$arg")"; done
script="#!/bin/bash
set -euo pipefail
cd $(q "$ROOT")
. $(q "$VENV/bin/activate")
# One task per GPU; each task sees its node's GPUs and JAX takes GPU \$SLURM_LOCALID.
srun --kill-on-bad-exit=1 --cpu-bind=none python -m pixnerd_jax.main$main_q"

if [[ "$DRY_RUN" != 1 && "$WORKDIR" != gs://* ]]; then mkdir -p "$WORKDIR"; fi
sbatch_cmd=(sbatch --job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node="$GPUS"
            --gpus-per-node="$GPUS" --cpus-per-task="$CPUS" --output="$WORKDIR/slurm-%j.out")
[[ -z "$PARTITION" ]] || sbatch_cmd+=(--partition="$PARTITION")
[[ -z "$ACCOUNT" ]] || sbatch_cmd+=(--account="$ACCOUNT")
[[ -z "$TIME" ]] || sbatch_cmd+=(--time="$TIME")
if [[ "$WORKDIR" == gs://* ]]; then  # SLURM cannot write its log to GCS
  sbatch_cmd=("${sbatch_cmd[@]/--output=*/--output=slurm-%j.out}")
fi

if [[ "$DRY_RUN" == 1 ]]; then
  echo "$(show "${sbatch_cmd[@]}") <<'EOF'"
  echo "$script"
  echo "EOF"
else
  "${sbatch_cmd[@]}" <<<"$script"
fi
