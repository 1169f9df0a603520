#!/usr/bin/env bash
# One device call that gathers every GPU figure the issues ask for, with the PyTorch baseline in the same call so
# the figures are ratios from one run. The GPU image has jax, flax, optax, orbax, transformers and torch; these
# benchmarks need nothing else (no grain).
#
# Here, before the call:   mkdir -p .shared_copy && cp -r ../shared/perf .shared_copy/
# Device call:             command "bash bench/gpu_session.sh", carry [".shared_copy"], timeout ~540 s
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-/tmp/diabetica-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$out/device.txt"
timeout 120 python3 bench/attention_backends.py 2>&1 | tee "$out/attention.txt"
timeout 200 python3 bench/train_throughput.py --presets qwen2-0.5b qwen2-1.5b --batch 8 --seq 2048 \
  --json "$out/train.jsonl" 2>&1 | tee "$out/train.txt"
timeout 120 python3 bench/generate_throughput.py --preset qwen2-1.5b --batches 1 32 2>&1 | tee "$out/generate.txt"
OUT="$out" timeout 150 python3 .shared_copy/perf/hf_torch_baseline.py 2>&1 | tee "$out/baseline.txt"
