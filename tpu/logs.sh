#!/usr/bin/env bash
# Follow ~/train.log (written by tpu/launch.sh) on one worker of a TPU.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/logs.sh --name NAME --zone ZONE [--worker N] [options]

Runs `tail -f ~/train.log` on worker N (Ctrl-C to stop following; training goes on).
Worker 0 writes the metrics and prints the progress bar and evaluations.

  --name NAME        TPU name                                                     required
  --zone ZONE        e.g. us-central2-b                                           required
  --worker N         which worker (default 0)
  --project PROJECT  Google Cloud project (default: gcloud's configured one)
  --dry-run          print the gcloud command, run nothing
  -h, --help         this help
USAGE
}

NAME='' ZONE='' WORKER=0
declare -A VALUE_FLAGS=([--worker]=WORKER)
parse_flags "$@"
require --name "$NAME"
require --zone "$ZONE"
[[ $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a worker number (0, 1, ...), got $WORKER"

tpu tpu-vm ssh "$NAME" --zone "$ZONE" --worker="$WORKER" --command 'tail -f ~/train.log'
