#!/usr/bin/env bash
# The GPU check (at most 8 minutes on one GPU): quick start on CUDA vs CPU, lookahead exactness on CUDA,
# overhead against a plain loop on the GPU, the paper-scale configuration's seconds per round and peak memory.
#   benchmarks/gpu_check.sh                       # on the first CUDA GPU
#   benchmarks/gpu_check.sh --device cpu --quick  # every step on the CPU paths, small sizes
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec timeout 480 .venv/bin/python benchmarks/gpu_check.py "$@"
