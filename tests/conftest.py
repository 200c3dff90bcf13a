"""Shared fixtures. Tests run in two tiers: `./run.sh test` (not marked slow: unit tests and
in-process runs) and `./run.sh test --all` (also the `slow` ones: subprocesses, several processes,
benchmarks, the notebook). Every test and every process it starts shares one persistent JAX
compilation cache, so a program compiled once is loaded afterwards."""
import contextlib
import dataclasses
import io
import logging
import os
import pathlib
import subprocess
import sys
import threading
import time

import jax
import pytest

from mnist_jax import main as mnist_jax_main

REPO = pathlib.Path(__file__).resolve().parent.parent
COMPILATION_CACHE = os.environ.setdefault(  # read by the subprocesses' mnist_jax.main too
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "mnist_jax" / "jax"))
mnist_jax_main.use_compilation_cache(COMPILATION_CACHE)


@dataclasses.dataclass
class Result:
  """What a finished command left: like subprocess.CompletedProcess."""
  returncode: int
  stdout: str
  stderr: str


def run_program(module: str, *args) -> Result:
  """`python -m mnist_jax.MODULE ARGS`, called in this process (`MODULE.run(argv)`): its exit code
  and what it printed. For the process itself (signals, exit by the OS) use `run_cli`."""
  import importlib  # pylint: disable=import-outside-toplevel
  program = importlib.import_module(f"mnist_jax.{module}")
  logger = logging.getLogger("mnist_jax")
  saved = logger.handlers[:], logger.level, logger.propagate
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = program.run([module, *args])
  finally:
    logger.handlers[:], logger.level, logger.propagate = saved
  return Result(code, out.getvalue(), err.getvalue())


def run_main(*args, check=True) -> Result:
  """`python -m mnist_jax.main ARGS`, in this process."""
  result = run_program("main", *args)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return result


def run_cli(*args, check=True, timeout=300, env=None):
  """`python -m mnist_jax.main ARGS` as a process, as a user runs it."""
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
  # Every epoch saved, whatever the disk's speed: tests remove a given epoch's checkpoint. (With
  # skipping on, only a busy disk skips: no minimum interval.)
  config.train.skip_checkpoints_while_saving = False
  config.train.min_seconds_between_checkpoints = 0.0
  return config


def threads_left(before: set) -> list[str]:
  """The threads started since `before` (a `threading.enumerate()` set) that are still alive 5 s
  on: what a closed checkpointer failed to release. (A closing thread may take a moment.)"""
  deadline = time.monotonic() + 5
  while True:
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    if not left or time.monotonic() > deadline:
      return left
    time.sleep(0.05)


def tensorboard_scalars(directory: pathlib.Path) -> dict:
  """{tag: [(step, value)]} from TensorBoard event files, read without TensorFlow."""
  import struct  # pylint: disable=import-outside-toplevel

  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  scalars = {}
  for path in directory.glob("events.out.tfevents.*"):
    raw, pos = path.read_bytes(), 0
    while pos < len(raw):  # TFRecord: length, its CRC, the Event, its CRC
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


# Flags that shrink any experiment to a seconds-long CLI run.
TINY_FLAGS = ("--config.data.source=idx", "--config.data.train_subset=600",
              "--config.train.epochs=2", "--config.train.batch_size=128")


def run_module(module, *args):
  """`python -m mnist_jax.MODULE ARGS` as a process, as a user runs it."""
  return subprocess.run([sys.executable, "-m", f"mnist_jax.{module}", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """The workdir of one tiny run of T1's model A (l2_rows preprocessing, a validation split),
  report included: what the report and predict tests study."""
  workdir = tmp_path_factory.mktemp("run")
  run_main("--config=adam_mlp_784", f"--workdir={workdir}", *TINY_FLAGS)
  return workdir


@pytest.fixture(scope="session")
def predictions(trained_run):
  """(run, test-set probabilities) of `trained_run`, restored in this process."""
  from mnist_jax import report, workdir  # pylint: disable=import-outside-toplevel
  run = workdir.load_run(trained_run)
  return run, report.probabilities(run, run.splits.test.images)


@pytest.fixture(scope="session")
def idx_arrays():
  """The shipped MNIST, read from its IDX files: {"train": Split, "test": Split}."""
  from mnist_jax import data_sources  # pylint: disable=import-outside-toplevel
  from mnist_jax.paths import DATA_DIR  # pylint: disable=import-outside-toplevel
  return data_sources.load_idx(DATA_DIR / "mnist")


# ---------------------------------------------------------------------------------------------
# Helpers


def multiset(split):
  """A split's (image, label) pairs as a multiset: tfds reorders the examples."""
  import collections  # pylint: disable=import-outside-toplevel
  import hashlib  # pylint: disable=import-outside-toplevel
  return collections.Counter(hashlib.sha1(image.tobytes() + bytes([label])).digest()
                             for image, label in zip(split.images, split.labels))


def device_data(config):
  """The config's training split on the device, preprocessed."""
  from mnist_jax import data, parallel  # pylint: disable=import-outside-toplevel
  return parallel.DeviceData.put(data.load(config.data).train, config.data.preprocess)


def leaves_equal(a, b) -> bool:
  import numpy as np  # pylint: disable=import-outside-toplevel
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def all_finite(tree) -> bool:
  import numpy as np  # pylint: disable=import-outside-toplevel
  return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(tree))


def restore(workdir, subdir="checkpoints", epoch=None):
  """(state, epoch) of a run's newest checkpoint in `subdir` (or exactly `epoch`)."""

  from mnist_jax import checkpoints, train  # pylint: disable=import-outside-toplevel
  from mnist_jax import workdir as workdir_lib
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


@contextlib.contextmanager
def resumes_from(workdir, epoch):
  """Asserts that the block resumes the run in `workdir` from its checkpoint of `epoch`, not from
  scratch: the environment record the resumed process appends says so, and the records of epochs
  1..epoch are untouched (a run that started over would write them again, with other times)."""
  import json  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  before = [r for r in records(workdir) if r["epoch"] <= epoch]
  assert len(before) == epoch, f"{workdir} records {len(before)} of the {epoch} epochs to keep"
  yield
  started = [json.loads(line) for line in
             (workdir / "environment.jsonl").read_text().splitlines()]
  assert started[-1]["from_epoch"] == epoch, f"resumed from {started[-1]['from_epoch']}, not {epoch}"
  assert [r for r in records(workdir) if r["epoch"] <= epoch] == before


def fake_run(workdir, config, summary, epoch_seconds=(2.0, 1.0, 4.0), environment=None):
  """A finished run's files as the loop writes them (no checkpoints: aggregate, results and
  verify never read them); `summary=None` leaves it unfinished."""
  import json  # pylint: disable=import-outside-toplevel

  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  workdir.mkdir(parents=True)
  (workdir / workdir_lib.CONFIG).write_text(workdir_lib.config_json(config))
  (workdir / workdir_lib.METRICS).write_text("".join(
      json.dumps({"epoch": e + 1, "seconds": s}) + "\n" for e, s in enumerate(epoch_seconds)))
  if environment is not None:
    (workdir / workdir_lib.ENVIRONMENT).write_text(json.dumps(environment) + "\n")
  if summary is not None:
    summary = {"epochs": 3, "tested_epoch": 3, "train_seconds": sum(epoch_seconds), **summary}
    (workdir / workdir_lib.SUMMARY).write_text(json.dumps(summary))
  return workdir


def without(record, *keys):
  return {k: v for k, v in record.items() if k not in keys}


def assert_clear_error(result, code, *phrases):
  """Exit `code`, each phrase in the message, and no traceback."""
  assert result.returncode == code, result.stdout + result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  for phrase in phrases:
    assert phrase in result.stderr, result.stderr
