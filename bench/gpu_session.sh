#!/usr/bin/env bash
# One device call that gathers the GPU figures, with the PyTorch baseline in the same call so the figures are ratios
# from one run. The GPU image has jax, flax, optax, orbax, transformers and torch; these benchmarks need nothing
# else (no grain, no tensorboardX).
#
# Here, before the call:   mkdir -p .shared_copy && cp -r ../shared/perf .shared_copy/
# Device call:             command "bash bench/gpu_session.sh", carry [".shared_copy"], timeout ~560 s
# Afterwards:              copy $OUT's *.jsonl / *.json / *.txt into bench/results/ (bench/results/README.md)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-/tmp/diabetica-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$out/device.txt"
timeout 80 python3 bench/attention_backends.py 2>&1 | tee "$out/attention.txt"
train="python3 bench/train_throughput.py --batch 8 --seq 2048 --steps 8 --json $out/train.jsonl"
{
  timeout 100 $train --presets qwen2-1.5b --rows packed
  timeout 90 $train --presets qwen2-1.5b --rows plain
  timeout 90 $train --presets qwen2-1.5b --rows packed --lora-rank 8
  timeout 80 $train --presets qwen2-0.5b --rows packed
} 2>&1 | tee "$out/train.txt"
timeout 110 python3 bench/generate_throughput.py --preset qwen2-1.5b --batches 1 32 --repeats 2 --paths batcher \
  --json "$out/generate.jsonl" 2>&1 | tee "$out/generate.txt"
OUT="$out" timeout 150 python3 .shared_copy/perf/hf_torch_baseline.py 2>&1 | tee "$out/baseline.txt"
