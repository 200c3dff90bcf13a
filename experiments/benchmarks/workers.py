"""What the benchmark programs share: the worker protocol, the machine's description, and timing
mnist_jax's own compiled epochs.

A program runs each measurement as a subprocess of itself, `python -m <program> --worker=NAME ...`,
so every system starts equally cold and per-process settings (Keras's backend, XLA's forced device
count) hold. A worker prints each result as one line `BENCHMARK_JSON {...}` on stdout; everything
else it prints is ignored, and its stderr tail becomes the error message if it fails.
"""

import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

from mnist_jax import environment

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = "BENCHMARK_JSON "


def flag_args():
  """The parsed absl flags as attributes (`args.epochs`), as the programs' functions read them."""
  import types  # pylint: disable=import-outside-toplevel

  from absl import flags  # pylint: disable=import-outside-toplevel
  return types.SimpleNamespace(**flags.FLAGS.flag_values_dict())


def emit(record: dict) -> None:
  """In a worker: report one result to the parent."""
  print(MARKER + json.dumps(record), flush=True)


def quiet_env(**extra: str) -> dict:
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONUNBUFFERED"] = "1"
  env.update(extra)
  return env


def run_worker(program: str, worker: str, args: list[str], timeout: float, env: dict = None):
  """Run `python -m <program> --worker=<worker> ARGS` from the repository root.

  Returns (the records it emitted, None) or (records, an error message) when it failed, timed out
  or emitted nothing.
  """
  command = [sys.executable, "-m", program, f"--worker={worker}", *args]
  try:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=timeout, env=env or quiet_env())
  except subprocess.TimeoutExpired:
    return [], f"timed out after {timeout:.0f} s"
  records = [json.loads(line[len(MARKER):]) for line in result.stdout.splitlines()
             if line.startswith(MARKER)]
  if result.returncode != 0 or not records:
    tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
    return records, f"exit {result.returncode}:\n{tail}"
  return records, None


# ---------------------------------------------------------------------------------------------
# The machine


def version(*distributions: str) -> str:
  for name in distributions:
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return "not installed"


def machine_info() -> dict:
  return {
      "cpu": environment.cpu_model(), "cores": environment.cpu_cores(),
      "os": platform.platform(), "python": platform.python_version(),
      "versions": {"jax": version("jax"), "jaxlib": version("jaxlib"), "flax": version("flax"),
                   "optax": version("optax"), "keras": version("keras"),
                   "tensorflow": version("tensorflow-cpu", "tensorflow"), "torch": version("torch"),
                   "numpy": version("numpy")},
  }


def jax_device_name() -> str:
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  kind = device.device_kind
  return device.platform if kind.lower() == device.platform.lower() else f"{device.platform} ({kind})"


# ---------------------------------------------------------------------------------------------
# mnist_jax's own epochs


def time_epochs(config, epochs: int) -> dict:
  """Seconds of each of `epochs` epochs of `config`, trained as `python -m mnist_jax.main` trains
  it (`trainer.Trainer`: its data on the mesh, its state and compiled epoch, replicas included), each
  timed to `jax.block_until_ready`; without the persistent compilation cache, so the first epoch
  includes a real compilation. Also the last epoch's training metrics and the test metrics (means
  over replicas)."""
  import jax  # pylint: disable=import-outside-toplevel

  from mnist_jax import train  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_enable_compilation_cache", False)
  with train.matmul_precision(config):
    return _time_epochs(config, epochs)


def _time_epochs(config, epochs: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from mnist_jax import train  # pylint: disable=import-outside-toplevel
  from mnist_jax.trainer import Trainer  # pylint: disable=import-outside-toplevel
  trainer = Trainer.create(config)
  state = trainer.state
  jax.block_until_ready(state)
  seconds, sums = [], None
  for epoch in range(1, epochs + 1):
    started = time.perf_counter()
    state, sums, first_bad = trainer.train_epoch(state, epoch)
    jax.block_until_ready((state, sums, first_bad))
    seconds.append(time.perf_counter() - started)
  metrics = train.summarize(sums)
  test = train.summarize(trainer.evaluate(state, trainer.test))
  return {"epoch_seconds": seconds, "train_loss": float(np.mean(metrics["loss"])),
          "train_accuracy": float(np.mean(metrics["accuracy"])),
          "test_accuracy": float(np.mean(test["accuracy"])), "replicas": trainer.functions.num_replicas,
          "devices": trainer.mesh.size, "device": jax_device_name()}
