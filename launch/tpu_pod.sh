#!/usr/bin/env bash
# One run on a Cloud TPU VM pod slice: set up every host, then start launch/run.py on all of them at once.
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --bucket=gs://BUCKET/PREFIX [--project=P] \
#       [--tracking_uri=http://HOST:5000] [--run=RUN_NAME] [--print_only] -- --config=experiments/base.py:ankh3@ankh3_xl ...
#
# Per host (gcloud ... ssh --worker=all): check out this repository at the local commit into ~/ankh3, make a
# virtualenv with requirements.txt and jax[tpu] of the pinned version, and mount the bucket with gcsfuse at
# /gcs/BUCKET, so that every host reads the same ArrayRecord shards (PREFIX/data/train, PREFIX/data/valid,
# written by `python -m ankh3.data.convert`) and writes the same checkpoints (PREFIX/runs/RUN_NAME).
# JAX finds the pod's hosts by itself (no --coordinator flags); process 0 alone sends metrics to the
# tracking URI (default: an sqlite file on worker 0's disk; give a server reachable from the pod instead).
# --print_only prints the gcloud commands instead of running them.
set -euo pipefail

name="" zone="" bucket="" project="" tracking_uri="" run="" print_only=0
die() { echo "error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --bucket=*) bucket="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --tracking_uri=*) tracking_uri="${1#*=}" ;;
    --run=*) run="${1#*=}" ;;
    --print_only) print_only=1 ;;
    --) shift; break ;;
    *) die "unknown argument $1; usage: launch/tpu_pod.sh --name=TPU --zone=ZONE --bucket=gs://BUCKET/PREFIX [--print_only] -- RUN.PY FLAGS" ;;
  esac
  shift
done
[ -n "$name" ] && [ -n "$zone" ] && [ -n "$bucket" ] ||
  die "--name, --zone and --bucket are required, e.g. --name=ankh3-v4-64 --zone=us-central2-b --bucket=gs://my-bucket/ankh3"
case "$bucket" in gs://*) ;; *) die "--bucket=$bucket must be a gs:// path, e.g. gs://my-bucket/ankh3" ;; esac
[ $# -gt 0 ] || die "no run.py flags after --; pass at least --config=experiments/FAMILY.py:VARIANT@SHAPE"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo_url="$(git -C "$root" remote get-url origin 2>/dev/null || echo "$root")"
commit="$(git -C "$root" rev-parse HEAD)"
jax_version="$(sed -n 's/^jax==//p' "$root/requirements.txt")"
bucket_name="${bucket#gs://}"; bucket_name="${bucket_name%%/*}"
mounted="/gcs/${bucket#gs://}"   # the bucket path as every host sees it
run="${run:-$(date -u +%Y%m%d-%H%M%S)}"
tracking_uri="${tracking_uri:-sqlite:///mlflow.db}"  # relative: ~/ankh3/mlflow.db on worker 0

gcloud_ssh="gcloud compute tpus tpu-vm ssh $name --zone=$zone --worker=all${project:+ --project=$project}"
setup="set -e; if [ -d ~/ankh3/.git ]; then git -C ~/ankh3 fetch -q; else git clone -q $repo_url ~/ankh3; fi;\
 git -C ~/ankh3 checkout -q $commit; python3 -m venv ~/ankh3-venv;\
 ~/ankh3-venv/bin/pip install -q -r ~/ankh3/requirements.txt 'jax[tpu]==$jax_version';\
 sudo mkdir -p /gcs/$bucket_name; mountpoint -q /gcs/$bucket_name || sudo gcsfuse --implicit-dirs -o allow_other $bucket_name /gcs/$bucket_name"
quoted=$(printf ' %q' "$@")
start="cd ~/ankh3 && MLFLOW_TRACKING_URI=$tracking_uri ~/ankh3-venv/bin/python launch/run.py$quoted\
 --config.data.train=$mounted/data/train --config.data.valid=$mounted/data/valid --workdir=$mounted/runs/$run"

commands=("$gcloud_ssh --command=\"$setup\"" "$gcloud_ssh --command=\"$start\"")
for command in "${commands[@]}"; do
  if [ "$print_only" = 1 ]; then
    echo "$command"
  else
    eval "$command"
  fi
done
