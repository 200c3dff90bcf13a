"""The run loop: `train_and_evaluate(config, workdir)`, from the config to a finished workdir.

Reads top to bottom in execution order: set up (`trainer.Trainer`: data on the devices, the
state), resume from the newest usable checkpoint, train epoch after epoch (each one compiled call),
record and checkpoint each epoch, stop on signals, divergence or exhausted patience, then test and
write the summary.
"""

import datetime
import logging
import math
import pathlib
import signal
import statistics
import time
from typing import Optional

import jax
import numpy as np

from mnist_jax import (
  checkpoints,
  data,
  early_stopping,
  environment,
  multihost,
  optim,
  parallel,
  tensorboard,
  train,
)
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import CheckpointError, RunInterrupted, TrainingDiverged
from mnist_jax.parallel import to_host
from mnist_jax.train import summarize
from mnist_jax.trainer import EpochProfile, Trainer

log = logging.getLogger("mnist_jax")


def train_and_evaluate(config, workdir: str | pathlib.Path, overwrite: bool = False,
                       profile: Optional[EpochProfile] = None):
  """Train `config` in `workdir`, resuming from its last checkpoint if it has one.

  Writes the files of `workdir.py`: config.json, metrics.jsonl, checkpoints/, checkpoints_best/
  (with validation) and, once finished, summary.json. Returns the final state (with early stopping
  and restore_best: the best epoch's) and the history (dict of per-epoch lists, like Keras's).
  `profile` traces one epoch with jax.profiler (main's --profile_epoch).
  """
  workdir = pathlib.Path(workdir)
  with workdir_lib.lock(workdir), train.matmul_precision(config):
    workdir_lib.check(workdir, config, overwrite)
    trainer = Trainer.create(config, profile)  # data checked against the config before anything is written
    workdir_lib.prepare(workdir, config, overwrite)
    trainer.log_model()
    try:
      return _train_and_test(config, workdir, trainer)
    except OSError as e:  # disk full, I/O error, read-only: the checkpoints before are intact
      raise workdir_lib.write_error(pathlib.Path(e.filename or workdir), e) from None


def _train_and_test(config, workdir: pathlib.Path, trainer: Trainer):
  """Resume, train the remaining epochs, test, write summary.json; returns what the caller does."""
  checkpointer = checkpoints.Checkpointer(workdir / workdir_lib.CHECKPOINTS,
                                          config.train.keep_checkpoints)
  best_checkpointer = (None if trainer.val is None else checkpoints.Checkpointer(
      workdir / workdir_lib.BEST_CHECKPOINTS, keep=1))
  try:  # closing waits for the checkpoint being written in the background, also on errors
    state, epoch, history = _resume(workdir, trainer.state, checkpointer, best_checkpointer)
    where = environment.describe(data.choose_source(config.data.source), from_epoch=epoch)
    workdir_lib.append_environment(workdir, where)
    log.info("Environment: %s", environment.summary_line(where))
    state, epoch, history = _train_epochs(config, workdir, trainer, state, epoch, history,
                                          checkpointer, best_checkpointer)
    best = early_stopping.best_epoch(history, config.train.monitor)
    stopped_early = early_stopping.patience_exhausted(best, config.train.early_stopping_patience)
    if stopped_early:
      log.info("Early stopping after epoch %d: %s has not improved for %d epochs (best %.4f, "
               "epoch %d).", epoch, config.train.monitor, best.waited, best.value, best.epoch)
    steps, tested_epoch = int(np.max(to_host(state.step))), epoch
    if (config.train.early_stopping_patience and config.train.restore_best and best is not None
        and best.epoch != epoch):
      state, tested_epoch = _restore_best(state, best, best_checkpointer, epoch)
    recomputed = (config.train.batchnorm_statistics == "recomputed"
                  and bool(jax.tree.leaves(state.batch_stats)))
    if recomputed:
      # Saved over the tested epoch's checkpoint: the report and predict read it. A kill before
      # that save leaves the running averages there, and the same command recomputes them.
      state = trainer.with_population_batch_stats(state)
      (checkpointer if tested_epoch == epoch else best_checkpointer).save(tested_epoch, state)
      log.info("BatchNorm statistics recomputed over the training set with the parameters of "
               "epoch %d.", tested_epoch)
    # Evaluated while the last checkpoint is written; the run is marked finished (summary.json)
    # only once it is complete. A run without the test set (data.use_test=False) is measured
    # on validation the way a test would measure it: the tested parameters and statistics.
    final_split = data.final_split(config.data)
    final_metrics = summarize(trainer.evaluate(state, getattr(trainer, final_split)))
    recomputed_val = (summarize(trainer.evaluate(state, trainer.val))
                      if trainer.val is not None and recomputed and final_split == "test" else None)
  finally:
    for each in (checkpointer, best_checkpointer):
      if each is not None:
        each.close()
  summary = _summary(config, trainer, history, final_split, final_metrics, best, stopped_early,
                     epoch=epoch, tested_epoch=tested_epoch, steps=steps)
  if recomputed_val is not None:
    # The tested epoch's validation metrics with the statistics the test uses (metrics.jsonl has
    # them with the running averages): the two kinds of statistics compared on validation.
    _add_metrics(summary, "recomputed_val_", recomputed_val)
    log.info("Validation with the recomputed statistics: loss %.4f - accuracy %.4f",
             summary["recomputed_val_loss"], summary["recomputed_val_accuracy"])
  workdir_lib.write_summary(workdir, summary)
  name = data.SPLIT_NAMES[final_split]
  log.info("%s loss: %.4f - %s accuracy: %.4f (parameters of epoch %d%s)", name.capitalize(),
           summary[f"{final_split}_loss"], name, summary[f"{final_split}_accuracy"], tested_epoch,
           "" if final_split == "test" else "; the test set was kept out")
  keys = history[0].keys() if history else ()
  return state, {k: [r[k] for r in history] for k in keys if k != "epoch"}


# ---------------------------------------------------------------------------------------------
# Resume


def _resume(workdir: pathlib.Path, state, checkpointer: checkpoints.Checkpointer,
            best_checkpointer: Optional[checkpoints.Checkpointer]) -> tuple:
  """(state, epoch, history) of the newest usable checkpoint; (state, 0, []) if there is none
  (a new run, or one killed before its first checkpoint was complete).

  Checkpoints newer than the one restored are damaged, or were saved just before a kill ended
  the run between its two saves: the epochs after the restored one are trained again, and
  saved again, bit for bit as before. When checkpoints exist but every one is damaged, the run
  stops (CheckpointError) and deletes nothing.
  """
  restored = checkpointer.restore(state)
  if restored is None and checkpointer.damaged:
    raise CheckpointError(
        f"No checkpoint in {checkpointer.directory} can be restored: "
        f"{checkpointer.describe_damage()}. The run does not start over on its own, and nothing "
        f"was deleted. Restore the damaged files (from a backup or a copy of the workdir) and run "
        f"the same command again to resume, or pass --overwrite to delete this run and train it "
        f"again from epoch 1.")
  state, start_epoch = restored if restored is not None else (state, 0)
  for each in (checkpointer, best_checkpointer):
    if each is not None:
      each.delete_unfinished_saves()
      each.discard_after(start_epoch)
  if restored is not None:
    log.info("Resuming from the checkpoint after epoch %d in %s.", start_epoch,
             checkpointer.directory)
  history, missing = workdir_lib.read_history(workdir, start_epoch)
  if missing:
    log.warning("%s has no record of epochs %s: early stopping and the best checkpoint go by "
                "the records it has.", workdir / workdir_lib.METRICS, missing)
  return state, start_epoch, history


# ---------------------------------------------------------------------------------------------
# The epochs


def _train_epochs(config, workdir, trainer: Trainer, state, epoch: int, history: list[dict],
                  checkpointer, best_checkpointer) -> tuple:
  """Train until the last epoch or exhausted patience; returns (state, epoch, history)."""
  epochs, patience, monitor = (config.train.epochs, config.train.early_stopping_patience,
                               config.train.monitor)
  best = early_stopping.best_epoch(history, monitor)
  board = (tensorboard.Writer(workdir / workdir_lib.TENSORBOARD, trainer.functions.settings,
                              history) if parallel.is_primary() else None)
  seconds = []  # of this process's epochs: the first includes compilation
  with _StopSignals() as signals:
    while epoch < epochs and not early_stopping.patience_exhausted(best, patience):
      epoch += 1
      with trainer.profiling(epoch):
        state, record = _train_one_epoch(config, trainer, state, epoch, checkpointer)
      history.append(record)
      workdir_lib.append_record(workdir, record)
      seconds.append(record["seconds"])
      log.info(_progress_line(record, epochs, statistics.median(seconds[1:] or seconds)))
      if board is not None:
        board.write(record)

      best = early_stopping.best_epoch(history, monitor)
      if best is not None and best.epoch == epoch:  # written before the regular save: see _resume
        best_checkpointer.save(epoch, state)
        best_checkpointer.wait()
      finished = epoch == epochs or early_stopping.patience_exhausted(best, patience)
      # A stop asked of any process of a multi-host job is the whole job's, after this epoch.
      stopping = multihost.any_process(signals.received is not None)
      if finished or stopping or (epoch % config.train.checkpoint_every == 0
                                  and not _skip_checkpoint(config, checkpointer)):
        checkpointer.save(epoch, state)
      if stopping and not finished:
        checkpointer.wait()
        by = signals.received or "a signal to another process of the job"
        every = " on every host" if jax.process_count() > 1 else ""
        raise RunInterrupted(
            f"Stopped by {by} after epoch {epoch} of {epochs}; checkpoint saved in "
            f"{checkpointer.directory}. Run the same command again{every} to resume.")
  if board is not None:
    board.close()
  return state, epoch, history


def _skip_checkpoint(config, checkpointer) -> bool:
  """Whether a due checkpoint is skipped (config.train.skip_checkpoints_while_saving): the
  previous save is still being written, or began less than min_seconds_between_checkpoints ago.
  Every process of a job skips the same ones."""
  return (config.train.skip_checkpoints_while_saving and multihost.any_process(
      checkpointer.busy()
      or checkpointer.seconds_since_save() < config.train.min_seconds_between_checkpoints))


def _train_one_epoch(config, trainer: Trainer, state, epoch: int, checkpointer) -> tuple:
  """One compiled epoch, its divergence check, validation and per-epoch record."""
  started = time.perf_counter()
  state, sums, first_bad = trainer.train_epoch(state, epoch)
  metrics = summarize(sums)
  _raise_if_diverged(state, first_bad, metrics["loss"], epoch, trainer.steps_per_epoch,
                     config.model.num_classes, checkpointer)
  record = {"epoch": epoch, "step": int(np.max(to_host(state.step)))}
  _add_metrics(record, "", {"learning_rate": to_host(optim.learning_rate(state.opt_state)).tolist()})
  _add_metrics(record, "train_", metrics)
  if trainer.val is not None:
    _add_metrics(record, "val_", summarize(trainer.evaluate(state, trainer.val)))
  record["seconds"] = time.perf_counter() - started
  return state, record


def _add_metrics(record: dict, prefix: str, metrics: dict) -> None:
  """Put metrics into a record; replicas' lists go under record["replicas"], their mean on top."""
  for name, value in metrics.items():
    if isinstance(value, list):
      record.setdefault("replicas", {})[prefix + name] = value
      value = float(np.mean(value))
    record[prefix + name] = value


def _progress_line(record: dict, epochs: int, seconds_per_epoch: float) -> str:
  left = datetime.timedelta(seconds=round(seconds_per_epoch * (epochs - record["epoch"])))
  parts = [f"Epoch {record['epoch']}/{epochs}", f"{record['seconds']:.2f}s", f"{left} left",
           f"loss: {record['train_loss']:.4f}", f"accuracy: {record['train_accuracy']:.4f}"]
  if "val_loss" in record:
    parts += [f"val_loss: {record['val_loss']:.4f}", f"val_accuracy: {record['val_accuracy']:.4f}"]
  if "val_adversarial_accuracy" in record:
    parts.append(f"val_adversarial_accuracy: {record['val_adversarial_accuracy']:.4f}")
  return " - ".join(parts)


class _StopSignals:
  """Turns SIGTERM/SIGINT into a flag checked between epochs, so the run can checkpoint and stop."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook kernels): keep defaults
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    log.warning("%s received: finishing this epoch, then saving a checkpoint.", self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Divergence


# An epoch whose mean training loss exceeds this many times log(num_classes), the loss of a model
# that knows nothing and guesses uniformly, has diverged even while its loss is still finite.
DIVERGED_LOSS_FACTOR = 10.0


def _raise_if_diverged(state, first_bad, loss, epoch: int, steps_per_epoch: int,
                       num_classes: int, checkpointer: checkpoints.Checkpointer) -> None:
  """Stop at a non-finite loss or parameters (the epoch's last update overflowed), or an epoch
  loss above DIVERGED_LOSS_FACTOR * log(num_classes), before anything of this epoch is saved:
  the checkpoints keep the last good epoch. `first_bad` is `train.train_epoch`'s: the first
  step whose loss is not finite, `steps_per_epoch` for parameters that are not, or -1.

  With replicas, `first_bad` and `loss` have one entry per replica, and any replica stops all.
  """
  first_bad, loss = to_host(first_bad).reshape(-1), np.ravel(loss)
  which = lambda replica: f" in replica {replica}" if loss.size > 1 else ""
  limit = DIVERGED_LOSS_FACTOR * math.log(num_classes)
  replica = int(np.argmin(np.where(first_bad >= 0, first_bad, np.iinfo(np.int32).max)))
  if 0 <= first_bad[replica] < steps_per_epoch:
    what = f"the training loss became {loss[replica]}{which(replica)}"
    where = f", step {int(first_bad[replica]) + 1} of {steps_per_epoch}"
  elif first_bad[replica] == steps_per_epoch:  # every loss finite, the last update's parameters not
    what, where = "the parameters became NaN or infinite", f", step {steps_per_epoch} of {steps_per_epoch}"
  elif np.any(loss > limit):
    replica = int(np.argmax(loss))
    what = (f"the epoch's mean training loss became {loss[replica]:.4g}{which(replica)}, above "
            f"{DIVERGED_LOSS_FACTOR:g} x log({num_classes}) = {limit:.1f} (ten times the loss of "
            f"a model that guesses uniformly)")
    where = ""
  else:
    return
  lr = float(np.max(to_host(optim.learning_rate(state.opt_state))))
  good = checkpointer.epochs()
  kept = (f"The last good checkpoint (epoch {good[-1]}) is in {checkpointer.directory}."
          if good else "No checkpoint had been saved yet.")
  raise TrainingDiverged(
      f"Training diverged: {what} at epoch {epoch}{where} (learning rate {lr:g}). This usually "
      f"means the learning rate is too high: try --config.optimizer.learning_rate={lr / 10:g} "
      f"with a new --workdir (or --overwrite). {kept}")


# ---------------------------------------------------------------------------------------------
# Early stopping: the best epoch's checkpoint


def _restore_best(state, best: early_stopping.Best, best_checkpointer, last_epoch: int):
  """(state, epoch) of the best epoch's checkpoint; the last epoch's if it cannot be read."""
  restored = best_checkpointer.restore(state, epoch=best.epoch)
  if restored is None:
    log.warning("The best checkpoint (epoch %d) is unreadable: testing the last epoch's "
                "parameters instead.", best.epoch)
    return state, last_epoch
  log.info("Restored the parameters of the best epoch, %d.", best.epoch)
  return restored


# ---------------------------------------------------------------------------------------------
# The end


def _summary(config, trainer: Trainer, history, split: str, metrics: dict, best, stopped_early,
             *, epoch, tested_epoch, steps) -> dict:
  """summary.json: the final metrics of `split` ("test", or "val" for a run without the test
  set; per replica too), epochs, steps, time, the best epoch."""
  summary = {}
  _add_metrics(summary, f"{split}_", metrics)
  settings = trainer.functions.settings
  if len(settings) > 1:
    summary[f"{split}_accuracy_std"] = float(np.std(metrics["accuracy"]))
    per_replica = summary["replicas"]  # {"test_loss": [one per replica], ...}
    summary["replicas"] = [{**r, **{name: values[k] for name, values in per_replica.items()}}
                           for k, r in enumerate(settings)]
    words = data.SPLIT_NAMES[split]
    for r in summary["replicas"]:
      point = "".join(f", {name} {r[name]:g}" for name in settings[0] if name != "seed")
      log.info("Replica seed %d%s: %s loss %.4f - %s accuracy %.4f", r["seed"], point, words,
               r[f"{split}_loss"], words, r[f"{split}_accuracy"])
    log.info("Mean over %d replicas: %s accuracy %.4f +- %.4f (std)", len(settings), words,
             summary[f"{split}_accuracy"], summary[f"{split}_accuracy_std"])
  summary.update({"epochs": epoch, "tested_epoch": tested_epoch, "stopped_early": stopped_early,
                  "steps": steps, "data_source": trainer.splits.source,
                  "train_seconds": sum(r["seconds"] for r in history)})
  if best is not None:
    summary.update({"best_epoch": best.epoch, f"best_{config.train.monitor}": best.value})
  return summary
