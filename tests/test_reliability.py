"""Never lose a run (issue 5): kill and resume, SIGTERM, damaged checkpoints, divergence, early
stopping, and a clear one-paragraph error for every bad input.

The CLI runs use small subsets; each subprocess still costs a few seconds of startup.
"""
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from conftest import REPO, run_cli
from mnist_jax import checkpoints, train
from mnist_jax import config as config_lib

# 8000 training and 2000 validation examples, input dropout (so dropout keys must resume too),
# early stopping armed: about 0.2 s an epoch on a CPU, long enough for a kill to land mid-run.
RUN = ("--config=adam_mlp", "--config.data.source=idx", "--config.data.train_subset=10000",
       "--config.data.validation=train_tail", "--config.model.input_dropout=0.2",
       "--config.train.epochs=6", "--config.train.batch_size=32",
       "--config.train.early_stopping_patience=2", "--noreport")
EPOCHS = 6

# A failed read of a damaged checkpoint leaves reports that the library hides from users
# (checkpoints._hide_leftovers_of_failed_reads), but pytest's own hook catches them first.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# ---------------------------------------------------------------------------------------------
# Helpers


def _start(workdir):
  return subprocess.Popen([sys.executable, "-m", "mnist_jax.main", *RUN, f"--workdir={workdir}"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_first_checkpoint(process, workdir, timeout=120):
  first = workdir / "checkpoints" / "1"
  deadline = time.monotonic() + timeout
  while not first.exists():
    assert process.poll() is None, f"ended before its first checkpoint: {process.communicate()}"
    assert time.monotonic() < deadline, f"no checkpoint after {timeout} s"
    time.sleep(0.005)


def _restore(workdir, subdir="checkpoints", epoch=None):
  """(state, epoch) of a run's newest checkpoint in `subdir` (or exactly `epoch`)."""
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  # Traced, not run: the checkpoint replaces the values, and compiling the init takes seconds.
  template = jax.eval_shape(lambda: train.create_train_state(jax.random.key(0), config))
  checkpointer = checkpoints.Checkpointer(workdir / subdir, keep=1)
  try:
    restored = checkpointer.restore(template, epoch)
  finally:
    checkpointer.close()
  assert restored is not None, f"no usable checkpoint in {workdir / subdir}"
  return restored


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _without(record, *keys):
  return {k: v for k, v in record.items() if k not in keys}


def _assert_same_run(workdir, reference, epochs=EPOCHS):
  """Bit-identical last and best checkpoints (whole state), each epoch recorded once, same
  results."""
  for subdir in ("checkpoints", "checkpoints_best"):
    (state, epoch), (expected, expected_epoch) = (_restore(w, subdir) for w in (workdir, reference))
    assert epoch == expected_epoch
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
      np.testing.assert_array_equal(x, y)
  records = _records(workdir)
  assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
  assert ([_without(r, "seconds") for r in records]
          == [_without(r, "seconds") for r in _records(reference)])
  summary, expected = (json.loads((w / "summary.json").read_text()) for w in (workdir, reference))
  assert _without(summary, "train_seconds") == _without(expected, "train_seconds")


def _assert_clear_error(result, code, *phrases):
  """Exit `code`, each phrase in the message, and no traceback."""
  assert result.returncode == code, result.stdout + result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  for phrase in phrases:
    assert phrase in result.stderr, result.stderr


def _all_finite(tree):
  return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The workdir of an uninterrupted run of RUN."""
  workdir = tmp_path_factory.mktemp("straight")
  run_cli(*RUN, f"--workdir={workdir}")
  return workdir


# ---------------------------------------------------------------------------------------------
# Interruption and resume


def test_sigkill_then_resume_equals_uninterrupted(straight, tmp_path):
  workdir = tmp_path / "run"
  process = _start(workdir)
  _wait_for_first_checkpoint(process, workdir)
  process.kill()
  process.communicate()
  assert process.returncode == -signal.SIGKILL
  assert not (workdir / "summary.json").exists(), "the run finished before the kill landed"

  result = run_cli(*RUN, f"--workdir={workdir}")  # the same command resumes
  assert "Resuming from the checkpoint after epoch" in result.stdout
  _assert_same_run(workdir, straight)


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
  assert _restore(workdir)[1] == int(stopped.group(1))  # the epoch it stopped after is saved

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

  result = run_cli(*RUN, f"--workdir={workdir}")
  assert f"Skipping the checkpoint of epoch {EPOCHS} in" in result.stdout
  assert f"Resuming from the checkpoint after epoch {EPOCHS - 1}" in result.stdout
  assert "Traceback" not in result.stderr, result.stderr
  assert not leftover.exists()
  _assert_same_run(workdir, straight)


def test_checkpointer_skips_damaged_and_ignores_unfinished_saves(tmp_path, caplog):
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  for epoch in (1, 2):
    checkpointer.save(epoch, state.replace(step=epoch))
  checkpointer.close()
  shutil.rmtree(tmp_path / "2" / "default")  # files deleted by hand
  leftover = tmp_path / "3.orbax-checkpoint-tmp-1700000000"  # a save killed midway
  leftover.mkdir()

  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  assert checkpointer.epochs() == [1, 2]  # the leftover is no checkpoint
  restored, epoch = checkpointer.restore(state)
  assert epoch == 1 and int(restored.step) == 1
  assert "Skipping the checkpoint of epoch 2" in caplog.text
  checkpointer.delete_unfinished_saves()
  checkpointer.discard_after(1)
  checkpointer.save(2, state.replace(step=2))
  assert not leftover.exists() and checkpointer.restore(state)[1] == 2
  checkpointer.close()


def test_history_drops_later_epochs_and_a_line_cut_by_a_kill(tmp_path):
  lines = [json.dumps({"epoch": e, "train_loss": 1.0 / e}) for e in (1, 2, 3)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 4, "tra')
  assert [r["epoch"] for r in train._read_history(tmp_path, 2)] == [1, 2]  # pylint: disable=protected-access
  assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:2]) + "\n"


# ---------------------------------------------------------------------------------------------
# Divergence


def test_huge_learning_rate_stops_with_epoch_step_and_keeps_last_good_checkpoint(tmp_path):
  # One step an epoch, so epoch 1's loss is that of the initial parameters: always finite. (At
  # lr 1e6 the loss of this MLP can climb to 1e30 and, its ReLUs dead, come down again; at 1e12
  # it overflows on the third step for every seed.)
  result = run_cli("--config=adam_mlp", "--config.data.source=idx", "--config.data.train_subset=32",
                   "--config.train.epochs=5", "--config.optimizer.name=sgd",
                   "--config.optimizer.learning_rate=1e12", "--noreport", f"--workdir={tmp_path}",
                   check=False)
  _assert_clear_error(result, 1, "Training diverged", "learning rate is too high",
                      "--config.optimizer.learning_rate=1e+11")
  where = re.search(r"at epoch (\d+), step 1 of 1 \(learning rate 1e\+12\)", result.stderr)
  assert where, result.stderr
  epoch = int(where.group(1))
  assert epoch >= 2 and f"The last good checkpoint (epoch {epoch - 1}) is in" in result.stderr
  state, restored_epoch = _restore(tmp_path)
  assert restored_epoch == epoch - 1 and _all_finite(state.params)
  assert not (tmp_path / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# Best checkpoint and early stopping


def test_best_epoch_counts_patience_from_the_records():
  history = [{"epoch": 1, "val_loss": 0.50, "val_accuracy": 0.80},
             {"epoch": 2, "val_loss": 0.40, "val_accuracy": 0.80},
             {"epoch": 3, "val_loss": 0.45, "val_accuracy": 0.85},
             {"epoch": 4, "val_loss": 0.41, "val_accuracy": 0.85}]
  assert train.best_epoch(history, "val_loss") == train.Best(epoch=2, value=0.40, waited=2)
  assert train.best_epoch(history, "val_accuracy") == train.Best(epoch=3, value=0.85, waited=1)
  assert train.best_epoch([{"epoch": 1, "train_loss": 1.0}], "val_loss") is None


def test_early_stopping_restores_best_and_resumes_exactly(tmp_path):
  config = config_lib.load("adam_mlp")
  config.data.source, config.data.train_subset, config.data.validation = "idx", 512, "train_tail"
  # So small a learning rate changes no prediction: val_accuracy never beats epoch 1's.
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e-12
  config.train.epochs, config.train.batch_size, config.train.early_stopping_patience = 10, 64, 2

  state, _ = train.train_and_evaluate(config, tmp_path)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert (summary["epochs"], summary["stopped_early"], summary["best_epoch"],
          summary["tested_epoch"]) == (3, True, 1, 1)
  (best, _), (last, last_epoch) = _restore(tmp_path, "checkpoints_best"), _restore(tmp_path)
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
    resumed, _ = train.train_and_evaluate(config, tmp_path)
    assert [r["epoch"] for r in _records(tmp_path)] == [1, 2, 3]
    again = json.loads((tmp_path / "summary.json").read_text())
    assert _without(again, "train_seconds") == _without(summary, "train_seconds")
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(best.params), strict=True):
      np.testing.assert_array_equal(x, y)


def test_resume_is_exact_with_ema_max_norm_and_rbg(tmp_path):
  """The weights' moving average is checkpointed with the state, and rbg keys are derived from
  the seed and epoch like threefry's: a resumed run ends bit-identical, EMA included."""
  config = config_lib.load("adam_mlp")
  config.data.source, config.data.train_subset = "idx", 512
  config.model.input_dropout, config.model.dropout = 0.2, (0.5,)
  config.rng_impl, config.train.ema_decay, config.optimizer.max_norm = "rbg", 0.99, 1.0
  config.train.epochs, config.train.batch_size = 3, 64
  straight, _ = train.train_and_evaluate(config, tmp_path)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert straight.ema_decay == 0.99 and straight.ema_params

  (tmp_path / "summary.json").unlink()  # killed after epoch 2's save
  shutil.rmtree(tmp_path / "checkpoints" / "3")
  resumed, _ = train.train_and_evaluate(config, tmp_path)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(x, y)
  again = json.loads((tmp_path / "summary.json").read_text())
  assert _without(again, "train_seconds") == _without(summary, "train_seconds")


def test_checkpoints_without_ema_are_those_of_before_the_option(tmp_path):
  """A state without a weight average saves no `ema_params`, and checkpoints saved before the
  option existed (no such field) still restore: old runs resume and report as before."""
  import flax
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  old = flax.serialization.to_state_dict(state)
  old.pop("ema_params")
  assert checkpoints._state_dict(state).keys() == old.keys()  # pylint: disable=protected-access
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=2)
  try:
    checkpointer.save(1, old)
    checkpointer.save(2, state)
    for epoch in (1, 2):
      restored, _ = checkpointer.restore(state, epoch)
      assert restored.ema_params == {}
      for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(x, y)
  finally:
    checkpointer.close()


# ---------------------------------------------------------------------------------------------
# Bad input: one clear paragraph each, before any training


@pytest.mark.parametrize("field,value,message", [
    ("train.batch_size", -1, "batch_size=-1 must be positive"),
    ("optimizer.learning_rate", 0.0, "learning_rate=0.0 must be positive"),
    ("train.epochs", 0, "epochs=0 must be at least 1"),
    ("model.input_dropout", -0.1, r"must each be in \[0, 1\)"),
    ("model.input_dropout", 1.0, r"must each be in \[0, 1\)"),
    ("data.validation_fraction", 0.0, r"validation_fraction=0.0 must be in \(0, 1\)"),
    ("train.early_stopping_patience", -1, "early_stopping_patience=-1 must be >= 0"),
    ("train.early_stopping_patience", 3, "early_stopping_patience=3 needs validation data"),
    ("train.monitor", "val_acc", "monitor='val_acc' is not one of val_accuracy, val_loss"),
])
def test_out_of_range_values_are_named(field, value, message):
  config = config_lib.load("adam_mlp")  # no validation
  group, key = field.split(".")
  config[group][key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_cli_names_every_out_of_range_value_at_once(tmp_path):
  result = run_cli("--config=adam_mlp", "--config.train.batch_size=0",
                   "--config.optimizer.learning_rate=0", "--config.train.epochs=0",
                   "--config.model.input_dropout=1.0", "--config.data.validation_fraction=1.5",
                   f"--workdir={tmp_path}", check=False)
  _assert_clear_error(result, 2, "ERROR: Invalid config", "batch_size=0 must be positive",
                      "learning_rate=0.0 must be positive", "epochs=0 must be at least 1",
                      "must each be in [0, 1)", "validation_fraction=1.5 must be in (0, 1)")
  assert not any(tmp_path.iterdir())


def test_cli_batch_larger_than_training_set(tmp_path):
  result = run_cli("--config=adam_mlp", "--config.data.source=idx",
                   "--config.data.train_subset=100", "--config.train.batch_size=128",
                   f"--workdir={tmp_path}", check=False)
  _assert_clear_error(result, 1, "batch_size=128 is larger than the training set (100 examples)")
  assert not (tmp_path / "config.json").exists()  # so the corrected command is not refused


def test_cli_corrupted_data_file(tmp_path):
  idx_dir = tmp_path / "mnist"
  shutil.copytree(REPO / "data" / "mnist", idx_dir)
  labels = idx_dir / "t10k-labels-idx1-ubyte.gz"
  labels.write_bytes(labels.read_bytes()[:-100])  # truncated
  result = run_cli("--config=adam_mlp", "--config.data.source=idx",
                   f"--config.data.idx_dir={idx_dir}", f"--workdir={tmp_path / 'run'}",
                   check=False)
  _assert_clear_error(result, 1, f"Checksum mismatch for {labels}",
                      "The file is corrupt or truncated", "Replace it with the official file")


def test_cli_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"  # a directory cannot be made under a file, even by root
  blocker.write_text("")
  result = run_cli("--config=adam_mlp", "--config.data.source=idx",
                   f"--workdir={blocker / 'run'}", check=False)
  _assert_clear_error(result, 1, f"Cannot write to workdir {blocker / 'run'}",
                      "Choose a writable --workdir")


def test_checkpoint_of_a_different_model_shape(tmp_path):
  small = config_lib.load("adam_mlp")
  small.model.hidden_sizes = (32,)
  checkpointer = checkpoints.Checkpointer(tmp_path / "checkpoints", keep=2)
  checkpointer.save(1, train.create_train_state(jax.random.key(0), small))
  checkpointer.close()

  template = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path / "checkpoints", keep=2)
  # orbax names the first mismatching array it reads: the bias (32,), a kernel (784, 32), ...
  with pytest.raises(checkpoints.CheckpointError, match=r"different shape.*\b32\b"):
    checkpointer.restore(template)
  checkpointer.close()

  # The CLI reaches it when the workdir has no config.json to refuse it by.
  result = run_cli("--config=adam_mlp", "--config.data.source=idx",
                   "--config.data.train_subset=600", "--noreport", f"--workdir={tmp_path}",
                   check=False)
  _assert_clear_error(result, 1, "was saved by a model or optimizer of a different shape",
                      "Use a new --workdir")
