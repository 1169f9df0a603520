#!/usr/bin/env bash
# The GPU figures in one device call of under 9 minutes: attention kernels, decode and training, each "before"
# (an older checkout of the package) and after every change, with PyTorch/transformers measured in the same call
# so that the ratios come from one run; one table at the end (bench/session_table.py).
#
#   bash bench/gpu_session.sh --prepare   # here, before the call: the before tree and the shared baseline script
#   device call:  command "bash bench/gpu_session.sh", carry [".bench_before", ".shared_copy"], timeout 570
#   bash bench/gpu_session.sh --dry-run   # CPU: every step at tiny shapes (no baseline, no GPU flags), the table
#
# The GPU image has jax, flax, optax, orbax, transformers and torch, and no grain: these benchmarks need nothing
# else. Afterwards copy $OUT's files into bench/results/ (bench/results/README.md says what each one is).
set -u -o pipefail  # pipefail: the table's failure is the script's
BEFORE_REV=38c045a  # main before the decode and train-step changes (issue 25)
cd "$(dirname "$0")/.."
mode=${1:-run}

if [ "$mode" = "--prepare" ]; then
  rm -rf .bench_before && mkdir .bench_before
  git archive "$BEFORE_REV" diabetica_jax bench | tar -x -C .bench_before || exit 1
  mkdir -p .shared_copy && cp -r ../shared/perf .shared_copy/ || exit 1
  echo "prepared .bench_before (git $BEFORE_REV) and .shared_copy/perf; carry both"
  exit 0
fi

export PYTHONUNBUFFERED=1
here=$PWD
out=${OUT:-/tmp/diabetica-gpu}
mkdir -p "$out"
before=$here/.bench_before
if [ "$mode" = "--dry-run" ]; then
  export JAX_PLATFORMS=cpu
  if [ ! -d "$before" ]; then  # a dry run makes its own before tree, out of the way
    before=$out/before && rm -rf "$before" && mkdir -p "$before"
    git archive "$BEFORE_REV" diabetica_jax bench | tar -x -C "$before" || exit 1
  fi
  preset=tiny prompt=16 new=8 batches="1 2" train_shape="--batch 2 --seq 128 --steps 2 --warmup 1"
  attention_args="--dry-run" slack=4
else
  [ -d "$before" ] || { echo "no .bench_before: run 'bash bench/gpu_session.sh --prepare' here first"; exit 1; }
  preset=qwen2-1.5b prompt=128 new=128 batches="1 32" train_shape="--batch 8 --seq 2048 --steps 6 --warmup 2"
  attention_args="" slack=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
fi

# the whole call ends by DEADLINE seconds (the device call's limit is 600 s a command, and a fresh machine's start
# counts too); a step gets its own limit or what is left, whichever is less, and is skipped with under 15 s left
DEADLINE=${DEADLINE:-530}

# step LIMIT LABEL PACKAGE_TREE [ENV=VALUE...] -- COMMAND...: one benchmark process, its output kept, never fatal
step() {
  local limit=$(( $1 * slack )) label=$2 tree=$3; shift 3
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  echo "== $label"
  if [ "$slack" = 1 ]; then
    local left=$(( DEADLINE - SECONDS ))
    [ "$left" -lt 15 ] && { echo "   (skipped: the session's $DEADLINE s are spent)"; return; }
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  env PYTHONPATH="$tree" "${envs[@]}" timeout "$limit" "$@" 2>&1 | grep -v "^WARNING: All log messages"
  local code=${PIPESTATUS[0]}
  if [ "$code" = 124 ]; then echo "   ($label: stopped at its limit of $limit s)"
  elif [ "$code" != 0 ]; then echo "   ($label: failed, exit $code)"; fi
}

python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  | tee -a "$out/device.txt"

# attention: the private cuDNN API's packed layout is checked first, then causal, dense mask, packed M=2 / 16
step 45 "attention kernels" "$here" -- python3 bench/attention_backends.py $attention_args | tee "$out/attention.txt"

# decode, batch 1 and 32: before; before with its weights stored in bfloat16 (what casting once buys);
# this tree (cast once, cache carried in place); + unrolled layers; + command buffers around loops (GPU only)
gen="python3 bench/generate_throughput.py --paths batcher --preset $preset --prompt $prompt --new $new \
  --batches $batches --repeats 2 --json $out/generate.jsonl"
{
  step 40 "decode: before" "$before" -- $gen --label before
  step 40 "decode: before, bf16 weights" "$before" -- $gen --label "before, bf16 weights" --param-dtype bfloat16
  step 40 "decode: cast once + carried cache" "$here" -- $gen --label "cast once + carried cache"
  step 40 "decode: + unrolled layers" "$here" -- $gen --label "+ unrolled layers" --unroll
  if [ "$mode" != "--dry-run" ]; then
    step 40 "decode: + command buffers" "$here" XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL -- \
      $gen --label "+ command buffers" --unroll
  fi
} 2>&1 | tee "$out/generate.txt"

# training, packed rows (Qwen2-1.5B, 8 x 2048): before (dense segment mask, logits twice, accumulation scan);
# this tree with packed cuDNN attention (cap 32); + remat saving attention; + bfloat16 first moment
train="$train_shape --presets $preset --rows packed --json $out/train.jsonl"
{
  step 50 "train: before" "$before" -- python3 "$before/bench/train_throughput.py" $train
  step 50 "train: packed attention" "$here" -- python3 bench/train_throughput.py $train --label "packed attention" \
    --max-segments 32
  step 50 "train: + remat saves attention" "$here" -- python3 bench/train_throughput.py $train \
    --label "+ remat saves attention" --max-segments 32 --remat save_matmuls_attention
  step 50 "train: + bf16 first moment" "$here" -- python3 bench/train_throughput.py $train \
    --label "+ bf16 first moment" --max-segments 32 --remat save_matmuls_attention --mu-dtype bfloat16
} 2>&1 | tee "$out/train.txt"

if [ "$mode" = "--dry-run" ]; then
  echo "== transformers baseline: skipped in a dry run (it needs CUDA torch)"
else
  step 100 "transformers baseline" "$here" OUT="$out" -- python3 .shared_copy/perf/hf_torch_baseline.py \
    | tee "$out/baseline.txt"
fi

echo "== table"
python3 bench/session_table.py "$out" | tee "$out/table.md"
