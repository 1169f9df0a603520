#!/usr/bin/env bash
# Run one diabetica-jax command as N local processes of D emulated CPU devices each, connected
# through jax.distributed (gloo collectives): a multi-host run on one machine, for testing.
#
#   launch/local_cpu.sh 2 4 train configs/train/tiny.yaml --run-dir runs/two-hosts
#
# PORT (default 12355) is the coordinator's port on 127.0.0.1; PYTHON picks the interpreter.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND [ARGS...]" >&2
  exit 2
fi
num_processes=$1
devices=$2
shift 2
port=${PORT:-12355}
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    "${PYTHON:-python3}" -m diabetica_jax.cli "$@" \
    --coordinator "127.0.0.1:${port}" --num-processes "$num_processes" --process-id "$i" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
