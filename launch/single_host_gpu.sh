#!/usr/bin/env bash
# Trains on the GPUs of this machine: one process drives all of them.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/single_host_gpu.sh --config CONFIG --workdir DIR [options] [-- EXTRA MAIN FLAGS]

Runs `python -m pixnerd_jax.main` once; JAX sees every visible GPU as a device and the
mesh (config.mesh) spreads over them. Starting it again with the same DIR resumes.

Required:
  --config PATH             config file in the repo, e.g. configs/imagenet256.py
  --workdir DIR             checkpoints and TensorBoard events (local path or gs://)

Options:
  --gpus LIST               GPUs to use, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES;
                            default: all)
  --venv DIR                virtualenv to use (default: REPO/.venv)
  --setup                   first create the venv: pip install -r requirements.txt
                            "jax[cuda13]==VERSION" (VERSION from requirements.txt)
  --dry-run                 print the commands instead of running them
  -h, --help                this text

Everything after `--` goes to pixnerd_jax.main, e.g. -- --config.batch_size=128
USAGE
}

SCRIPT=launch/single_host_gpu.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CONFIG="" WORKDIR="" GPUS="" VENV="" SETUP=0 DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --gpus) need_value "$@"; GPUS="$2"; shift 2 ;;
    --venv) need_value "$@"; VENV="$2"; shift 2 ;;
    --setup) SETUP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done

missing=()
[[ -n "$CONFIG" ]] || missing+=(--config)
[[ -n "$WORKDIR" ]] || missing+=(--workdir)
[[ ${#missing[@]} -eq 0 ]] || die "missing required ${missing[*]}"
[[ -f "$ROOT/$CONFIG" ]] || die "--config $CONFIG: no such file in $ROOT"
[[ -z "$GPUS" || "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || \
    die "--gpus must be a comma-separated list of GPU indices, got '$GPUS'"
VENV="${VENV:-$ROOT/.venv}"
[[ "$WORKDIR" == /* || "$WORKDIR" == gs://* ]] || WORKDIR="$PWD/$WORKDIR"
JAX_VERSION="$(jax_pin)" || exit 2
if [[ "$DRY_RUN" != 1 ]]; then
  [[ "$SETUP" == 1 || -x "$VENV/bin/python" ]] || \
      die "--venv $VENV has no bin/python; pass --setup to create it"
  command -v nvidia-smi >/dev/null || echo "warning: nvidia-smi not found; is this a GPU host?" >&2
fi

if [[ "$SETUP" == 1 ]]; then
  run python3 -m venv "$VENV"
  run "$VENV/bin/pip" install -r "$ROOT/requirements.txt" "jax[cuda13]==$JAX_VERSION"
fi

cmd=("$VENV/bin/python" -m pixnerd_jax.main --config="$CONFIG" --workdir="$WORKDIR"
     "${EXTRA[@]+"${EXTRA[@]}"}")
[[ -z "$GPUS" ]] || cmd=(env CUDA_VISIBLE_DEVICES="$GPUS" "${cmd[@]}")
cd "$ROOT"
run "${cmd[@]}"
