# Helpers shared by the launch scripts; sourced, not run. The sourcing script sets
# SCRIPT (its path, for error messages) and DRY_RUN (1 = print commands only).

die() { echo "error: $*" >&2; echo "Run $SCRIPT --help for usage." >&2; exit 2; }

# Prints a command with each argument single-quoted where needed (copy-pastable).
show() {
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$arg")
    else out+=("'${arg//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

run() {
  if [[ "$DRY_RUN" == 1 ]]; then show "$@"; else "$@"; fi
}

need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"; }

# The repository root (launch/..), whichever directory the script was started from.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The jax version pinned in requirements.txt, for the jax[tpu] / jax[cuda13] install.
jax_pin() {
  local version
  version="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$ROOT/requirements.txt")"
  [[ -n "$version" ]] || die "no 'jax==VERSION' line in requirements.txt"
  echo "$version"
}
