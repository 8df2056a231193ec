#!/usr/bin/env bash
# Create a Cloud TPU VM, or with --queued a queued resource (waits for capacity) whose node has the same name.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/create.sh --name NAME --zone ZONE --type TYPE [options]

Creates a TPU VM (gcloud compute tpus tpu-vm create) or, with --queued, a queued resource
(gcloud compute tpus queued-resources create) whose node is also called NAME.

  --name NAME        TPU name (the node and the queued resource)                  required
  --zone ZONE        e.g. us-central2-b                                           required
  --type TYPE        accelerator type: v4-8, v4-32, v5litepod-16, ...             required
  --runtime VERSION  TPU software version (default tpu-ubuntu2204-base)
  --project PROJECT  Google Cloud project (default: gcloud's configured one)
  --queued           create a queued resource instead of the VM directly
  --spot             spot capacity: cheaper, can be preempted
  --dry-run          print the gcloud command, run nothing
  -h, --help         this help
USAGE
}

NAME='' ZONE='' TYPE='' RUNTIME=tpu-ubuntu2204-base QUEUED=0 SPOT=0
declare -A VALUE_FLAGS=([--type]=TYPE [--runtime]=RUNTIME) SWITCH_FLAGS=([--queued]=QUEUED [--spot]=SPOT)
parse_flags "$@"
require --name "$NAME"
require --zone "$ZONE"
require --type "$TYPE"

if ((QUEUED)); then
  args=(queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" --accelerator-type "$TYPE"
    --runtime-version "$RUNTIME")
else
  args=(tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$RUNTIME")
fi
if ((SPOT)); then args+=(--spot); fi
tpu "${args[@]}"
