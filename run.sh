#!/usr/bin/env bash
# Set up .venv (once) and run the main job, or the tests.
#   ./run.sh                  train adam_mlp (tutorial T0)
#   ./run.sh test [ARGS]      run the test suite (ARGS go to pytest)
#   ./run.sh ARGS             python -m mnist_jax.main ARGS, e.g. ./run.sh --config=rmsprop_mlp
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/requirements.installed; then
  echo "Setting up .venv (first run, or requirements.txt changed) ..."
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  cp requirements.txt .venv/requirements.installed
fi
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "test" ]; then
  shift
  exec .venv/bin/python -m pytest tests "$@"
elif [ $# -eq 0 ]; then
  exec .venv/bin/python -m mnist_jax.main --config=adam_mlp
else
  exec .venv/bin/python -m mnist_jax.main "$@"
fi
