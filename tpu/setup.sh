#!/usr/bin/env bash
# Put the code on every worker of a TPU (git clone, or a copy of a local directory) and install it in ~/venv.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

JAX_VERSION=0.10.2  # the jax pin of requirements.txt (a test checks they agree)

usage() {
  cat <<'USAGE'
Usage: tpu/setup.sh --name NAME --zone ZONE (--repo-url URL | --source DIR) [options]

On every worker: gets the code into ~/research, creates ~/venv with Python 3.11 (installed with apt;
the TPU images ship 3.10) and installs requirements-gcs.txt (requirements.txt + gs:// support), jax[tpu] and the package (editable).
Safe to rerun after a code change.

  --name NAME        TPU name                                                     required
  --zone ZONE        e.g. us-central2-b                                           required
  --repo-url URL     git clone URL into ~/research (git pull --ff-only if it is there already)
  --source DIR       replace ~/research with a copy of the local directory DIR (copied as is:
                     a fresh clone is quicker to copy than a checkout holding .venv/ or workdirs/)
  --project PROJECT  Google Cloud project (default: gcloud's configured one)
  --dry-run          print the gcloud commands, run nothing
  -h, --help         this help
USAGE
}

NAME='' ZONE='' REPO_URL='' SOURCE=''
declare -A VALUE_FLAGS=([--repo-url]=REPO_URL [--source]=SOURCE)
parse_flags "$@"
require --name "$NAME"
require --zone "$ZONE"
require '--repo-url or --source' "$REPO_URL$SOURCE"
[[ -z $REPO_URL || -z $SOURCE ]] || die "give --repo-url or --source, not both"
[[ -z $SOURCE || -f $SOURCE/requirements.txt ]] || die "--source $SOURCE has no requirements.txt"

ssh_all() { tpu tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

if [[ -n $SOURCE ]]; then
  ssh_all 'rm -rf ~/research'
  tpu tpu-vm scp --recurse "$SOURCE" "$NAME:~/research" --zone "$ZONE" --worker=all
fi
apt='sudo apt-get -q -o DPkg::Lock::Timeout=600'
steps=("$apt update" "$apt install -y python3.11 python3.11-venv")
if [[ -n $REPO_URL ]]; then
  steps+=("if [ -d ~/research/.git ]; then git -C ~/research pull --ff-only; else git clone $(quote "$REPO_URL") ~/research; fi")
fi
steps+=("python3.11 -m venv ~/venv" ". ~/venv/bin/activate" "cd ~/research" "pip install -q --upgrade pip"
  "pip install -q -r requirements-gcs.txt 'jax[tpu]==$JAX_VERSION'" "pip install -q --no-deps -e .")
printf -v remote '%s && ' "${steps[@]}"
ssh_all "${remote% && }"
