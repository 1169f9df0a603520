#!/usr/bin/env bash
# Run the same diabetica-jax command on every worker of a Cloud TPU VM slice (v4-8, v5p-8, pods).
# Each worker must have the repository checked out and installed at REPO_DIR (default
# ~/diabetica-jax); the run directory should be shared storage (a gs:// bucket or NFS).
#
#   launch/tpu_pod.sh my-tpu us-central2-b train configs/train/qwen2-7b-full.yaml --run-dir gs://bucket/runs/7b
#
# JAX finds the other workers through the TPU metadata (DIABETICA_DISTRIBUTED=auto).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE COMMAND [ARGS...]" >&2
  exit 2
fi
tpu=$1
zone=$2
shift 2
repo_dir=${REPO_DIR:-'~/diabetica-jax'}
command=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" ${PROJECT:+--project "$PROJECT"} --worker=all \
  --command "cd ${repo_dir} && DIABETICA_DISTRIBUTED=auto diabetica-jax ${command}"
