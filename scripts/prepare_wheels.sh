#!/usr/bin/env bash
# Wheels of fedmas's pure-Python dependencies (torch aside) for a machine without network, downloaded here
# from the package index for that machine's Python version and platform:
#   scripts/prepare_wheels.sh 3.12 [wheels] [manylinux2014_x86_64]
# Then copy the folder beside the repo on the target (or set FEDMAS_WHEELS) and run benchmarks/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ver=${1:?"the target's Python version, e.g. 3.12"}
dir=${2:-wheels}
platform=${3:-manylinux2014_x86_64}
python3 -m pip download -q --only-binary=:all: --implementation cp --python-version "$ver" \
  --platform "$platform" --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  -d "$dir" "numpy>=1.24" "pillow>=10" "safetensors>=0.4" "pyyaml>=6" "pydantic>=2.5" "matplotlib>=3.7"
echo "wheels for Python $ver ($platform) in $dir: $(ls "$dir" | wc -l) files"
