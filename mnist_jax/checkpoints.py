"""Checkpoints of the whole training state with orbax (no pickle: restoring never runs code).

A checkpoint is saved under the number of epochs completed. orbax writes each one to a temporary
`<epoch>.orbax-checkpoint-tmp*` directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact (the leftover is ignored, then deleted). A checkpoint that still
fails to restore (e.g. files deleted by hand) is skipped, with a warning, for an older one.
"""

import logging
import pathlib
import shutil
import sys
import warnings
from typing import Optional

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("mnist_jax")

_ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax saves into <epoch>.orbax-checkpoint-tmp*


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be used for this config."""


class Checkpointer:
  """The last `keep` checkpoints of a run in `directory` (one subdirectory per saved epoch)."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).resolve()
    # A fixed handler keeps the manager in single-item mode even when a step dir is damaged.
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True))

  def save(self, epoch: int, state) -> None:
    """Start saving `state` as the checkpoint of `epoch` (replacing a damaged one of that epoch).

    Returns once the arrays are copied to host memory; files are written in the background
    while training goes on (`wait`, `close` and every read wait for them). The copies are the
    checkpoint's own: the next epoch may reuse (donate) the state's device buffers.
    """
    self.wait()
    if epoch in self._manager.all_steps():
      self._manager.delete(epoch)
    host_copy = jax.tree.map(_host_copy, _state_dict(state))
    self._manager.save(epoch, args=ocp.args.StandardSave(host_copy), force=True)

  def wait(self) -> None:
    """Block until the last save is completely written."""
    self._manager.wait_until_finished()

  def epochs(self) -> list[int]:
    self.wait()
    return sorted(self._manager.all_steps())

  def restore(self, template, epoch: Optional[int] = None) -> tuple[object, int] | None:
    """(state, epoch) from the newest usable checkpoint (or exactly `epoch`); None if there is none.

    `template` is a freshly created state of the same config: it gives the shapes and the
    non-array parts (apply_fn, tx). A checkpoint of a different shape raises CheckpointError
    rather than being skipped: it means the workdir belongs to another config.
    """
    self.wait()
    candidates = [epoch] if epoch is not None else self.epochs()[::-1]
    target = _state_dict(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for candidate in candidates:
      try:
        # Compared before reading any array: a failed orbax read leaves reports behind at exit.
        mismatch = _first_mismatch(self._manager.metadata(candidate).item_metadata, abstract)
        if mismatch is None:
          restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except  # truncated or damaged files
        _hide_leftovers_of_failed_reads()
        mismatch = _first_lines(e, 2).split(". ")[0] if _is_shape_mismatch(e) else None
        if mismatch is None:
          log.warning("Skipping the checkpoint of epoch %d in %s: it is incomplete or damaged "
                      "(%s: %s).", candidate, self.directory, type(e).__name__,
                      _first_lines(e, 1))
          continue
      if mismatch is not None:
        raise CheckpointError(
            f"The checkpoint of epoch {candidate} in {self.directory} was saved by a model or "
            f"optimizer of a different shape than this config builds ({mismatch}). Use a new "
            f"--workdir for this config, or the config that made the checkpoint.")
      restored = {**{k: v for k, v in _UNSAVED.items() if k not in restored}, **restored}
      return flax.serialization.from_state_dict(template, restored), candidate
    return None

  def delete_unfinished_saves(self) -> None:
    """Delete orbax's temporary directories, left by a process killed mid-save.

    For the process that is about to save (readers ignore them, and must not delete the save
    of a run in progress). Done here, synchronously: orbax's own cleanup runs in a thread that a
    short-lived process can outlive.
    """
    for leftover in sorted(self.directory.glob(f"*{_ORBAX_TMP_SUFFIX}*")):
      log.info("Deleting %s, an unfinished save of a stopped run.", leftover)
      shutil.rmtree(leftover, ignore_errors=True)

  def discard_after(self, epoch: int) -> None:
    """Delete checkpoints newer than `epoch`: unreadable ones, or ones a resumed run will redo."""
    for newer in self.epochs():
      if newer > epoch:
        self._manager.delete(newer)

  def close(self) -> None:
    self._manager.close()  # waits for the last save


# Fields left out of a checkpoint while they hold this empty value: a run without a moving
# average of its weights saves exactly what runs saved before that option existed.
_UNSAVED = {"ema_params": {}}


def _host_copy(x):
  """A numpy copy (never a view of a device buffer); of a replicated array, this host's copy."""
  return np.array(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def _state_dict(state) -> dict:
  state_dict = flax.serialization.to_state_dict(state)
  return {k: v for k, v in state_dict.items()
          if not (k in _UNSAVED and isinstance(v, dict) and not v)}


def _first_mismatch(stored, abstract) -> Optional[str]:
  """The first array whose name or shape differs between a checkpoint and the template, or None."""
  def shapes(tree):  # python scalars (the step) have no .shape
    return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ()))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  stored_shapes, wanted_shapes = shapes(getattr(stored, "tree", stored)), shapes(abstract)
  for name in sorted(stored_shapes.keys() | wanted_shapes.keys()):
    stored_shape, wanted_shape = stored_shapes.get(name), wanted_shapes.get(name)
    if stored_shape != wanted_shape:
      return (f"{name}: this config builds "
              f"{wanted_shape if wanted_shape is not None else 'no such array'}, the checkpoint "
              f"holds {stored_shape if stored_shape is not None else 'no such array'}")
  return None


def _is_shape_mismatch(error: Exception) -> bool:
  """orbax's words for arrays or trees that differ from the template (not for damaged files)."""
  text = str(error)
  return isinstance(error, ValueError) and ("not compatible with the stored shape" in text
                                            or "tree structures do not match" in text)


_hiding_leftovers = False


def _hide_leftovers_of_failed_reads() -> None:
  """Silence the reports a failed orbax read leaves behind, which would read as a crash.

  Its pending tensorstore callbacks later hit orbax's closed event loop, and its unawaited
  coroutines and unretrieved task errors are reported when collected (often at exit), each with
  a traceback. Exactly those reports are dropped; everything else is still shown.

  Why process-wide and not scoped to the read: the reports come from the garbage collector and
  orbax's background threads after the failed read has returned, up to interpreter exit, so a
  context manager around the read would already be gone when they arrive. The hooks are installed
  only once a read has failed (never in a run whose checkpoints are sound), and each matches one
  exact message.
  """
  global _hiding_leftovers  # pylint: disable=global-statement
  if _hiding_leftovers:
    return
  _hiding_leftovers = True
  previous_hook = sys.unraisablehook

  def unraisable_hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous_hook(unraisable)

  sys.unraisablehook = unraisable_hook
  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)


def _first_lines(error: Exception, count: int) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()][:count]
  return " ".join(lines)[:160]
