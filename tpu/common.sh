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

# parse_flags ARGS...: sets the variables of the flags every script takes (--name NAME, --zone ZONE,
# --project PROJECT, --dry-run, -h/--help) and of the script's own, declared before the call as
# `declare -A VALUE_FLAGS=([--flag]=VAR ...)` (the flag takes a value) and `SWITCH_FLAGS=(...)` (sets VAR=1).
# `--flag=value` works too. If AFTER_DASHES names an array, `--` ends the flags and the rest goes into it.
parse_flags() {
  local -A values=([--name]=NAME [--zone]=ZONE [--project]=PROJECT) switches=([--dry-run]=DRY_RUN)
  local flag given
  for flag in ${VALUE_FLAGS[@]+"${!VALUE_FLAGS[@]}"}; do values[$flag]=${VALUE_FLAGS[$flag]}; done
  for flag in ${SWITCH_FLAGS[@]+"${!SWITCH_FLAGS[@]}"}; do switches[$flag]=${SWITCH_FLAGS[$flag]}; done
  while (($#)); do
    if [[ $1 == -- && -n ${AFTER_DASHES:-} ]]; then
      local -n rest=$AFTER_DASHES
      rest=("${@:2}")
      return
    elif [[ $1 == --*=* ]]; then
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
    elif [[ $1 == -h || $1 == --help ]]; then
      usage
      exit 0
    elif [[ -v values[$1] ]]; then
      given=$(value "$@")
      printf -v "${values[$1]}" '%s' "$given"
      shift 2
    elif [[ -v switches[$1] ]]; then
      printf -v "${switches[$1]}" 1
      shift
    else
      die "unknown argument $1 (see --help${AFTER_DASHES:+; training arguments go after --})"
    fi
  done
}
