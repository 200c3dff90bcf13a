"""train_and_evaluate: end to end, interruption and exact resume, damaged checkpoints, write
failures, divergence, early stopping.

Every interrupted run is compared with one uninterrupted run of the same command (`straight`);
the `slow` tests kill real processes.
"""
import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import (
  REPO,
  all_finite,
  assert_clear_error,
  leaves_equal,
  records,
  restore,
  resumes_from,
  run_cli,
  run_main,
  run_program,
  tensorboard_scalars,
  without,
)
from mnist_jax import config as config_lib
from mnist_jax import early_stopping, loop
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import TrainingDiverged

# 8000 training and 2000 validation examples, input dropout (so dropout keys must resume too),
# early stopping armed: about 0.2 s an epoch on a CPU, long enough for a kill to land mid-run.
RUN = ("--config=adam_mlp", "--config.data.source=idx", "--config.data.train_subset=10000",
       "--config.data.validation=train_tail", "--config.model.input_dropout=0.2",
       "--config.train.epochs=6", "--config.train.batch_size=32",
       "--config.train.early_stopping_patience=2",
       "--config.train.skip_checkpoints_while_saving=False", "--noreport")
EPOCHS = 6



def test_train_and_evaluate_in_process(tiny_config, tmp_path):
  """The loop as a notebook calls it: files written, Keras-like history returned."""
  tiny_config.data.validation = "train_tail"
  state, history = loop.train_and_evaluate(tiny_config, tmp_path)
  assert sorted(history) == ["learning_rate", "seconds", "step", "train_accuracy", "train_loss",
                             "val_accuracy", "val_loss"]
  assert history["step"] == [7, 14] and int(state.step) == 14  # 409 examples, batch 64
  assert history["train_loss"][1] < history["train_loss"][0]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["epochs"] == 2 and 0.5 < summary["test_accuracy"] <= 1
  assert [r["epoch"] for r in records(tmp_path)] == [1, 2]
  assert restore(tmp_path)[1] == 2 and restore(tmp_path, "checkpoints_best")[1] >= 1
  board = tensorboard_scalars(tmp_path / "tensorboard" / "train")
  assert [step for step, _ in board["loss"]] == [1, 2]  # each epoch's, as it ended
  fds = pathlib.Path("/proc/self/fd")
  open_files = [str(fd.resolve()) for fd in fds.iterdir() if fd.exists()]
  assert not [f for f in open_files if f.startswith(str(tmp_path))]  # every file closed


def test_the_best_checkpoint_is_complete_before_the_regular_one_of_its_epoch_starts(
    tiny_config, tmp_path, monkeypatch):
  """A kill between the two saves must never leave a regular checkpoint newer than an
  unfinished best one (_resume's rule): the loop waits for the best, however slow its writing."""
  from mnist_jax import checkpoints  # pylint: disable=import-outside-toplevel
  tiny_config.data.validation, tiny_config.train.epochs = "train_tail", 3
  digests, save = checkpoints._digests, checkpoints.Checkpointer.save  # pylint: disable=protected-access
  monkeypatch.setattr(checkpoints, "_digests", lambda d: time.sleep(
      0.3 if d.parent.name == "checkpoints_best" else 0) or digests(d))
  started, best_epochs = [], []

  def checked_save(self, epoch, state):
    if self.directory.name == "checkpoints_best":
      best_epochs.append(epoch)
    else:
      started.append(epoch)
      if epoch in best_epochs:
        assert (self.directory.parent / "checkpoints_best" / str(epoch)
                / checkpoints.MANIFEST).exists(), epoch
    save(self, epoch, state)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", checked_save)
  loop.train_and_evaluate(tiny_config, tmp_path)
  assert started == [1, 2, 3] and best_epochs and best_epochs[0] == 1


def _record_saves(monkeypatch) -> list[int]:
  """The epochs every Checkpointer saves from now on, in order (the saves still happen)."""
  from mnist_jax import checkpoints  # pylint: disable=import-outside-toplevel
  save, saved = checkpoints.Checkpointer.save, []

  def recorded_save(self, epoch, state):
    saved.append(epoch)
    save(self, epoch, state)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", recorded_save)
  return saved


def test_a_due_checkpoint_is_skipped_while_the_previous_is_written_and_resume_stays_exact(
    tiny_config, tmp_path, monkeypatch):
  """config.train.skip_checkpoints_while_saving: epochs that end while the last save is still
  being written (here epoch 1's, made slow) save nothing, the last epoch always saves, and a run
  killed after a skipped epoch resumes from the checkpoint it has, to the same parameters. False
  saves every epoch, waiting for the previous save."""
  from mnist_jax import checkpoints  # pylint: disable=import-outside-toplevel
  digests = checkpoints._digests  # pylint: disable=protected-access
  monkeypatch.setattr(checkpoints, "_digests",
                      lambda d: time.sleep(3 if d.name == "1" else 0) or digests(d))
  saved = _record_saves(monkeypatch)
  tiny_config.train.epochs = 4
  runs = {}
  for skip, expected in ((True, [1, 4]), (False, [1, 2, 3, 4])):
    saved.clear()
    tiny_config.train.skip_checkpoints_while_saving = skip
    runs[skip], _ = loop.train_and_evaluate(tiny_config, tmp_path / str(skip))
    assert saved == expected, skip
  for x, y in zip(jax.tree.leaves(runs[True]), jax.tree.leaves(runs[False]), strict=True):
    np.testing.assert_array_equal(x, y)  # what training computes is the same

  run = tmp_path / "True"
  (run / "summary.json").unlink()  # killed during epoch 4's save: epochs 2 and 3 have none
  shutil.rmtree(run / "checkpoints" / "4")
  tiny_config.train.skip_checkpoints_while_saving = True
  with resumes_from(run, 1):
    resumed, _ = loop.train_and_evaluate(tiny_config, run)
  assert [r["epoch"] for r in records(run)] == [1, 2, 3, 4]
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(runs[True]), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_due_checkpoint_is_skipped_within_min_seconds_of_the_last_save(tiny_config, tmp_path,
                                                                          monkeypatch):
  """config.train.min_seconds_between_checkpoints, with skipping on: the first due checkpoint is
  saved, the next ones not until that many seconds have passed since it began; the last epoch's
  always is. Off (skipping off), every due epoch is saved."""
  saved = _record_saves(monkeypatch)
  tiny_config.train.epochs, tiny_config.train.min_seconds_between_checkpoints = 4, 3600.0
  for skip, expected in ((True, [1, 4]), (False, [1, 2, 3, 4])):
    saved.clear()
    tiny_config.train.skip_checkpoints_while_saving = skip
    loop.train_and_evaluate(tiny_config, tmp_path / str(skip))
    assert saved == expected, skip


def test_a_resume_discards_newer_checkpoints_names_missing_records_and_keeps_one_best(
    tiny_config, tmp_path, caplog):
  """Resuming from a checkpoint older than the newest (here: the newest damaged) deletes every
  newer one, the best epoch's too: after a resume on another platform, whose later epochs differ
  in their last bits, a stale newer 'best' must not outrank the new run's. An epoch without its
  record in metrics.jsonl is named. checkpoints_best holds one epoch."""
  from mnist_jax import checkpoints, trainer  # pylint: disable=import-outside-toplevel
  tiny_config.data.validation, tiny_config.train.epochs = "train_tail", 3
  loop.train_and_evaluate(tiny_config, tmp_path)
  assert len([p for p in (tmp_path / "checkpoints_best").iterdir() if p.name.isdigit()]) == 1
  state = trainer.Trainer.create(tiny_config).state
  best = checkpoints.Checkpointer(tmp_path / "checkpoints_best", keep=1)
  best.save(3, state)  # as if epoch 3 had been the best
  best.close()
  newest = max((p for p in (tmp_path / "checkpoints" / "3").rglob("*") if p.is_file()
                and p.name != checkpoints.MANIFEST), key=lambda p: p.stat().st_size)
  newest.write_bytes(b"\0" + newest.read_bytes()[1:])  # epoch 3 damaged: resume from 2
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines[1:]) + "\n")  # epoch 1's record lost
  regular = checkpoints.Checkpointer(tmp_path / "checkpoints", tiny_config.train.keep_checkpoints)
  best = checkpoints.Checkpointer(tmp_path / "checkpoints_best", keep=1)
  try:
    _, epoch, history = loop._resume(tmp_path, state, regular, best)  # pylint: disable=protected-access
    assert epoch == 2 and [r["epoch"] for r in history] == [2]
    assert max(regular.epochs()) == 2 and best.epochs() == []
  finally:
    regular.close()
    best.close()
  assert "has no record of epochs [1]" in caplog.text


def test_a_signal_during_an_epoch_stops_the_run_after_it_with_a_checkpoint_then_it_resumes(
    tiny_config, tmp_path, monkeypatch):
  """In process, as from a notebook: SIGTERM during epoch 1 of 3 (raised by the epoch itself,
  so it lands there) stops the run after that epoch, its checkpoint written; the same call
  resumes from it and ends like an uninterrupted run."""
  import signal  # pylint: disable=import-outside-toplevel

  from mnist_jax.errors import RunInterrupted  # pylint: disable=import-outside-toplevel
  tiny_config.train.epochs = 3
  straight, _ = loop.train_and_evaluate(tiny_config, tmp_path / "straight")
  one_epoch = loop._train_one_epoch  # pylint: disable=protected-access

  def interrupted(config, trainer, state, epoch, checkpointer):
    if epoch == 1:
      signal.raise_signal(signal.SIGTERM)
    return one_epoch(config, trainer, state, epoch, checkpointer)

  monkeypatch.setattr(loop, "_train_one_epoch", interrupted)
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(RunInterrupted, match=r"^Stopped by SIGTERM after epoch 1 of 3; checkpoint "
                     r"saved in .*checkpoints\. Run the same command again to resume\.$"):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
  assert restore(tmp_path / "run")[1] == 1 and not (tmp_path / "run" / "summary.json").exists()
  assert signal.getsignal(signal.SIGTERM) is handler  # the run's handler is gone
  monkeypatch.setattr(loop, "_train_one_epoch", one_epoch)
  with resumes_from(tmp_path / "run", 1):
    resumed, _ = loop.train_and_evaluate(tiny_config, tmp_path / "run")
  assert leaves_equal(resumed.params, straight.params)


# ---------------------------------------------------------------------------------------------
# Helpers


def _start(workdir):
  return subprocess.Popen([sys.executable, "-m", "mnist_jax.main", *RUN, f"--workdir={workdir}"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_first_checkpoint(process, workdir, timeout=120):
  """Until the first checkpoint is complete: committed by orbax and its checksums written (a kill
  between the two leaves an unfinished save, and the run starts over)."""
  first = workdir / "checkpoints" / "1" / "sha256.json"
  deadline = time.monotonic() + timeout
  while not first.exists():
    assert process.poll() is None, f"ended before its first checkpoint: {process.communicate()}"
    assert time.monotonic() < deadline, f"no checkpoint after {timeout} s"
    time.sleep(0.005)


def _assert_same_run(workdir, reference, epochs=EPOCHS):
  """Bit-identical last and best checkpoints (whole state), each epoch recorded once, same
  results."""
  for subdir in ("checkpoints", "checkpoints_best"):
    (state, epoch), (expected, expected_epoch) = (restore(w, subdir) for w in (workdir, reference))
    assert epoch == expected_epoch
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
      np.testing.assert_array_equal(x, y)
  lines = records(workdir)
  assert [r["epoch"] for r in lines] == list(range(1, epochs + 1))
  assert ([without(r, "seconds") for r in lines]
          == [without(r, "seconds") for r in records(reference)])
  summary, expected = (json.loads((w / "summary.json").read_text()) for w in (workdir, reference))
  assert without(summary, "train_seconds") == without(expected, "train_seconds")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The workdir of an uninterrupted run of RUN."""
  workdir = tmp_path_factory.mktemp("straight")
  run_main(*RUN, f"--workdir={workdir}")
  return workdir


# ---------------------------------------------------------------------------------------------
# Interruption and resume


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(straight, tmp_path):
  workdir = tmp_path / "run"
  process = _start(workdir)
  _wait_for_first_checkpoint(process, workdir)
  process.kill()
  process.communicate()
  assert process.returncode == -signal.SIGKILL
  assert not (workdir / "summary.json").exists(), "the run finished before the kill landed"

  saved = restore(workdir)[1]
  with resumes_from(workdir, saved):
    result = run_cli(*RUN, f"--workdir={workdir}")  # the same command resumes
  assert f"Resuming from the checkpoint after epoch {saved}" in result.stdout
  _assert_same_run(workdir, straight)


@pytest.mark.slow
def test_sigterm_saves_exits_cleanly_and_resumes_identically(straight, tmp_path):
  workdir = tmp_path / "run"
  process = _start(workdir)
  _wait_for_first_checkpoint(process, workdir)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr
  assert "Traceback" not in stderr
  stopped = re.search(r"Stopped by SIGTERM after epoch (\d+) of 6; checkpoint saved in .*\. "
                      r"Run the same command again to resume\.", stderr)
  assert stopped, stderr
  assert restore(workdir)[1] == int(stopped.group(1))  # the epoch it stopped after is saved

  with resumes_from(workdir, int(stopped.group(1))):
    run_cli(*RUN, f"--workdir={workdir}")
  _assert_same_run(workdir, straight)


def test_damaged_latest_checkpoint_and_unfinished_save_are_skipped(straight, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  (workdir / "summary.json").unlink()  # an unfinished run whose last save was damaged
  for path in (workdir / "checkpoints" / str(EPOCHS)).rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  leftover = workdir / "checkpoints" / f"{EPOCHS + 1}.orbax-checkpoint-tmp-1700000000"
  leftover.mkdir()
  (leftover / "half_written").write_bytes(b"\0" * 100)

  with resumes_from(workdir, EPOCHS - 1):
    result = run_main(*RUN, f"--workdir={workdir}")
  assert f"Skipping the checkpoint of epoch {EPOCHS} in" in result.stdout
  assert f"Resuming from the checkpoint after epoch {EPOCHS - 1}" in result.stdout
  assert "Traceback" not in result.stderr, result.stderr
  assert not leftover.exists()
  _assert_same_run(workdir, straight)


def _flip_a_byte(checkpoint):
  """One bit of the largest file of a checkpoint's directory flipped, as a bad disk would."""
  largest = max((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[len(data) // 2] ^= 1
  largest.write_bytes(bytes(data))
  return largest


def test_a_flipped_byte_in_the_newest_checkpoint_is_named_and_the_previous_one_resumes(
    straight, tmp_path):
  """orbax restores a flipped byte as if intact; the checksums do not."""
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  (workdir / "summary.json").unlink()
  flipped = _flip_a_byte(workdir / "checkpoints" / str(EPOCHS))
  with resumes_from(workdir, EPOCHS - 1):
    result = run_main(*RUN, f"--workdir={workdir}")
  name = flipped.relative_to(workdir / "checkpoints" / str(EPOCHS))
  assert (f"Skipping the checkpoint of epoch {EPOCHS} in {(workdir / 'checkpoints').resolve()}: "
          f"{name} does not match its checksum." in result.stdout)
  _assert_same_run(workdir, straight)


def _tree(directory):
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
          if p.is_file()}


def test_when_every_checkpoint_is_damaged_the_run_refuses_and_deletes_nothing(straight, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  (workdir / "summary.json").unlink()
  epochs = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(epochs) == 2
  _flip_a_byte(workdir / "checkpoints" / str(epochs[-1]))
  truncated = workdir / "checkpoints" / str(epochs[0]) / "_CHECKPOINT_METADATA"
  truncated.write_bytes(truncated.read_bytes()[:10])
  before = _tree(workdir)

  result = run_main(*RUN, f"--workdir={workdir}", check=False)
  assert_clear_error(result, 1, f"No checkpoint in {(workdir / 'checkpoints').resolve()} can be "
                     f"restored: epoch {epochs[0]} (", "_CHECKPOINT_METADATA does not match its "
                     f"checksum; epoch {epochs[1]} (", "does not match its checksum. The run does "
                     "not start over on its own, and nothing was deleted", "--overwrite")
  assert "Epoch 1/" not in result.stdout
  after = _tree(workdir)
  assert {k: v for k, v in after.items() if k != "environment.jsonl"} == {
      k: v for k, v in before.items() if k != "environment.jsonl"}


def test_a_save_killed_before_its_checksums_is_never_trusted(tiny_config, tmp_path, caplog):
  """Killed between orbax's commit and the manifest: that checkpoint counts as an unfinished save,
  skipped for the one before; when it was the first, the run starts fresh, as after any kill
  before the first checkpoint."""
  tiny_config.train.epochs = 3
  straight, _ = loop.train_and_evaluate(tiny_config, tmp_path / "straight")
  shutil.copytree(tmp_path / "straight", tmp_path / "run")
  (tmp_path / "run" / "summary.json").unlink()
  (tmp_path / "run" / "checkpoints" / "3" / "sha256.json").unlink()
  with resumes_from(tmp_path / "run", 2):
    resumed, _ = loop.train_and_evaluate(tiny_config, tmp_path / "run")
  assert "epoch 3 in" in caplog.text and "before its checksums were written" in caplog.text
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(x, y)

  # The first checksummed save itself, killed before its manifest (checksums.json names it).
  tiny_config.train.epochs = 1
  first = tmp_path / "first"
  loop.train_and_evaluate(tiny_config, first)
  (first / "summary.json").unlink()
  (first / "checkpoints" / "1" / "sha256.json").unlink()
  with resumes_from(first, 0):
    loop.train_and_evaluate(tiny_config, first)


def test_checkpoints_saved_before_checksums_restore_with_a_note(tiny_config, tmp_path, caplog):
  tiny_config.train.epochs = 3
  straight, _ = loop.train_and_evaluate(tiny_config, tmp_path)
  (tmp_path / "summary.json").unlink()
  (tmp_path / "checkpoints" / "checksums.json").unlink()
  for manifest in (tmp_path / "checkpoints").glob("*/sha256.json"):
    manifest.unlink()
  caplog.set_level("INFO", logger="mnist_jax")
  with resumes_from(tmp_path, 3):
    resumed, _ = loop.train_and_evaluate(tiny_config, tmp_path)
  assert "The checkpoint of epoch 3 in" in caplog.text and "predates checksums" in caplog.text
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------
# Divergence


def test_huge_learning_rate_stops_with_epoch_step_and_keeps_last_good_checkpoint(tmp_path):
  # One step an epoch, so epoch 1's loss is that of the initial parameters: always finite. (At
  # lr 1e6 the loss of this MLP can climb to 1e30 and, its ReLUs dead, come down again; at 1e12
  # it overflows on the third step for every seed.)
  result = run_main("--config=adam_mlp", "--config.data.source=idx",
                    "--config.data.train_subset=32", "--config.train.epochs=5",
                    "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=1e12",
                    "--noreport", f"--workdir={tmp_path}", check=False)
  assert_clear_error(result, 1, "Training diverged", "learning rate is too high",
                      "--config.optimizer.learning_rate=1e+11")
  where = re.search(r"at epoch (\d+)(, step 1 of 1)? \(learning rate 1e\+12\)", result.stderr)
  assert where, result.stderr
  epoch = int(where.group(1))
  assert epoch >= 2 and f"The last good checkpoint (epoch {epoch - 1}) is in" in result.stderr
  state, restored_epoch = restore(tmp_path)
  assert restored_epoch == epoch - 1 and all_finite(state.params)
  assert not (tmp_path / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# Best checkpoint and early stopping


def test_best_epoch_counts_patience_from_the_records():
  history = [{"epoch": 1, "val_loss": 0.50, "val_accuracy": 0.80},
             {"epoch": 2, "val_loss": 0.40, "val_accuracy": 0.80},
             {"epoch": 3, "val_loss": 0.45, "val_accuracy": 0.85},
             {"epoch": 4, "val_loss": 0.41, "val_accuracy": 0.85}]
  best, Best = early_stopping.best_epoch, early_stopping.Best  # pylint: disable=invalid-name
  assert best(history, "val_loss") == Best(epoch=2, value=0.40, waited=2)
  assert best(history, "val_accuracy") == Best(epoch=3, value=0.85, waited=1)
  assert best([{"epoch": 1, "train_loss": 1.0}], "val_loss") is None


def test_early_stopping_restores_best_and_resumes_exactly(tmp_path):
  config = config_lib.load("adam_mlp")
  config.data.source, config.data.train_subset, config.data.validation = "idx", 512, "train_tail"
  # So small a learning rate changes no prediction: val_accuracy never beats epoch 1's.
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e-12
  config.train.epochs, config.train.batch_size, config.train.early_stopping_patience = 10, 64, 2
  config.train.skip_checkpoints_while_saving = False  # the test removes a given epoch's

  state, _ = loop.train_and_evaluate(config, tmp_path)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert (summary["epochs"], summary["stopped_early"], summary["best_epoch"],
          summary["tested_epoch"]) == (3, True, 1, 1)
  (best, _), (last, last_epoch) = restore(tmp_path, "checkpoints_best"), restore(tmp_path)
  assert last_epoch == 3
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(best.params), strict=True):
    np.testing.assert_array_equal(x, y)  # restore_best: the returned state is epoch 1's
  assert not all(np.array_equal(x, y) for x, y in
                 zip(jax.tree.leaves(state.params), jax.tree.leaves(last.params)))

  # Killed after the stopping epoch's save, or one epoch before it: the patience counter comes
  # back from metrics.jsonl, so the resumed run stops exactly where the first one did.
  for removed in ([], [3]):
    (tmp_path / "summary.json").unlink()
    for epoch in removed:
      shutil.rmtree(tmp_path / "checkpoints" / str(epoch))
    with resumes_from(tmp_path, 3 - len(removed)):
      resumed, _ = loop.train_and_evaluate(config, tmp_path)
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2, 3]
    again = json.loads((tmp_path / "summary.json").read_text())
    assert without(again, "train_seconds") == without(summary, "train_seconds")
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(best.params), strict=True):
      np.testing.assert_array_equal(x, y)


def test_a_damaged_best_checkpoint_is_caught_by_its_checksum_wherever_it_is_read(tmp_path, caplog):
  """The loop falls back to the last epoch's parameters (its documented fallback); report and
  predict, which read the tested checkpoint, refuse in one paragraph naming the file."""
  config = config_lib.load("adam_mlp")
  config.data.source, config.data.train_subset, config.data.validation = "idx", 512, "train_tail"
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e-12  # epoch 1 stays the best
  config.train.epochs, config.train.batch_size, config.train.early_stopping_patience = 10, 64, 2
  config.train.skip_checkpoints_while_saving = False  # the test removes a given epoch's
  loop.train_and_evaluate(config, tmp_path)
  assert json.loads((tmp_path / "summary.json").read_text())["tested_epoch"] == 1
  _flip_a_byte(tmp_path / "checkpoints_best" / "1")
  for program, args in (("report", ()), ("predict", ("--index=0",))):
    assert_clear_error(run_program(program, f"--workdir={tmp_path}", *args), 1,
                       f"No usable checkpoint in {tmp_path / 'checkpoints_best'} (epoch 1 (",
                       "does not match its checksum). Restore the damaged files")

  (tmp_path / "summary.json").unlink()  # the run again from its last checkpoint (epoch 3)
  with resumes_from(tmp_path, 3):
    loop.train_and_evaluate(config, tmp_path)
  assert "The best checkpoint (epoch 1) is unreadable: testing the last epoch's" in caplog.text
  assert json.loads((tmp_path / "summary.json").read_text())["tested_epoch"] == 3


def test_resume_is_exact_with_ema_max_norm_and_rbg(tmp_path):
  """The weights' moving average is checkpointed with the state, and rbg keys are derived from
  the seed and epoch like threefry's: a resumed run ends bit-identical, EMA included."""
  config = config_lib.load("adam_mlp")
  config.data.source, config.data.train_subset = "idx", 512
  config.model.input_dropout, config.model.dropout = 0.2, (0.5,)
  config.rng_impl, config.train.ema_decay, config.optimizer.max_norm = "rbg", 0.99, 1.0
  config.train.epochs, config.train.batch_size = 3, 64
  config.train.skip_checkpoints_while_saving = False  # the test removes a given epoch's
  straight, _ = loop.train_and_evaluate(config, tmp_path)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert straight.ema_decay == 0.99 and straight.ema_params

  (tmp_path / "summary.json").unlink()  # killed after epoch 2's save
  shutil.rmtree(tmp_path / "checkpoints" / "3")
  with resumes_from(tmp_path, 2):
    resumed, _ = loop.train_and_evaluate(config, tmp_path)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(x, y)
  again = json.loads((tmp_path / "summary.json").read_text())
  assert without(again, "train_seconds") == without(summary, "train_seconds")


@pytest.mark.slow
def test_adversarial_maxout_selects_by_adversarial_validation_and_resumes_exactly(tmp_path):
  """Goodfellow et al.'s protocol, shrunk: two replicas of a small maxout net, adversarial
  training, early stopping on the validation images' FGSM accuracy (recorded per epoch and
  replica), the test's FGSM accuracy in summary.json; a run killed before its last epoch resumes
  to the same parameters (the momentum ramp's and the schedule's step count included)."""
  config = config_lib.load("adversarial_maxout")
  config.num_seeds, config.model.hidden_sizes, config.model.maxout_pieces = 2, (32, 32), 2
  config.data.source, config.data.train_subset, config.data.validation = "idx", 600, "train_tail"
  config.train.monitor, config.train.early_stopping_patience = "val_adversarial_accuracy", 5
  config.train.epochs, config.optimizer.momentum_ramp_epochs = 3, 2.0
  config.train.batch_size = 50  # 30 steps: enough to learn something
  config.train.checkpoint_every = 1  # the config saves every 10 epochs
  config.train.skip_checkpoints_while_saving = False  # the test removes a given epoch's
  straight, _ = loop.train_and_evaluate(config, tmp_path)
  history = records(tmp_path)
  assert len(history) == 3
  for record in history:
    assert len(record["replicas"]["val_adversarial_accuracy"]) == 2
    assert 0 <= record["val_adversarial_accuracy"] < record["val_accuracy"]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["best_epoch"] == 1 + int(np.argmax([r["val_adversarial_accuracy"]
                                                     for r in history]))
  assert 0 <= summary["test_adversarial_accuracy"] < summary["test_accuracy"]
  each = [r["test_adversarial_accuracy"] for r in summary["replicas"]]
  assert len(each) == 2 and summary["test_adversarial_accuracy"] == pytest.approx(np.mean(each))

  (tmp_path / "summary.json").unlink()  # killed after epoch 2's save
  shutil.rmtree(tmp_path / "checkpoints" / "3")
  with resumes_from(tmp_path, 2):
    resumed, _ = loop.train_and_evaluate(config, tmp_path)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(x, y)


def test_parameters_left_infinite_by_the_last_update_stop_the_run_before_they_are_saved(
    tiny_config, tmp_path):
  """A 1-step epoch's loss is that of the parameters before its update, so it is finite; the
  update at an infinite learning rate is not. Caught in the compiled epoch, named by its step."""
  tiny_config.data.train_subset = tiny_config.train.batch_size
  tiny_config.optimizer.name, tiny_config.optimizer.learning_rate = "sgd", float("inf")
  with pytest.raises(TrainingDiverged) as raised:
    loop.train_and_evaluate(tiny_config, tmp_path)
  assert ("Training diverged: the parameters became NaN or infinite at epoch 1, step 1 of 1 "
          "(learning rate inf)") in str(raised.value)
  assert "No checkpoint had been saved yet." in str(raised.value)
  assert not (tmp_path / "metrics.jsonl").read_text()
  assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


def test_exploding_but_finite_loss_stops_the_run(tmp_path):
  """rmsprop at learning rate 1e6 ends with a loss near 1e11, still finite: stopped like NaN."""
  result = run_main("--config=rmsprop_mlp", "--config.data.source=idx",
                    "--config.data.train_subset=2048", "--config.optimizer.learning_rate=1e6",
                    "--config.train.epochs=2", f"--workdir={tmp_path}", check=False)
  assert_clear_error(result, 1, "Training diverged: the epoch's mean training loss became",
                     "above 10 x log(10) = 23.0", "at epoch 1", "learning rate 1e+06",
                     "--config.optimizer.learning_rate=100000", "No checkpoint had been saved yet")
  assert not (tmp_path / "summary.json").exists() and not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("name", ["adam_mlp", "adam_mlp_784", "adam_mlp_784_dropout",
                                  "rmsprop_mlp", "sigmoid_mlp", "sgd_bn_mlp", "best_mlp",
                                  "adversarial_maxout"])
def test_no_shipped_config_starts_near_the_divergence_limit(name):
  """The rule's margin: every shipped model's untrained loss is about log(10) = 2.3, a tenth of
  the limit (their trained losses, in experiments/RESULTS.md, are lower still)."""
  from conftest import device_data  # pylint: disable=import-outside-toplevel
  from mnist_jax import train  # pylint: disable=import-outside-toplevel
  config = config_lib.load(name)
  config.data.source, config.data.train_subset = "idx", 1000
  dd = device_data(config)
  state = train.create_train_state(jax.random.key(0), config, steps_per_epoch=8)
  loss = train.summarize(train.evaluate(state, dd.images, dd.labels, 1000))["loss"]
  assert loss < 0.3 * loop.DIVERGED_LOSS_FACTOR * np.log(10), loss


# ---------------------------------------------------------------------------------------------
# Disk full and write errors


def _fail_once(monkeypatch, owner, name, when):
  """Make `owner.name` raise ENOSPC the first time `when(*args)` holds; calls pass through after."""
  import errno  # pylint: disable=import-outside-toplevel
  original, state = getattr(owner, name), {"failed": False}

  def failing(*args, **kwargs):
    if not state["failed"] and when(*args):
      state["failed"] = True
      raise OSError(errno.ENOSPC, "No space left on device", "injected")
    return original(*args, **kwargs)
  monkeypatch.setattr(owner, name, failing)
  return state


@pytest.mark.parametrize("site", ["metrics", "checkpoint", "summary"])
def test_a_failed_write_stops_clearly_and_the_same_call_resumes_exactly(straight, tmp_path,
                                                                         monkeypatch, site):
  from mnist_jax import checkpoints  # pylint: disable=import-outside-toplevel
  config = workdir_lib.load_config(straight)  # RUN's
  if site == "metrics":
    failed = _fail_once(monkeypatch, workdir_lib, "append_record", lambda w, r: r["epoch"] == 2)
  elif site == "checkpoint":
    failed = _fail_once(monkeypatch, checkpoints.Checkpointer, "save", lambda c, epoch, s: epoch == 2)
  else:
    failed = _fail_once(monkeypatch, workdir_lib, "write_summary", lambda w, s: True)
  run = tmp_path / "run"
  with pytest.raises(workdir_lib.WriteError, match=r"No space left on device.*checkpoints "
                     r"written before are intact.*Free some space.*run the same command again"):
    loop.train_and_evaluate(config, run)
  assert failed["failed"] and not (run / "summary.json").exists()
  with resumes_from(run, restore(run)[1]):
    loop.train_and_evaluate(config, run)  # space freed: the same call again
  _assert_same_run(run, straight)


@pytest.mark.slow
def test_a_genuinely_full_disk(tmp_path):
  """A 1.2 MB tmpfs fills up at the second checkpoint: one paragraph, no traceback; grown, the same
  command resumes and ends like a run on a roomy disk. Needs mount (root); skipped elsewhere."""
  small = tmp_path / "small"
  small.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(small)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a small tmpfs here")
  try:
    flags = ("--config=adam_mlp", "--config.data.source=idx", "--config.data.train_subset=2000",
             "--config.train.epochs=4", "--noreport")
    result = run_cli(*flags, f"--workdir={small / 'run'}", check=False)
    assert_clear_error(result, 1, "No space left on device", "checkpoints written before are "
                       "intact", "Free some space")
    assert "Exception ignored" not in result.stderr and "raised an exception" not in result.stderr
    subprocess.run(["mount", "-o", "remount,size=20m", str(small)], check=True)
    with resumes_from(small / "run", restore(small / "run")[1]):
      run_cli(*flags, f"--workdir={small / 'run'}")
    run_cli(*flags, f"--workdir={tmp_path / 'roomy'}")
    (state, epoch), (expected, _) = restore(small / "run"), restore(tmp_path / "roomy")
    assert epoch == 4
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
      np.testing.assert_array_equal(x, y)
  finally:
    subprocess.run(["umount", str(small)], check=False)


def test_recomputed_batchnorm_statistics_are_tested_saved_and_read_back(tiny_config, tmp_path):
  """config.train.batchnorm_statistics="recomputed": the tested parameters' statistics over the
  training set replace the running averages in the tested epoch's checkpoint, which the report
  and predict read (load_run); a run stopped before its summary recomputes the same. The summary
  has the validation metrics with them beside metrics.jsonl's with the running averages."""
  from conftest import device_data  # pylint: disable=import-outside-toplevel
  from mnist_jax import data, parallel, train  # pylint: disable=import-outside-toplevel
  tiny_config.model.hidden_batchnorm, tiny_config.model.gaussian_noise = True, 0.3
  tiny_config.train.batchnorm_statistics = "recomputed"
  tiny_config.data.validation = "train_tail"
  state, _ = loop.train_and_evaluate(tiny_config, tmp_path / "run")
  run = workdir_lib.load_run(tmp_path / "run")
  expected = train.population_batch_stats(run.state, device_data(tiny_config).images,
                                          tiny_config.train.batch_size)
  for x, y, z in zip(jax.tree.leaves(run.state.batch_stats), jax.tree.leaves(expected),
                     jax.tree.leaves(state.batch_stats), strict=True):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)
  first = json.loads((tmp_path / "run" / "summary.json").read_text())
  val = parallel.DeviceData.put(data.load(tiny_config.data).val, tiny_config.data.preprocess)
  sums = train.evaluate(state, val.images, val.labels, tiny_config.train.eval_batch_size)
  assert first["recomputed_val_accuracy"] == train.summarize(sums)["accuracy"]
  last_epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  assert first["recomputed_val_loss"] != last_epoch["val_loss"]  # the running averages' figure

  (tmp_path / "run" / "summary.json").unlink()  # stopped after the statistics' save
  with resumes_from(tmp_path / "run", tiny_config.train.epochs):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
  again = workdir_lib.load_run(tmp_path / "run")
  for x, y in zip(jax.tree.leaves(again.state), jax.tree.leaves(run.state), strict=True):
    np.testing.assert_array_equal(x, y)
  second = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert without(second, "train_seconds") == without(first, "train_seconds")

  tiny_config.train.batchnorm_statistics = "running"
  running, _ = loop.train_and_evaluate(tiny_config, tmp_path / "running")
  for x, y in zip(jax.tree.leaves(running.params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(x, y)  # the same training; only the statistics differ
  assert not np.allclose(running.batch_stats["batchnorm_0"]["var"],
                         state.batch_stats["batchnorm_0"]["var"])
  assert "recomputed_val_accuracy" not in json.loads(
      (tmp_path / "running" / "summary.json").read_text())


def test_a_run_that_keeps_the_test_set_out_is_measured_on_validation_as_a_test_would_be(
    tiny_config, tmp_path):
  """config.data.use_test=False: the same training, and summary.json has the validation metrics
  of the tested parameters with the test-time statistics (here recomputed: what a testing run
  records as recomputed_val_) and no test metrics."""
  tiny_config.model.hidden_batchnorm, tiny_config.model.gaussian_noise = True, 0.3
  tiny_config.train.batchnorm_statistics = "recomputed"
  tiny_config.data.validation = "train_tail"
  tested_state, _ = loop.train_and_evaluate(tiny_config, tmp_path / "tested")
  tiny_config.data.use_test = False
  state, _ = loop.train_and_evaluate(tiny_config, tmp_path / "untested")
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(tested_state), strict=True):
    np.testing.assert_array_equal(x, y)
  tested, untested = (json.loads((tmp_path / name / "summary.json").read_text())
                      for name in ("tested", "untested"))
  assert not [k for k in untested if k.startswith(("test_", "recomputed_"))]
  assert (untested["val_loss"], untested["val_accuracy"]) == (
      tested["recomputed_val_loss"], tested["recomputed_val_accuracy"])


@pytest.mark.slow
def test_ladder_amlp_with_recomputed_statistics_resumes_exactly(tmp_path):
  """ladder_amlp shrunk (AMLP combinators, statistics recomputed after training): killed after
  epoch 2's save, the same call ends bit-identical, recomputed statistics and summary included."""
  config = config_lib.load("ladder_amlp")
  config.data.source, config.data.train_subset = "idx", 512
  config.model.hidden_sizes, config.model.denoising_weights = (32, 16), (1000.0, 1.0, 0.01, 0.01)
  config.train.epochs, config.train.batch_size, config.optimizer.decay_epochs = 3, 64, 1
  config.train.checkpoint_every = 1  # the config saves every 10 epochs
  config.train.skip_checkpoints_while_saving = False  # the test removes a given epoch's
  straight, _ = loop.train_and_evaluate(config, tmp_path)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(straight.params["combinator_0"]) == {"hidden_kernel", "hidden_bias", "output_kernel",
                                                  "output_bias"}

  (tmp_path / "summary.json").unlink()
  shutil.rmtree(tmp_path / "checkpoints" / "3")
  with resumes_from(tmp_path, 2):
    resumed, _ = loop.train_and_evaluate(config, tmp_path)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(x, y)
  again = json.loads((tmp_path / "summary.json").read_text())
  assert without(again, "train_seconds") == without(summary, "train_seconds")
