"""Checkpoints of the whole TrainState: damaged and unfinished saves, old formats, other shapes."""
import shutil

import jax
import numpy as np
import pytest

from conftest import assert_clear_error, run_main
from mnist_jax import checkpoints, train
from mnist_jax import config as config_lib


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
  result = run_main("--config=adam_mlp", "--config.data.source=idx",
                   "--config.data.train_subset=600", "--noreport", f"--workdir={tmp_path}",
                   check=False)
  assert_clear_error(result, 1, "was saved by a model or optimizer of a different shape",
                     "Use a new --workdir")


def test_orbax_still_reports_a_shape_mismatch_in_the_words_we_match(tmp_path, monkeypatch):
  """Restoring compares shapes from the checkpoint's metadata first; orbax's own error for a
  mismatch is the fallback, recognised by its words (checkpoints._is_shape_mismatch). An orbax
  upgrade that changes them fails here (the write-failure words are pinned by the full-disk test
  in test_loop.py)."""
  small = config_lib.load("adam_mlp")
  small.model.hidden_sizes = (32,)
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=1)
  checkpointer.save(1, train.create_train_state(jax.random.key(0), small))
  checkpointer.close()
  monkeypatch.setattr(checkpoints, "_first_mismatch", lambda stored, abstract: None)
  template = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=1)
  try:
    with pytest.raises(checkpoints.CheckpointError, match="different shape"):
      checkpointer.restore(template)
  finally:
    checkpointer.close()


def test_wait_returns_only_once_the_checksums_are_written(tmp_path, monkeypatch):
  """The manifest is written in a background thread; wait() (and everything that reads) joins
  it, however slow the hashing."""
  import time  # pylint: disable=import-outside-toplevel
  digests = checkpoints._digests  # pylint: disable=protected-access
  monkeypatch.setattr(checkpoints, "_digests", lambda d: time.sleep(0.5) or digests(d))
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=2)
  try:
    checkpointer.save(1, state)
    checkpointer.wait()
    assert (tmp_path / "1" / checkpoints.MANIFEST).is_file()
    assert checkpointer.check(1) is None
  finally:
    checkpointer.close()


def test_a_failed_background_write_is_one_oserror_and_closing_does_not_raise_it_again(
    tmp_path, monkeypatch):
  import errno  # pylint: disable=import-outside-toplevel
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=2)
  checkpointer.save(1, state)
  checkpointer.wait()

  def full(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: Failed writing: No space left on device")

  monkeypatch.setattr(checkpointer._manager, "wait_until_finished", full)  # pylint: disable=protected-access
  with pytest.raises(OSError) as error:
    checkpointer.wait()
  assert error.value.errno == errno.ENOSPC and str(tmp_path) in str(error.value)
  checkpointer.close()  # the failure is reported once, by the wait above
