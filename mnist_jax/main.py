"""Train an experiment: `python -m mnist_jax.main --config=adam_mlp [--config.train.epochs=3]`.

`--config` takes a name from experiments/ or a path to a config file; `--config.GROUP.FIELD=value`
overrides any field. From Python, `run(["main", "--config=adam_mlp", ...])` does the same and
returns the exit code.
"""

import logging
import os
import pathlib
import sys
import threading
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from mnist_jax import cli, errors, hyperparams, multihost
from mnist_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment: a name in experiments/ "
                                          "(e.g. adam_mlp) or a path to a config .py file.",
                                          lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize() first. On Cloud TPU, "
    "SLURM, Open MPI and Kubernetes JobSets it finds the other processes itself; elsewhere give "
    "--coordinator_address, --num_processes and --process_id (or JAX_COORDINATOR_ADDRESS etc.).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", multihost.HEARTBEAT_TIMEOUT, "Multi-host: seconds without a heartbeat "
    "after which a process counts as lost; the others then stop, with the command that resumes.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout", multihost.INIT_TIMEOUT, "Multi-host: seconds a process waits for all the "
    "job's processes to start before it gives up.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the run already in --workdir and "
                               "train again (otherwise a finished run is never overwritten).")
_REPORT = flags.DEFINE_bool("report", True, "When training finishes, write the run's report "
                            "(figures, report.md, TensorBoard scalars) into the workdir; "
                            "`python -m mnist_jax.report` (re)builds it at any time.")
_PROFILE_EPOCH = flags.DEFINE_integer(
    "profile_epoch", None, "Write a jax.profiler trace of this epoch (from 1: the first "
    "includes compilation) into <workdir>/profile/, for ui.perfetto.dev or TensorBoard's profile "
    "plugin: docs/benchmark.md (Profiling one epoch). Not part of the config: the run trains as "
    "without it.")

log = logging.getLogger("mnist_jax")


def parse(argv: Sequence[str]) -> list[str]:
  """Parse `argv` and validate the config; every bad --config, override or value raises one
  ConfigError paragraph (absl would print a traceback for some)."""
  from mnist_jax import validation  # pylint: disable=import-outside-toplevel  # imports jax
  argv = _config_name_to_path(list(argv))
  for name in [name for name in flags.FLAGS if name.startswith("config.")]:
    delattr(flags.FLAGS, name)  # a previous parse's overrides (main.run called again)
  saved, sys.argv = sys.argv, argv  # config_flags reads the --config.* overrides from sys.argv
  try:
    rest = cli.parse_flags(argv)
    config = _CONFIG.value  # a broken config file raises here
    if config is None:
      raise errors.ConfigError("--config is required, e.g. --config=adam_mlp. Available: "
                               + ", ".join(config_lib.available()) + ".")
    validation.validate(config)
    _check_profile_epoch(config)
  except errors.ConfigError:
    raise
  except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
    _refuse_unsweepable(argv)
    # ml_collections reports an unknown override (--config.train.epoch=3) this way.
    message = (str(e).strip("'\"").replace("\\n", " ").replace('\\"', '"')
               .replace("\\'", "'"))
    raise errors.ConfigError(
        f"Bad --config override: {message}. Overrides must name an existing field, e.g. "
        f"--config.train.epochs=3; see the experiment file or mnist_jax/defaults.py for "
        f"fields.") from None
  finally:
    sys.argv = saved
  return rest


def _check_profile_epoch(config) -> None:
  epoch, epochs = _PROFILE_EPOCH.value, config.train.epochs
  if epoch is not None and not 1 <= epoch <= epochs:
    raise errors.ConfigError(
        f"--profile_epoch={epoch} is not an epoch of this run, which trains epochs 1 to {epochs} "
        f"(config.train.epochs). Give one of them, e.g. --profile_epoch={min(2, epochs)} (epoch "
        f"1 includes compilation), or leave the flag out.")


def _refuse_unsweepable(argv: list[str]) -> None:
  """A `--config.sweep.FIELD` that is no sweep field: one paragraph naming the fields that are,
  and how to vary anything else."""
  experiment = next((pathlib.Path(a.split("=", 1)[1]).stem for a in argv
                     if a.startswith("--config=")), "NAME")
  for arg in argv:
    name = arg.split("=", 1)[0].removeprefix("--config.sweep.")
    if not arg.startswith("--config.sweep.") or name in hyperparams.SWEEPABLE:
      continue
    if name == "learning_rate":
      raise errors.ConfigError("--config.sweep.learning_rate is now "
                               "--config.sweep.optimizer.learning_rate.")
    raise errors.ConfigError(
        f"--config.sweep.{name} is not a sweep field. One program trains a grid of the "
        f"values its compiled step reads as data: "
        f"{', '.join(f'--config.sweep.{f}' for f in hyperparams.SWEEPABLE)}. Any other field, "
        f"and every field that changes the program or its shapes (sizes, batch size, epochs, "
        f"activation, optimizer, schedule), takes one run per value, e.g. in the shell: "
        f"for v in A B; do python -m mnist_jax.main --config={experiment} "
        f"--config.{name}=$v --workdir=runs/{experiment}-{name.split('.')[-1]}-$v; done; "
        f"then `python -m mnist_jax.aggregate runs/{experiment}-{name.split('.')[-1]}-*` "
        f"tabulates them.")


def _config_name_to_path(argv: list[str]) -> list[str]:
  """Let `--config=NAME` mean experiments/NAME.py; unknown names list the available ones, and a
  file that fails to load is reported here, before absl would print its traceback."""
  def checked_path(name_or_path: str) -> str:
    path = config_lib.resolve(name_or_path)
    config_lib.load_file(path)
    return str(path)

  out = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      out.append(f"--config={checked_path(arg.split('=', 1)[1])}")
    elif i > 0 and argv[i - 1] == "--config":
      out.append(checked_path(arg))
    else:
      out.append(arg)
  return out


def main(args: list[str]) -> int:
  if args:
    raise errors.ConfigError(f"Unexpected arguments {args}: flags are written --name=value.")
  _setup_logging()
  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  workdir = (pathlib.Path(cli.WORKDIR.value) if cli.WORKDIR.value else
             workdir_lib.default_workdir(pathlib.Path(config_arg).stem, config, _REPORT.value))
  try:  # a taken coordinator port, or processes whose command lines disagree: usage errors
    jax = _setup_jax(workdir)
    log.info("Config %s -> workdir %s (JAX %s; %d %s device(s) in %d process(es))", config_arg,
             workdir, jax.__version__, jax.device_count(), jax.devices()[0].platform.upper(),
             jax.process_count())
    if jax.process_count() > 1:
      multihost.agree_on_start(workdir_lib.config_json(config), _NUM_PROCESSES.value, workdir)
  except errors.ConfigError as e:
    return cli.fail(str(e), cli.USAGE)
  try:
    with workdir_lib.lock(workdir):  # held through training and the report
      _train_and_report(config, workdir)
  except (errors.LostProcess, jax.errors.JaxRuntimeError) as e:
    if not multihost.is_peer_failure(e):
      raise
    multihost.await_verdict(e, _HEARTBEAT_TIMEOUT.value)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
    print("\nInterrupted without saving. Run the same command again to resume from the last "
          "checkpoint.", file=sys.stderr)
    return cli.INTERRUPTED
  log.info("Results in %s", workdir)
  return 0


def _setup_logging():
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(message)s"))
  log.handlers[:] = [handler]
  log.setLevel(logging.INFO)
  log.propagate = False


def _setup_jax(workdir: pathlib.Path):
  """Compiled programs are cached on disk, so a second run of a config skips compilation; with
  --distributed, the processes of the job find each other first."""
  import jax  # pylint: disable=import-outside-toplevel
  use_compilation_cache(os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                       str(pathlib.Path.home() / ".cache" / "mnist_jax" / "jax")))
  if _DISTRIBUTED.value and not jax.distributed.is_initialized():
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         _INIT_TIMEOUT.value, _HEARTBEAT_TIMEOUT.value, str(workdir.resolve()))
    if jax.process_index() != 0:
      log.setLevel(logging.WARNING)  # process 0 speaks for the job
  return jax


def use_compilation_cache(directory: str) -> None:
  """Every compiled program cached in `directory`, however fast it compiled: the second run of a
  config, and every test after the first, skips compilation."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _train_and_report(config, workdir: pathlib.Path) -> None:
  """Train (or resume) the run, then write its report; a finished run whose report is missing or
  was cut short (killed while writing it) gets only the report."""
  import jax  # pylint: disable=import-outside-toplevel

  from mnist_jax import loop, report, trainer  # pylint: disable=import-outside-toplevel
  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  write_report = _REPORT.value and jax.process_index() == 0
  preloading = None
  if write_report:
    # Overlaps the report's imports (about a second, on 2 CPU cores) with training, which runs in
    # XLA without the GIL. The report waits for them: two threads importing matplotlib at once
    # can hand one of them a half-initialised module.
    preloading = threading.Thread(target=report.preload, daemon=True)
    preloading.start()
  if (_REPORT.value and not _OVERWRITE.value
      and workdir_lib.finished_without_report(workdir, config)):
    log.info("%s holds this config's finished run, but not its complete report (stopped while "
             "writing it?): writing the report.", workdir)
  else:
    profile = (None if _PROFILE_EPOCH.value is None else
               trainer.EpochProfile(_PROFILE_EPOCH.value, workdir / workdir_lib.PROFILE))
    loop.train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value, profile=profile)
  if write_report:
    preloading.join()
    try:
      log.info("Report: %s", report.build(workdir))
    except OSError as e:
      raise workdir_lib.write_error(pathlib.Path(e.filename or workdir), e) from None


def run(argv: Sequence[str]) -> int:
  """The program, in this process: `run(["main", "--config=adam_mlp"])` -> exit code. With
  --distributed, in a child process that `multihost.supervise` watches."""
  if multihost.should_supervise(argv):
    return multihost.supervise(argv)
  return cli.run(main, argv, parse)


if __name__ == "__main__":
  cli.start(run, parse=None)
