#!/usr/bin/env bash
# Start the same training command in the background on every worker of a TPU; each logs to ~/train.log.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu/launch.sh --name NAME --zone ZONE --workdir WORKDIR [options] [-- --config.x=y ...]

Runs, with nohup in the background on every worker (after tpu/setup.sh), in ~/research with ~/venv:
  python experiments/train.py --config=CONFIG --workdir=WORKDIR [the arguments after --]
appending its output to ~/train.log on each worker (tpu/logs.sh follows it).

  --name NAME            TPU name                                                 required
  --zone ZONE            e.g. us-central2-b                                       required
  --workdir WORKDIR      gs://BUCKET/PATH: every worker must see the same workdir required
  --config CONFIG        config file, relative to the repository (default configs/quickstart.py)
  --type TYPE            the accelerator type (v4-8, v4-32, ...); a type of more than 8 (v4-16,
                         v5litepod-16, ...) has several workers, and then WORKDIR must be gs://
  --allow-local-workdir  accept a WORKDIR that is not gs:// whatever the type (each worker then
                         writes its own); without it and without --type, gs:// is required
  --project PROJECT      Google Cloud project (default: gcloud's configured one)
  --dry-run              print the gcloud command, run nothing
  -h, --help             this help
USAGE
}

NAME='' ZONE='' WORKDIR='' CONFIG=configs/quickstart.py TYPE='' ALLOW_LOCAL=0 EXTRA=()
declare -A VALUE_FLAGS=([--workdir]=WORKDIR [--config]=CONFIG [--type]=TYPE)
declare -A SWITCH_FLAGS=([--allow-local-workdir]=ALLOW_LOCAL)
AFTER_DASHES=EXTRA
parse_flags "$@"
require --name "$NAME"
require --zone "$ZONE"
require --workdir "$WORKDIR"

if [[ $WORKDIR != gs://* ]] && ((!ALLOW_LOCAL)); then
  [[ -n $TYPE ]] || die "--workdir $WORKDIR is not gs://: pass --type (a single-worker type may use a local" \
    "workdir) or --allow-local-workdir"
  size=${TYPE##*-}
  [[ $size =~ ^[0-9]+$ ]] || die "--type $TYPE does not end with a size (v4-32, v5litepod-16, ...)"
  ((10#$size <= 8)) || die "--workdir $WORKDIR is not gs:// but $TYPE has several workers, each of which would" \
    "write its own copy: use gs://BUCKET/PATH (or --allow-local-workdir)"
fi

train=$(quote python experiments/train.py "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")
tpu tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all \
  --command "cd ~/research && . ~/venv/bin/activate && nohup $train >> ~/train.log 2>&1 < /dev/null &"
