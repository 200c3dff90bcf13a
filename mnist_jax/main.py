"""Train an experiment: `python -m mnist_jax.main --config=adam_mlp [--config.train.epochs=3] [--workdir=DIR]`.

The only module that reads flags. `--config` takes a name from experiments/ or a path to a config
file; `--config.a.b=value` overrides any field.
"""

import logging
import os
import pathlib
import sys
import threading

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mnist_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment: a name in experiments/ "
                                          "(e.g. adam_mlp) or a path to a config .py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes its files. Default: "
                               "runs/<config name> (runs/<name>-2, -3, ... once that one finished).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize() first. On Cloud TPU, "
    "SLURM, Open MPI and Kubernetes JobSets it finds the other processes itself; elsewhere give "
    "--coordinator_address, --num_processes and --process_id (or JAX_COORDINATOR_ADDRESS etc.).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the run already in --workdir and "
                               "train again (otherwise a finished run is never overwritten).")
_REPORT = flags.DEFINE_bool("report", True, "When training finishes, write the run's report "
                            "(figures, report.md, TensorBoard scalars) into the workdir; "
                            "`python -m mnist_jax.report` (re)builds it at any time.")

log = logging.getLogger("mnist_jax")


def _fail(message: str, code: int = 2):
  print(f"\nERROR: {message}", file=sys.stderr)
  sys.exit(code)


def _config_name_to_path(argv: list[str]) -> list[str]:
  """Let `--config=NAME` mean experiments/NAME.py; unknown names list the available ones, and a
  file that fails to load is reported here, before absl would print its traceback."""
  def checked_path(name_or_path: str) -> pathlib.Path:
    path = config_lib.resolve(name_or_path)
    config_lib.load_file(path)
    return path

  out = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      out.append(f"--config={checked_path(arg.split('=', 1)[1])}")
    elif arg == "--config" and i + 1 < len(argv):
      out.append("--config")  # the value follows; resolved below
    elif i > 0 and argv[i - 1] == "--config":
      out.append(str(checked_path(arg)))
    else:
      out.append(arg)
  return out


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-paragraph error instead of a traceback for bad configs."""
  try:
    return parse_command_line(argv, flags.FLAGS, _CONFIG)
  except config_lib.ConfigError as e:
    _fail(str(e))


def parse_command_line(argv: list[str], flag_values: flags.FlagValues, config_flag) -> list[str]:
  """Parse `argv` into `flag_values` (whose `config_flag` is the --config flag) and validate the
  config; every bad --config, override or value raises one ConfigError paragraph."""
  try:
    rest = flag_values(_config_name_to_path(argv))
    cfg = config_flag.value  # raises here for a broken config file
    if cfg is None:
      raise config_lib.ConfigError("--config is required, e.g. --config=adam_mlp. Available: "
                                   + ", ".join(config_lib.available()) + ".")
    config_lib.validate(cfg)
  except config_lib.ConfigError:
    raise
  except flags.Error as e:
    raise config_lib.ConfigError(f"{e}\nRun with --helpfull to see all flags.") from None
  except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
    # ml_collections reports an unknown override (--config.train.epoch=3) this way.
    message = str(e).strip("'\"").replace("\\n", " ").replace('\\"', '"')
    raise config_lib.ConfigError(
        f"Bad --config override: {message}. Overrides must name an existing field, e.g. "
        f"--config.train.epochs=3; see the experiment file or mnist_jax/config.py for fields.") from None
  return rest


def _setup_logging():
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(message)s"))
  log.handlers[:] = [handler]
  log.setLevel(logging.INFO)
  log.propagate = False


def _setup_jax():
  """Compiled programs are cached on disk, so a second run of a config skips compilation."""
  import jax  # pylint: disable=import-outside-toplevel
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR",
                         str(pathlib.Path.home() / ".cache" / "mnist_jax" / "jax"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv):
  if len(argv) > 1:
    _fail(f"Unexpected arguments {argv[1:]}: flags are written --name=value.")
  _setup_logging()
  _setup_jax()
  import jax  # pylint: disable=import-outside-toplevel
  if _DISTRIBUTED.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPU/TPU ignore it
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    if jax.process_index() != 0:
      log.setLevel(logging.WARNING)  # process 0 speaks for the job
  from mnist_jax import checkpoints, data, loop  # pylint: disable=import-outside-toplevel
  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  workdir = (pathlib.Path(_WORKDIR.value) if _WORKDIR.value else
             workdir_lib.default_workdir(pathlib.Path(config_arg).stem, config, _REPORT.value))
  log.info("Config %s -> workdir %s (JAX %s; %d %s device(s) in %d process(es))", config_arg,
           workdir, jax.__version__, jax.device_count(), jax.devices()[0].platform.upper(),
           jax.process_count())
  try:
    with workdir_lib.lock(workdir):  # held through training and the report
      _train_and_report(config, workdir)
  except (config_lib.ConfigError, data.DataError, checkpoints.CheckpointError,
          workdir_lib.RunError, workdir_lib.WorkdirBusy, workdir_lib.WriteError,
          loop.TrainingDiverged) as e:
    _fail(str(e), code=1)
  except loop.RunInterrupted as e:
    print(f"\n{e}", file=sys.stderr)
    sys.exit(130)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
    print("\nInterrupted without saving. Run the same command again to resume from the last "
          "checkpoint.", file=sys.stderr)
    sys.exit(130)
  log.info("Results in %s", workdir)
  if not _DISTRIBUTED.value:  # a multi-host job's processes leave through jax's shutdown barrier
    # Every file of the run is written and closed by now. Skipping the interpreter's teardown
    # (finalising thousands of jax, flax, orbax and matplotlib objects, the XLA client's threads)
    # returns the shell prompt most of a second sooner.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access


def _train_and_report(config, workdir: pathlib.Path) -> None:
  """Train (or resume) the run, then write its report; a finished run whose report is missing or
  was cut short (killed while writing it) gets only the report."""
  import jax  # pylint: disable=import-outside-toplevel
  from mnist_jax import loop, report  # pylint: disable=import-outside-toplevel
  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  if _REPORT.value and jax.process_index() == 0:
    # Overlaps the report's imports with training, which runs in XLA without the GIL.
    threading.Thread(target=report.preload, daemon=True).start()
  if (_REPORT.value and not _OVERWRITE.value
      and workdir_lib.finished_without_report(workdir, config)):
    log.info("%s holds this config's finished run, but not its complete report (stopped while "
             "writing it?): writing the report.", workdir)
  else:
    loop.train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value)
  if _REPORT.value and jax.process_index() == 0:
    try:
      log.info("Report: %s", report.build(workdir))
    except OSError as e:
      raise workdir_lib.write_error(pathlib.Path(e.filename or workdir), e) from None


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
