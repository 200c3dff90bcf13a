"""Checkpoints of the whole training state with orbax (no pickle: restoring never runs code).

A checkpoint is saved under the number of epochs completed. orbax writes each one to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoints intact;
a checkpoint that still fails to restore (e.g. files deleted by hand) is skipped for an older one.
"""

import logging
import pathlib
from typing import Optional

import flax.serialization
import jax
import orbax.checkpoint as ocp

log = logging.getLogger("mnist_jax")


class CheckpointError(RuntimeError):
  """A checkpoint that exists but cannot be used for this config."""


class Checkpointer:
  """Latest-N checkpoints of a run in `directory` (one subdirectory per saved epoch)."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).resolve()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True))

  def save(self, epoch: int, state) -> None:
    self._manager.save(epoch, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                       force=True)
    self._manager.wait_until_finished()

  def epochs(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, template, epoch: Optional[int] = None) -> tuple[object, int] | None:
    """(state, epoch) from the newest usable checkpoint (or exactly `epoch`); None if there is none.

    `template` is a freshly created state of the same config: it gives the shapes and the
    non-array parts (apply_fn, tx). A checkpoint of a different model shape is an error.
    """
    candidates = [epoch] if epoch is not None else self.epochs()[::-1]
    target = flax.serialization.to_state_dict(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for candidate in candidates:
      try:
        restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
      except (ValueError, KeyError) as e:
        if _looks_like_shape_mismatch(e):
          raise CheckpointError(
              f"The checkpoint of epoch {candidate} in {self.directory} was saved by a model of "
              f"a different shape than this config builds ({_first_line(e)}). Use a new "
              f"--workdir for this config, or the config that made the checkpoint.") from None
        log.warning("Skipping unreadable checkpoint of epoch %d in %s: %s",
                    candidate, self.directory, _first_line(e))
        continue
      except Exception as e:  # pylint: disable=broad-except  # truncated or damaged files
        log.warning("Skipping unreadable checkpoint of epoch %d in %s: %s",
                    candidate, self.directory, _first_line(e))
        continue
      return flax.serialization.from_state_dict(template, restored), candidate
    return None

  def close(self) -> None:
    self._manager.close()


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _looks_like_shape_mismatch(error: Exception) -> bool:
  text = str(error).lower()
  return "shape" in text or "structure" in text or "tree" in text
