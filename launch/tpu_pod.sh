#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (single host or pod): optionally creates it, installs the
# code on every host, then starts the same command on every host with one shared workdir.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/RUN
                         [options] [-- EXTRA MAIN FLAGS]

Starts `python -m pixnerd_jax.main` on every host of a TPU VM slice. Every host runs the
same command; JAX finds the other hosts itself (jax.distributed on a TPU VM reads the
slice from the GCE metadata server), and all hosts must share the workdir, hence gs://.

Required:
  --name NAME               TPU VM (slice) name
  --zone ZONE               e.g. us-east5-a
  --config PATH             config file in the repo, e.g. configs/imagenet256.py
  --workdir gs://B/RUN      checkpoints and TensorBoard events, shared by all hosts

Options:
  --project ID              GCP project (default: gcloud's)
  --create                  create the slice first (needs --accelerator-type)
  --accelerator-type TYPE   e.g. v5p-128, v6e-64, v4-32 (with --create)
  --runtime-version V       TPU VM image (with --create; default by generation:
                            v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
                            v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --spot                    create a Spot slice (with --create)
  --repo URL                git URL to clone on the hosts (default: this checkout's origin)
  --ref REF                 commit or branch to check out (default: this checkout's HEAD)
  --remote-dir DIR          checkout on the hosts (default: pixnerd-jax, in the home dir)
  --skip-setup              reuse the hosts' checkout and venv as they are
  --allow-local-workdir     accept a non-gs:// workdir (only if it is a shared filesystem)
  --dry-run                 print the commands instead of running them
  -h, --help                this text

Everything after `--` goes to pixnerd_jax.main, e.g. -- --config.mesh.fsdp=-1
Training runs detached (nohup) on every host; its log is ~/pixnerd-NAME.log there.
Check the step shape fits first: python -m pixnerd_jax.aot --config=... --topology=v5p:4x4x4
EOF
}

SCRIPT=launch/tpu_pod.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="" ZONE="" CONFIG="" WORKDIR="" PROJECT="" CREATE=0 ACCEL="" RUNTIME="" SPOT=0
REPO="" REF="" REMOTE_DIR="pixnerd-jax" SKIP_SETUP=0 ALLOW_LOCAL=0 DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --create) CREATE=1; shift ;;
    --accelerator-type) need_value "$@"; ACCEL="$2"; shift 2 ;;
    --runtime-version) need_value "$@"; RUNTIME="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --repo) need_value "$@"; REPO="$2"; shift 2 ;;
    --ref) need_value "$@"; REF="$2"; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --skip-setup) SKIP_SETUP=1; shift ;;
    --allow-local-workdir) ALLOW_LOCAL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done

missing=()
[[ -n "$NAME" ]] || missing+=(--name)
[[ -n "$ZONE" ]] || missing+=(--zone)
[[ -n "$CONFIG" ]] || missing+=(--config)
[[ -n "$WORKDIR" ]] || missing+=(--workdir)
[[ ${#missing[@]} -eq 0 ]] || die "missing required ${missing[*]}"
[[ -f "$ROOT/$CONFIG" ]] || die "--config $CONFIG: no such file in $ROOT"
if [[ "$WORKDIR" != gs://* && "$ALLOW_LOCAL" != 1 ]]; then
  die "--workdir $WORKDIR: every host must write the same workdir; use gs://BUCKET/PATH" \
      "(or --allow-local-workdir for a filesystem all hosts share)"
fi
if [[ "$CREATE" == 1 ]]; then
  [[ -n "$ACCEL" ]] || die "--create needs --accelerator-type (e.g. v5p-128)"
  if [[ -z "$RUNTIME" ]]; then
    case "$ACCEL" in
      v4-*) RUNTIME="tpu-ubuntu2204-base" ;;
      v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
      v5litepod-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
      v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
      *) die "--accelerator-type $ACCEL: unknown generation; pass --runtime-version" ;;
    esac
  fi
elif [[ -n "$ACCEL$RUNTIME" || "$SPOT" == 1 ]]; then
  die "--accelerator-type, --runtime-version and --spot only apply with --create"
fi
if [[ "$SKIP_SETUP" != 1 ]]; then
  [[ -n "$REPO" ]] || REPO="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"
  [[ -n "$REPO" ]] || die "no git remote 'origin' here; pass --repo URL (the hosts clone it)"
  [[ -n "$REF" ]] || REF="$(git -C "$ROOT" rev-parse HEAD)"
fi
# One pin for the whole project: the jax line of requirements.txt.
JAX_VERSION="$(jax_pin)" || exit 2
if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud >/dev/null; then
  die "gcloud not found; install the Google Cloud CLI (or use --dry-run)"
fi

GCLOUD=(gcloud compute tpus tpu-vm)
SCOPE=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || SCOPE+=(--project="$PROJECT")

if [[ "$CREATE" == 1 ]]; then
  create=("${GCLOUD[@]}" create "$NAME" "${SCOPE[@]}" --accelerator-type="$ACCEL"
          --version="$RUNTIME")
  [[ "$SPOT" != 1 ]] || create+=(--spot)
  run "${create[@]}"
fi

q() { printf '%q' "$1"; }
DIR_Q="$(q "$REMOTE_DIR")"
if [[ "$SKIP_SETUP" != 1 ]]; then
  # Same commit on every host; a fresh venv so jax[tpu] matches requirements.txt.
  setup="set -e; if [ ! -d $DIR_Q/.git ]; then git clone $(q "$REPO") $DIR_Q; fi"
  setup+="; cd $DIR_Q && git fetch --quiet origin && git checkout --quiet $(q "$REF")"
  setup+="; python3 -m venv .venv && . .venv/bin/activate"
  setup+=" && pip install --quiet -r requirements.txt 'jax[tpu]==$JAX_VERSION'"
  run "${GCLOUD[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all --command="$setup"
fi

main_cmd="python -m pixnerd_jax.main --config=$(q "$CONFIG") --workdir=$(q "$WORKDIR")"
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do main_cmd+=" $(q "$arg")"; done
LOG="pixnerd-$NAME.log"
# Detached, so the run outlives this ssh session; every host logs to its own file.
start="cd $DIR_Q && . .venv/bin/activate && nohup $main_cmd > ~/$(q "$LOG") 2>&1 < /dev/null &"
run "${GCLOUD[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all --command="$start"

[[ "$DRY_RUN" == 1 ]] || echo "# Started on every host. Follow host 0 with:" >&2
[[ "$DRY_RUN" == 1 ]] || echo "#   $(show "${GCLOUD[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=0 --command="tail -f ~/$LOG")" >&2
