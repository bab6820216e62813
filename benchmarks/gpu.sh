#!/usr/bin/env bash
# The performance benchmarks on a GPU, one command: attention (blocksparse vs the dense
# reference vs jax.nn.dot_product_attention on the same dense mask), the train step of the
# `small` config (PHD vs vanilla against their FLOPs) and long-context attention, bf16.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # default benchmarks/results/gpu
#
# Needs a CUDA build of JAX (pip install -e ".[cuda]"); nothing else in the project does.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
$py -c "
import sys, jax
print('jax', jax.__version__, jax.devices())
if jax.default_backend() != 'gpu':
    sys.exit('benchmarks/gpu.sh needs a GPU build of JAX (pip install -e \".[cuda]\"); JAX sees '
             + jax.default_backend() + ': run the benchmarks/*.py scripts directly instead')"
$py benchmarks/attention.py --dpa --dtype bfloat16 --seq 1024 4096 --repeat 1 2 4 --reps 10 \
    --out "$out/attention.md"
$py benchmarks/train_throughput.py --seq 512 1024 --batch 8 --reps 10 --set dtype=bfloat16 \
    --out "$out/train_throughput.md"
$py benchmarks/long_context.py --out "$out/long_context.md"
