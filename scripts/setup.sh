#!/usr/bin/env bash
# Create .venv and install fedmas (idempotent; quiet when already done).
#   scripts/setup.sh          what `fedmas run` needs (the quick start)
#   scripts/setup.sh test     plus the test tools and Flower's simulation extra (what ./test needs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
profile=${1:-run}
case "$profile" in
  run) extras="" ;;
  test) extras="[test,flower-sim]" ;;
  *) echo "scripts/setup.sh: unknown profile '$profile' (accepted: run, test)" >&2; exit 2 ;;
esac
stamp=.venv/.fedmas-installed-$profile
if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PY" --version 2>&1)" >&2
  "$PY" -m venv .venv
fi
echo "[setup] installing torch 2.13.0 (CPU) and fedmas${extras} into .venv; a minute or two the first time" >&2
.venv/bin/python -m pip install -q --upgrade pip
# The CPU wheel of torch first, so the package's torch requirement is already met.
.venv/bin/python -m pip install -q "torch==2.13.0"
echo "[setup] torch installed; now fedmas and its dependencies" >&2
.venv/bin/python -m pip install -q -e ".${extras}"
touch "$stamp"
echo "[setup] done" >&2
