#!/usr/bin/env bash
# Stop training on every worker, then delete the TPU VM (or with --queued its queued resource and node).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/delete.sh --name NAME --zone ZONE [options]

Sends SIGTERM to experiments/train.py on every worker (it saves a checkpoint and exits; waits for
that up to 5 minutes), then deletes the TPU VM, or with --queued the queued resource and its node.
If the workers cannot be reached (not provisioned yet, preempted), it warns and deletes anyway.

  --name NAME        TPU name                                                     required
  --zone ZONE        e.g. us-central2-b                                           required
  --queued           the TPU was created with tpu/create.sh --queued
  --quiet            pass --quiet to gcloud: delete without asking for confirmation
  --project PROJECT  Google Cloud project (default: gcloud's configured one)
  --dry-run          print the gcloud commands, run nothing
  -h, --help         this help
USAGE
}

NAME='' ZONE='' QUEUED=0 QUIET=0
declare -A SWITCH_FLAGS=([--queued]=QUEUED [--quiet]=QUIET)
parse_flags "$@"
require --name "$NAME"
require --zone "$ZONE"

# The [e] keeps the pattern from matching the command line of the remote shell that runs it.
pattern='[e]xperiments/train.py'
stop="pkill -f '$pattern'; for _ in {1..300}; do pgrep -f '$pattern' > /dev/null || break; sleep 1; done; true"
tpu tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$stop" ||
  echo "warning: could not stop training on $NAME (not reachable?); deleting it anyway" >&2

if ((QUEUED)); then
  args=(queued-resources delete "$NAME" --zone "$ZONE" --force)
else
  args=(tpu-vm delete "$NAME" --zone "$ZONE")
fi
if ((QUIET)); then args+=(--quiet); fi
tpu "${args[@]}"
