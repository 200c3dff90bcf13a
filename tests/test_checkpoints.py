"""Checkpoints of the whole TrainState: damaged and unfinished saves, old formats, other shapes."""
import shutil

import jax
import numpy as np
import pytest

from conftest import assert_clear_error, run_main, threads_left
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
  (tmp_path / "4.orbax-checkpoint-tmp-1700000001").touch()  # a stray file of that name
  checkpointer.delete_unfinished_saves()  # deletes what it can, never stops the run
  checkpointer.discard_after(1)
  assert checkpointer.epochs() == [1]
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


@pytest.mark.parametrize("hidden_sizes, words", [
    ((32,), "not compatible with the stored shape"),  # arrays of other shapes
    ((32, 32), "tree structures do not match"),  # another number of layers
])
def test_orbax_still_reports_a_shape_mismatch_in_the_words_we_match(tmp_path, monkeypatch,
                                                                    hidden_sizes, words):
  """Restoring compares shapes from the checkpoint's metadata first; orbax's own error for a
  mismatch is the fallback, recognised by its words (checkpoints._is_shape_mismatch) and quoted.
  An orbax upgrade that changes them fails here (the write-failure words are pinned by the
  full-disk test in test_loop.py)."""
  small = config_lib.load("adam_mlp")
  small.model.hidden_sizes = hidden_sizes
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=1)
  checkpointer.save(1, train.create_train_state(jax.random.key(0), small))
  checkpointer.close()
  monkeypatch.setattr(checkpoints, "_first_mismatch", lambda stored, abstract: None)
  template = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=1)
  try:
    with pytest.raises(checkpoints.CheckpointError, match=f"different shape.*{words}"):
      checkpointer.restore(template)
  finally:
    checkpointer.close()


def test_wait_returns_only_once_the_checksums_are_written(tmp_path, monkeypatch):
  """The manifest is written in a background thread; wait() (and everything that reads) joins
  it, however slow the hashing."""
  _slow_digests(monkeypatch)
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=2)
  try:
    checkpointer.save(1, state)
    checkpointer.wait()
    assert (tmp_path / "1" / checkpoints.MANIFEST).is_file()
    assert checkpointer.check(1) is None
  finally:
    checkpointer.close()


def test_busy_while_the_last_save_or_its_checksums_are_written_and_not_after(tmp_path,
                                                                           monkeypatch):
  """What the loop asks before a due save (config.train.skip_checkpoints_while_saving): whether
  the last save is still written, and how long ago it began."""
  import threading  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  hashing = threading.Event()
  digests = checkpoints._digests  # pylint: disable=protected-access
  monkeypatch.setattr(checkpoints, "_digests", lambda d: hashing.wait() and digests(d))
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=2)
  try:
    assert not checkpointer.busy()  # nothing saved yet
    assert checkpointer.seconds_since_save() == float("inf")
    before = time.monotonic()
    checkpointer.save(1, state)
    assert checkpointer.busy()
    since = checkpointer.seconds_since_save()
    assert 0 <= since <= time.monotonic() - before
    time.sleep(0.05)
    assert checkpointer.seconds_since_save() >= since + 0.05
    while checkpointer._manager.is_saving_in_progress():  # pylint: disable=protected-access
      time.sleep(0.01)
    assert checkpointer.busy()  # orbax is done, the checksums are not
    hashing.set()
    checkpointer._hashing.join()  # pylint: disable=protected-access  # finished, not waited for
    assert not checkpointer.busy() and checkpointer.check(1) is None
  finally:
    hashing.set()  # a failed assertion must not leave close() waiting for the hashing forever
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


def _slow_digests(monkeypatch, seconds=0.5):
  """The manifest's hashing made slow, so that a read that does not wait for it would see it
  missing."""
  import time  # pylint: disable=import-outside-toplevel
  digests = checkpoints._digests  # pylint: disable=protected-access
  monkeypatch.setattr(checkpoints, "_digests", lambda d: time.sleep(seconds) or digests(d))


def _failing_digests(monkeypatch, epoch):
  """Writing the manifest of `epoch` fails as a full disk would."""
  import errno  # pylint: disable=import-outside-toplevel
  digests = checkpoints._digests  # pylint: disable=protected-access

  def fail(directory):
    if directory.name == str(epoch):
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return digests(directory)
  monkeypatch.setattr(checkpoints, "_digests", fail)


def test_every_read_waits_for_the_save_in_progress_checksums_included(tmp_path, monkeypatch):
  _slow_digests(monkeypatch)
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  try:
    checkpointer.save(1, state.replace(step=1))
    assert checkpointer.epochs() == [1]
    assert checkpointer.check(1) is None  # its manifest is there: epochs() waited for it
    checkpointer.save(2, state.replace(step=2))
    restored, epoch = checkpointer.restore(state, 2)  # not taken for an unfinished save
    assert epoch == 2 and int(restored.step) == 2
  finally:
    checkpointer.close()


def test_a_failed_save_stops_the_next_save_and_closing_releases_orbax(tmp_path, monkeypatch):
  """A background write that failed is raised by the next call that waits for it (the next
  epoch's save), once; closing then releases orbax's threads without raising it again."""
  import threading  # pylint: disable=import-outside-toplevel
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  threads = set(threading.enumerate())
  _failing_digests(monkeypatch, epoch=1)
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  checkpointer.save(1, state)
  with pytest.raises(OSError, match="No space left"):
    checkpointer.save(2, state)
  checkpointer.close()
  assert threads_left(threads) == []


def test_closing_reports_a_failure_of_the_last_save_and_releases_orbax(tmp_path, monkeypatch):
  import threading  # pylint: disable=import-outside-toplevel
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  threads = set(threading.enumerate())
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  checkpointer.save(1, state)
  checkpointer.close()
  assert threads_left(threads) == []

  _failing_digests(monkeypatch, epoch=2)
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  checkpointer.save(2, state)
  with pytest.raises(OSError, match="No space left"):
    checkpointer.close()  # nothing waited for the save before: close reports it
  assert threads_left(threads) == []


def test_a_process_other_than_the_first_waits_for_orbax_and_writes_no_checksums(
    tmp_path, monkeypatch):
  """On a multi-host job, only process 0 writes checksums; the others still wait for (and
  report a failure of) their part of the save."""
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  monkeypatch.setattr(checkpoints.parallel, "is_primary", lambda: False)
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=2)
  checkpointer.save(1, state)
  checkpointer.wait()
  assert checkpointer.epochs() == [1]
  assert not (tmp_path / checkpoints.SINCE).exists()
  assert not (tmp_path / "1" / checkpoints.MANIFEST).exists()

  def full(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: Failed writing: No space left on device")

  monkeypatch.setattr(checkpointer._manager, "wait_until_finished", full)  # pylint: disable=protected-access
  with pytest.raises(OSError, match="No space left"):
    checkpointer.wait()
  checkpointer.close()


def test_a_checkpoint_from_before_checksums_that_orbax_cannot_read_is_skipped(tmp_path):
  """Without checksums to catch it, a truncated file is found by orbax's read: named, and the
  previous checkpoint restored."""
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  for epoch in (1, 2):
    checkpointer.save(epoch, state.replace(step=epoch))
  checkpointer.close()
  (tmp_path / checkpoints.SINCE).unlink()  # as a run from before checksums left them
  for manifest in tmp_path.glob(f"*/{checkpoints.MANIFEST}"):
    manifest.unlink()
  largest = max((p for p in (tmp_path / "2").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:100])

  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  try:
    restored, epoch = checkpointer.restore(state)
    assert epoch == 1 and int(restored.step) == 1
    assert list(checkpointer.damaged) == [2] and "orbax cannot read it" in checkpointer.damaged[2]
  finally:
    checkpointer.close()


def test_a_checkpoint_keeps_its_values_when_the_next_step_donates_the_state(tmp_path):
  """The save returns before the files are written; the training step that follows donates the
  state's buffers, and the checkpoint must still hold the values it was given."""
  state = train.create_train_state(jax.random.key(0), config_lib.load("adam_mlp"))
  expected = [np.array(leaf) for leaf in jax.tree.leaves(state.params)]
  overwrite = jax.jit(lambda s: s.replace(params=jax.tree.map(lambda x: x * 0 - 1, s.params)),
                      donate_argnums=0)
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=2)
  try:
    checkpointer.save(1, state)
    overwrite(state)
    restored, _ = checkpointer.restore(train.create_train_state(jax.random.key(1),
                                                                config_lib.load("adam_mlp")), 1)
    for got, want in zip(jax.tree.leaves(restored.params), expected, strict=True):
      np.testing.assert_array_equal(got, want)
  finally:
    checkpointer.close()


def test_orbax_words_for_a_shape_mismatch_and_for_anything_else():
  # A damaged file is never taken for another config's checkpoint, whatever orbax raises.
  assert not checkpoints._is_shape_mismatch(ValueError("Unable to read: truncated file"))  # pylint: disable=protected-access
  assert not checkpoints._is_shape_mismatch(  # pylint: disable=protected-access
      RuntimeError("is not compatible with the stored shape"))


def test_write_failures_become_one_oserror_and_a_lost_host_a_lostprocess(tmp_path, monkeypatch):
  """What checkpoints._as_write_failure makes of orbax's and tensorstore's errors."""
  import errno  # pylint: disable=import-outside-toplevel

  from mnist_jax import errors  # pylint: disable=import-outside-toplevel
  as_failure = checkpoints._as_write_failure  # pylint: disable=protected-access
  failure = as_failure(RuntimeError("INTERNAL: Permission denied"), tmp_path)
  assert (failure.errno, failure.filename) == (errno.EACCES, str(tmp_path))
  failure = as_failure(OSError(errno.EIO, "Input/output error"), tmp_path)
  assert (failure.errno, failure.strerror, failure.filename) == (
      errno.EIO, "Input/output error", str(tmp_path))
  failure = as_failure(OSError("the disk went away"), tmp_path)
  assert failure.strerror == "the disk went away"
  assert as_failure(RuntimeError("something else"), tmp_path) is None
  barrier = RuntimeError("DEADLINE_EXCEEDED: Barrier timed out")
  assert as_failure(barrier, tmp_path) is None  # one process: no other host to lose
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(errors.LostProcess, match="stopped responding"):
    as_failure(barrier, tmp_path)
