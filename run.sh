#!/usr/bin/env bash
# Set up .venv (once) and run the main job, or the tests.
#   ./run.sh                  train adam_mlp (tutorial T0)
#   ./run.sh test [ARGS]      the fast test tier, a few minutes (ARGS go to pytest)
#   ./run.sh test --all       every test: the fast tier, then the slow one (what CI runs)
#   ./run.sh mutants [MODULE...]  mutation testing of the reliability core (docs/testing.md); not in CI
#   ./run.sh bench [ARGS]     install requirements-bench.txt (Keras, TensorFlow, PyTorch) into .venv
#                             and run python -m experiments.benchmarks.benchmark ARGS (docs/benchmark.md)
#   ./run.sh ARGS             python -m mnist_jax.main ARGS, e.g. ./run.sh --config=rmsprop_mlp
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

# A .venv that this script did not make (no requirements.installed in it: one made by hand for a
# GPU, or with requirements-jax011.txt, docs/accelerators.md) is used as it is, never reinstalled.
if [ ! -x .venv/bin/python ] || { [ -f .venv/requirements.installed ] \
    && ! cmp -s requirements.txt .venv/requirements.installed; }; then
  echo "Setting up .venv (first run, or requirements.txt changed) ..."
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .  # the package itself, editable
  cp requirements.txt .venv/requirements.installed
fi
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "test" ]; then
  shift
  if [ "${1:-}" = "--all" ]; then
    shift
    # The fast tier on the machine's cores, then the slow tests one at a time (their processes
    # and timings are the point): two runs, so that no one process loads every test's compiled
    # programs (docs/testing.md says why).
    status=0
    .venv/bin/python -m pytest tests --numprocesses=auto --maxprocesses=4 "$@" || status=$?
    .venv/bin/python -m pytest tests -m slow "$@" || status=$?
    exit $status
  else
    set -- --numprocesses=auto --maxprocesses=4 "$@"  # the fast tier on the machine's cores
  fi
  exec .venv/bin/python -m pytest tests "$@"
elif [ "${1:-}" = "mutants" ]; then
  shift
  exec .venv/bin/python tests/mutation.py "$@"
elif [ "${1:-}" = "bench" ]; then
  shift
  # requirements-bench.txt includes requirements-tf.txt and requirements.txt: reinstall when any changed.
  if ! cat requirements.txt requirements-tf.txt requirements-bench.txt | cmp -s - .venv/requirements-bench.installed; then
    echo "Installing the benchmark's peers (requirements-bench.txt) into .venv ..."
    .venv/bin/python -m pip install --quiet -r requirements-bench.txt
    cat requirements.txt requirements-tf.txt requirements-bench.txt > .venv/requirements-bench.installed
  fi
  exec .venv/bin/python -m experiments.benchmarks.benchmark "$@"
elif [ $# -eq 0 ]; then
  exec .venv/bin/python -m mnist_jax.main --config=adam_mlp
else
  exec .venv/bin/python -m mnist_jax.main "$@"
fi
