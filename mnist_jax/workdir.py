"""The run directory as a file format: what a run writes, the rules that protect it, reading it back.

    <workdir>/config.json        the config, written first: the mark of whose workdir it is
    <workdir>/metrics.jsonl      one JSON record per epoch, each epoch exactly once
    <workdir>/environment.jsonl  where it ran: one record per process that trained it (a start or
                                 a resume), mnist_jax.environment
    <workdir>/checkpoints/       orbax checkpoints of the whole TrainState, the last few epochs
    <workdir>/checkpoints_best/  with validation: the best epoch by config.train.monitor
    <workdir>/tensorboard/       per-epoch scalars (mnist_jax.tensorboard), while it trains
    <workdir>/profile/           a jax.profiler trace of one epoch (main's --profile_epoch)
    <workdir>/summary.json       test metrics (validation's with data.use_test=False); written last:
                                 its presence marks a finished run
    <workdir>/report.md, ...     the report (REPORT_FILES; mnist_jax.report writes them)

    <workdir>/.lock              held (flock) by the one process that writes the run

Rules: one process writes a run at a time (`lock`); a workdir holding a finished run, or a run of
another config, is never written to by accident (`check`); every file is replaced atomically
(`write_atomic`); only process 0 of a multi-host job writes. The training loop, main, report and
predict all go through this module.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
import time

import jax
import ml_collections

from mnist_jax import checkpoints, data, parallel, paths, replicas, train
from mnist_jax import config as config_lib
from mnist_jax.errors import ConfigError, RunError, WorkdirBusy, WriteError

CONFIG, METRICS, SUMMARY = "config.json", "metrics.jsonl", "summary.json"
ENVIRONMENT = "environment.jsonl"
CHECKPOINTS, BEST_CHECKPOINTS = "checkpoints", "checkpoints_best"
TENSORBOARD = "tensorboard"  # scalars per epoch, written while the run trains
PROFILE = "profile"  # main's --profile_epoch trace
REPORT = "report.md"  # written last by mnist_jax.report: its presence marks a complete report
REPORT_FILES = (REPORT, "figures", "classification_report.txt",
                "classification_report.json", "confusion_matrix.csv", "misclassified.json")
# What a run and its report write (and what --overwrite deletes).
RUN_FILES = (CHECKPOINTS, BEST_CHECKPOINTS, METRICS, ENVIRONMENT, SUMMARY, CONFIG,
             TENSORBOARD, PROFILE) + REPORT_FILES
# What a run's result is made of, and what experiments/results/ keeps of it (never checkpoints).
RESULT_FILES = (CONFIG, SUMMARY, METRICS, ENVIRONMENT)


LOCK = ".lock"

def write_error(path: pathlib.Path, error: OSError) -> WriteError:
  """One paragraph for a failed write: what, why, what is safe, what to do."""
  why = error.strerror or str(error)
  if error.errno == errno.ENOSPC:
    fix = "Free some space (or move the workdir to another disk)"
  elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    fix = "Make the directory writable again"
  else:
    fix = "Fix the storage"
  return WriteError(f"Cannot write {path} ({why}). The run stopped; the checkpoints written "
                    f"before are intact. {fix}, then run the same command again: it continues "
                    f"from the last checkpoint (or with the report) and ends exactly like an "
                    f"uninterrupted run.")


_held: set[pathlib.Path] = set()  # the workdirs this process holds


@contextlib.contextmanager
def lock(workdir: pathlib.Path):
  """Hold `workdir` exclusively for this process while the block runs.

  An flock on <workdir>/.lock: the kernel releases it when the process dies, kill -9 included,
  so a lock never outlives its holder and never blocks a resume. A second process that finds it
  held gets WorkdirBusy naming the holder. Re-entrant within a process (main holds it around
  training and the report; train_and_evaluate takes it too, for callers from notebooks). In a
  multi-host job only process 0 writes, so only it locks: one lock per job.
  """
  workdir = pathlib.Path(workdir).resolve()
  if workdir in _held or not parallel.is_primary():
    yield  # the outer block (or process 0) holds it
    return
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ConfigError(f"Cannot write to workdir {workdir} ({e.strerror}). "
                      f"Choose a writable --workdir.") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
      raise WorkdirBusy(
          f"{workdir} is in use by {holder}. Two processes must not write one run: wait for it "
          f"to finish (then run the same command again to resume it or see its results), stop "
          f"it (Ctrl-C or kill: it can be resumed), or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"PID {os.getpid()} on host {socket.gethostname()}, started "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n").encode(), 0)
    _held.add(workdir)
    try:
      yield
    finally:
      _held.discard(workdir)
      os.ftruncate(fd, 0)
  finally:
    os.close(fd)  # releases the flock


def config_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def write_atomic(path: pathlib.Path, text: str) -> None:
  """`paths.write_atomic` from process 0 alone: one writer per run."""
  if parallel.is_primary():
    paths.write_atomic(path, text)


def _same_config(workdir: pathlib.Path, config) -> bool:
  """Whether the run in `workdir` is of `config`. Fields added to mnist_jax since the run started
  take their defaults (`load_config`), which keep what the run did: an older run still resumes."""
  return json.loads(config_json(load_config(workdir))) == json.loads(config_json(config))


# What to do about each damaged file of a run; the run's other files are left as they are.
_REPAIR = {
    CONFIG: ("Restore it from a copy of the workdir: without it the run can be neither resumed "
             "nor read. To train the config from scratch instead, use a new --workdir, or pass "
             "--overwrite to delete this run."),
    SUMMARY: ("It is written last, when the run finishes: delete it and run the run's command "
              "again, which resumes from the last checkpoint and writes it anew, or restore it "
              "from a copy of the workdir."),
    METRICS: ("Restore it from a copy of the workdir, or delete the damaged lines: the run records "
              "each epoch once, and its report and resume go by the records it has."),
    ENVIRONMENT: ("Restore it from a copy of the workdir, or delete the damaged lines: it only "
                  "records where the run ran."),
}


def _damaged(path: pathlib.Path, what: str) -> RunError:
  return RunError(f"{path} is damaged: {what}. Nothing was changed or deleted. "
                  f"{_REPAIR[path.name]}")


def read_json(path: pathlib.Path) -> dict:
  """config.json or summary.json as a dict; a truncated or garbled file is a RunError paragraph
  naming the file and its repair."""
  try:
    value = json.loads(path.read_bytes())
  except json.JSONDecodeError as e:
    raise _damaged(path, f"it is not JSON (cut short, or overwritten: {e.msg} at line "
                         f"{e.lineno}, column {e.colno})") from None
  except UnicodeDecodeError:
    raise _damaged(path, "it is not text") from None
  if not isinstance(value, dict):
    raise _damaged(path, f"it holds a JSON {type(value).__name__}, not the object mnist_jax "
                         f"writes") from None
  return value


def read_lines(path: pathlib.Path) -> list[dict]:
  """A .jsonl file's records. Only its last line may be cut short (what a kill leaves while it is
  appended): it is dropped; damage before it is a RunError paragraph."""
  if not path.exists():
    return []
  lines = path.read_bytes().decode(errors="replace").splitlines()
  out = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      record = None
    if not isinstance(record, dict):
      if number == len(lines):
        break  # a kill mid-append
      raise _damaged(path, f"line {number} of {len(lines)} is not a JSON record")
    out.append(record)
  return out


def is_finished(workdir: pathlib.Path) -> bool:
  return (pathlib.Path(workdir) / SUMMARY).exists()


def report_is_complete(workdir: pathlib.Path) -> bool:
  return (pathlib.Path(workdir) / REPORT).exists()


def finished_without_report(workdir: pathlib.Path, config) -> bool:
  """A finished run of `config` whose report is missing or was cut short: it needs only that."""
  workdir = pathlib.Path(workdir)
  return ((workdir / CONFIG).exists() and _same_config(workdir, config) and is_finished(workdir)
          and not report_is_complete(workdir))


# ---------------------------------------------------------------------------------------------
# Starting a run


def default_workdir(config_name: str, config, report: bool = True) -> pathlib.Path:
  """runs/<name>; when that holds a finished or different run, the next free runs/<name>-K.

  A run of this config that is unfinished (or, with `report`, finished without its complete
  report) is taken up again: the same command resumes it.
  """
  base = pathlib.Path("runs") / config_name
  candidate, k = base, 1
  while (candidate / CONFIG).exists():
    if _same_config(candidate, config) and (
        not is_finished(candidate) or (report and not report_is_complete(candidate))):
      break
    k += 1
    candidate = base.with_name(f"{config_name}-{k}")
  return candidate


def check(workdir: pathlib.Path, config, overwrite: bool) -> None:
  """Never overwrite a finished run, or mix two configs in one workdir, by accident."""
  if overwrite or not (workdir / CONFIG).exists():
    return
  if not _same_config(workdir, config):
    raise ConfigError(
        f"{workdir} holds a run with a different config (see {workdir / CONFIG}). Use a new "
        f"--workdir, or pass --overwrite to delete that run and start again.")
  if is_finished(workdir):
    read_summary(workdir)  # a damaged one: its own paragraph
    raise ConfigError(
        f"{workdir} holds a finished run (see {workdir / SUMMARY}). Use a new --workdir, or "
        f"pass --overwrite to delete it and train again.")


def prepare(workdir: pathlib.Path, config, overwrite: bool) -> None:
  """Delete the old run if asked to, then record the config."""
  try:
    if overwrite and parallel.is_primary():
      for name in RUN_FILES:
        target = workdir / name
        if target.is_dir():
          shutil.rmtree(target)
        elif target.exists():
          target.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomic(workdir / CONFIG, config_json(config))
  except OSError as e:
    raise ConfigError(f"Cannot write to workdir {workdir} ({e.strerror}). "
                      f"Choose a writable --workdir.") from None


# ---------------------------------------------------------------------------------------------
# metrics.jsonl and summary.json


def read_history(workdir: pathlib.Path, up_to_epoch: int) -> tuple[list[dict], list[int]]:
  """The records of epochs 1..up_to_epoch in metrics.jsonl, which is rewritten to hold only them,
  and the epochs of that range it has no record of.

  Later epochs are trained again after a resume, so their records go, as does a last line cut
  short by a kill; a damaged line before it stops the run (`read_lines`) before anything is
  rewritten.
  """
  path = workdir / METRICS
  records = {}
  for record in read_lines(path):
    if 1 <= record.get("epoch", 0) <= up_to_epoch:
      records[record["epoch"]] = record
  history = [records[epoch] for epoch in sorted(records)]
  write_atomic(path, "".join(json.dumps(r) + "\n" for r in history))
  return history, sorted(set(range(1, up_to_epoch + 1)) - set(records))


def append_record(workdir: pathlib.Path, record: dict) -> None:
  """An epoch's record, appended to metrics.jsonl."""
  _append_line(workdir / METRICS, record)


def append_environment(workdir: pathlib.Path, record: dict) -> None:
  """Where this process trains the run (`environment.describe`), appended to environment.jsonl."""
  _append_line(workdir / ENVIRONMENT, record)


def _append_line(path: pathlib.Path, record: dict) -> None:
  if parallel.is_primary():
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")


def write_summary(workdir: pathlib.Path, summary: dict) -> None:
  write_atomic(workdir / SUMMARY, json.dumps(summary, indent=2) + "\n")


def read_summary(workdir: pathlib.Path) -> dict:
  """summary.json; {} for a run that has not finished."""
  path = pathlib.Path(workdir) / SUMMARY
  return read_json(path) if path.exists() else {}


def read_metrics(workdir: pathlib.Path, name: str = METRICS) -> list[dict]:
  """metrics.jsonl: one record per epoch (or `name`'s records, e.g. ENVIRONMENT's)."""
  return read_lines(pathlib.Path(workdir) / name)


# ---------------------------------------------------------------------------------------------
# Loading a run back


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """config.json as a ConfigDict: lists back to tuples, fields added since at their defaults."""
  path = pathlib.Path(workdir) / CONFIG
  if not path.is_file():
    raise RunError(f"{workdir} is not the workdir of a run (it has no {CONFIG}). Train one "
                   f"with `python -m mnist_jax.main --config=NAME --workdir={workdir}`.")
  return ml_collections.ConfigDict(_merge(config_lib.default_config().to_dict(), read_json(path)))


def _merge(defaults: dict, saved: dict) -> dict:
  merged = dict(defaults)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = _merge(merged[key], value)
    else:
      merged[key] = tuple(value) if isinstance(value, list) else value
  return merged


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run, restored from its workdir."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  state: train.TrainState
  epoch: int  # epochs completed by the restored checkpoint
  splits: data.Splits
  history: list[dict]  # metrics.jsonl, one record per epoch
  summary: dict  # summary.json; {} for a run that has not finished


def load_run(workdir, replica: int = 0) -> Run:
  """Config, data splits and the tested parameters of the run in `workdir`.

  The tested parameters are the last epoch's, or the best epoch's when early stopping restored
  them; of a run of several replicas (seeds, sweep), those of replica `replica`.
  """
  workdir = pathlib.Path(workdir)
  config = load_config(workdir)
  splits = data.load(config.data)
  num_replicas = len(replicas.replica_settings(config))
  if not 0 <= replica < num_replicas:
    raise RunError(f"Replica {replica} does not exist: the run has {num_replicas}.")
  # The state the training loop built, traced for its shapes only: compiling the initialisation
  # would take seconds for values the checkpoint replaces.
  template = jax.eval_shape(lambda: replicas.init_run(config, splits.train).state)
  summary = read_summary(workdir)
  directory, epoch = workdir / CHECKPOINTS, None
  if summary.get("tested_epoch", summary.get("epochs")) != summary.get("epochs"):
    directory, epoch = workdir / BEST_CHECKPOINTS, summary["tested_epoch"]  # restore_best
  if not directory.is_dir():
    raise RunError(f"{workdir} has no {directory.name}/ directory: the run saved no parameters yet.")
  checkpointer = checkpoints.Checkpointer(directory, config.train.keep_checkpoints)
  try:
    restored = checkpointer.restore(template, epoch=epoch)
  finally:
    checkpointer.close()
  if restored is None:
    damage = checkpointer.describe_damage()
    raise RunError(f"No usable checkpoint in {directory}"
                   + (f" ({damage})" if damage else "") + ". Restore the damaged files, or train "
                   "the run again (--overwrite) to make one.")
  state, epoch = restored
  if num_replicas > 1:
    state = replicas.select(state, replica)
  history = [r for r in read_metrics(workdir) if r["epoch"] <= epoch]
  return Run(workdir, config, state, epoch, splits, history, summary)
