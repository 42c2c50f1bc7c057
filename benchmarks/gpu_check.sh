#!/usr/bin/env bash
# The GPU check, setup included, in one call on a bare GPU machine that may have no network (at most 8 minutes
# on one GPU): quick start on CUDA vs CPU, lookahead exactness on CUDA, overhead against a plain loop on the
# GPU, the paper-scale configuration's seconds per round and peak memory.
#   benchmarks/gpu_check.sh [--out-dir DIR]          # on the first CUDA GPU
#   benchmarks/gpu_check.sh --device cpu --quick      # every step on the CPU paths, small sizes
# The Python: $FEDMAS_PYTHON, else python3. When it imports torch (a GPU machine's own CUDA build), the check
# runs in a venv that sees its packages ($FEDMAS_CHECK_VENV, default .venv-check) with fedmas from src/ (torch
# is never touched); a missing pure-Python dependency is installed from the wheel folder $FEDMAS_WHEELS
# (default wheels/, kept out of git), prepared beforehand on a machine with the package index by
#   scripts/prepare_wheels.sh <python version of the target, e.g. 3.12> [folder]
# and from the package index only where no wheel folder is given and the index answers. When it has no
# torch, scripts/setup.sh installs everything into .venv (needs the package index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${FEDMAS_PYTHON:-python3}
WHEELS=${FEDMAS_WHEELS:-wheels}
VENV=${FEDMAS_CHECK_VENV:-.venv-check}
start=$(date +%s)
if "$PY" -c "import torch" 2>/dev/null; then
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    # the interpreter's own packages (its torch above all) seen from the venv, after the venv's own: a .pth
    # file rather than --system-site-packages, which would skip them when $PY is itself a venv's
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PY" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()]))' \
      > "$site/fedmas-check-system.pth"
  fi
  missing=$("$VENV/bin/python" scripts/missing_deps.py)
  if [ -n "$missing" ]; then
    if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
      # shellcheck disable=SC2086
      "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" $missing
    # shellcheck disable=SC2086
    elif ! "$VENV/bin/python" -m pip install -q --retries 0 --timeout 10 $missing >/dev/null 2>&1; then
      ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      echo "gpu_check: missing $missing, with no wheel folder ($WHEELS) and no package index; on a machine with" \
           "the index run: scripts/prepare_wheels.sh $ver $WHEELS — then bring $WHEELS here (or set FEDMAS_WHEELS)" >&2
      exit 2
    fi
  fi
  still=$("$VENV/bin/python" scripts/missing_deps.py)
  if [ -n "$still" ]; then
    echo "gpu_check: still missing after the install: $still" >&2
    exit 2
  fi
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  run_py="$VENV/bin/python"
else
  bash scripts/setup.sh
  run_py=.venv/bin/python
fi
FEDMAS_SETUP_S=$(( $(date +%s) - start ))
export FEDMAS_SETUP_S
exec timeout $(( 480 - FEDMAS_SETUP_S )) "$run_py" benchmarks/gpu_check.py "$@"
