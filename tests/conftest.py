import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_cli(*args, check=True, timeout=300, env=None):
  """`python -m mnist_jax.main ARGS` in the repo, as a user runs it."""
  result = subprocess.run([sys.executable, "-m", "mnist_jax.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return result


@pytest.fixture
def tiny_config():
  """adam_mlp on 512 training examples, idx source: a run takes a second."""
  from mnist_jax import config as config_lib
  config = config_lib.load("adam_mlp")
  config.data.source = "idx"
  config.data.train_subset = 512
  config.train.epochs = 2
  config.train.batch_size = 64
  return config


# Flags that shrink any experiment to a seconds-long CLI run.
TINY_FLAGS = ("--config.data.source=idx", "--config.data.train_subset=600",
              "--config.train.epochs=2", "--config.train.batch_size=128")
