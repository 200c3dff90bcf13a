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


def run_module(module, *args):
  """`python -m mnist_jax.MODULE ARGS`, as a user runs it."""
  return subprocess.run([sys.executable, "-m", f"mnist_jax.{module}", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """The workdir of one tiny CLI run of T1's model A (l2_rows preprocessing, a validation split),
  report included: what the report and predict tests study."""
  workdir = tmp_path_factory.mktemp("run")
  run_cli("--config=adam_mlp_784", f"--workdir={workdir}", *TINY_FLAGS)
  return workdir


@pytest.fixture(scope="session")
def predictions(trained_run):
  """(run, test-set probabilities) of `trained_run`, restored in this process."""
  from mnist_jax import report, workdir  # pylint: disable=import-outside-toplevel
  run = workdir.load_run(trained_run)
  return run, report.probabilities(run, run.splits.test.images)


# ---------------------------------------------------------------------------------------------
# Helpers


def device_data(config):
  """The config's training split on the device, preprocessed."""
  from mnist_jax import data, parallel  # pylint: disable=import-outside-toplevel
  return parallel.DeviceData.put(data.load(config.data).train, config.data.preprocess)


def leaves_equal(a, b) -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def all_finite(tree) -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(tree))


def restore(workdir, subdir="checkpoints", epoch=None):
  """(state, epoch) of a run's newest checkpoint in `subdir` (or exactly `epoch`)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mnist_jax import checkpoints, train, workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  config = workdir_lib.load_config(workdir)
  # Traced, not run: the checkpoint replaces the values, and compiling the init takes seconds.
  template = jax.eval_shape(lambda: train.create_train_state(jax.random.key(0), config))
  checkpointer = checkpoints.Checkpointer(pathlib.Path(workdir) / subdir, keep=1)
  try:
    restored = checkpointer.restore(template, epoch)
  finally:
    checkpointer.close()
  assert restored is not None, f"no usable checkpoint in {workdir}/{subdir}"
  return restored


def records(workdir):
  """metrics.jsonl, one dict per line."""
  import json  # pylint: disable=import-outside-toplevel
  return [json.loads(line) for line in
          (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def without(record, *keys):
  return {k: v for k, v in record.items() if k not in keys}


def assert_clear_error(result, code, *phrases):
  """Exit `code`, each phrase in the message, and no traceback."""
  assert result.returncode == code, result.stdout + result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  for phrase in phrases:
    assert phrase in result.stderr, result.stderr
