# shellcheck shell=bash
# Sourced by the tpu/*.sh scripts (bash >= 4.4). Every gcloud command goes through `run`, which prints it
# as `+ cmd` (each argument quoted with printf %q, so the line can be copied into a shell) and runs it
# unless DRY_RUN=1 (--dry-run). Usage errors exit with status 2.

DRY_RUN=${DRY_RUN:-0}
PROJECT=''  # set by each script's --project

# die MESSAGE: print `error: MESSAGE` and exit 2 (a usage error).
die() {
  echo "error: $*" >&2
  exit 2
}

# value FLAG [VALUE ...]: print VALUE, or die if it is missing. Use as X=$(value "$@"); shift 2.
value() {
  [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"
  printf '%s' "$2"
}

# require FLAG VALUE: die naming FLAG if VALUE is empty.
require() {
  [[ -n $2 ]] || die "missing required flag $1 (see --help)"
}

# quote ARGS...: the arguments quoted for bash with printf %q, separated by spaces.
quote() {
  local quoted
  printf -v quoted '%q ' "$@"
  printf '%s' "${quoted% }"
}

# run CMD ARGS...: print `+ CMD ARGS`, then run it unless DRY_RUN=1.
run() {
  echo "+ $(quote "$@")"
  if [[ $DRY_RUN != 1 ]]; then "$@"; fi
}

# tpu ARGS...: run `gcloud compute tpus ARGS`, with `--project PROJECT` appended when PROJECT is set.
tpu() {
  if [[ -n $PROJECT ]]; then set -- "$@" --project "$PROJECT"; fi
  run gcloud compute tpus "$@"
}
