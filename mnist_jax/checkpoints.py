"""Checkpoints of the whole training state with orbax (no pickle: restoring never runs code).

A checkpoint is saved under the number of epochs completed. orbax writes each one to a temporary
`<epoch>.orbax-checkpoint-tmp*` directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact (the leftover is ignored, then deleted).

orbax does not notice a flipped byte, so each checkpoint also records the SHA-256 of its files,
`<epoch>/sha256.json`, written (in a background thread, off the epoch's critical path) once orbax
has committed it; every restore checks them first. A damaged checkpoint (a changed, missing or
truncated file) is skipped, in one line, for an older one. The manifest is written last, so a
process killed between orbax's commit and the manifest leaves a checkpoint that is never trusted:
it counts as an unfinished save. Which epochs must have a manifest is in `checksums.json` (the
first epoch saved with them): checkpoints saved before checksums existed restore with a note.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import threading
import time
import warnings
from typing import Optional

import flax.serialization
import jax
import orbax.checkpoint as ocp

from mnist_jax import parallel, paths
from mnist_jax.errors import CheckpointError, LostProcess

log = logging.getLogger("mnist_jax")

_ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax saves into <epoch>.orbax-checkpoint-tmp*
MANIFEST = "sha256.json"  # in each checkpoint's directory: {relative path: SHA-256} of its files
SINCE = "checksums.json"  # in the checkpoints' directory: {"from_epoch": the first with a manifest}


class Checkpointer:
  """The last `keep` checkpoints of a run in `directory` (one subdirectory per saved epoch)."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).resolve()
    # A fixed handler keeps the manager in single-item mode even when a step dir is damaged.
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True))
    self._failed = False
    self._save_started: Optional[float] = None  # time.monotonic() of the last save's start
    self._hashing: Optional[threading.Thread] = None  # writes the last save's manifest
    self._hash_error: Optional[BaseException] = None
    self.damaged: dict[int, str] = {}  # epoch -> what is wrong, found by the last restore
    _silence_orbax_failure_reports()

  def save(self, epoch: int, state) -> None:
    """Start saving `state` as the checkpoint of `epoch` (replacing a damaged one of that epoch).

    Returns once the arrays are copied to host memory; files are written in the background
    while training goes on (`wait`, `close` and every read wait for them). The copies are the
    checkpoint's own: the next epoch may reuse (donate) the state's device buffers.
    """
    self.wait()
    self._save_started = time.monotonic()
    host_copy = parallel.to_host(_state_dict(state), copy=True)
    with self._writing():
      if epoch in self._manager.all_steps():
        self._manager.delete(epoch)
      if parallel.is_primary() and self._checksummed_from() is None:
        paths.write_atomic(self.directory / SINCE, json.dumps({"from_epoch": epoch}) + "\n")
      self._manager.save(epoch, args=ocp.args.StandardSave(host_copy), force=True)
    if parallel.is_primary():
      self._hashing = threading.Thread(target=self._write_manifest, args=(epoch,), daemon=True)
      self._hashing.start()

  def _write_manifest(self, epoch: int) -> None:
    """Wait for orbax's commit of `epoch`, then record its files' checksums (in a thread)."""
    try:
      self._manager.wait_until_finished()
      directory = self.directory / str(epoch)
      paths.write_atomic(directory / MANIFEST, json.dumps(_digests(directory), indent=0) + "\n")
    except BaseException as e:  # pylint: disable=broad-except  # raised again by wait()
      self._hash_error = e

  def busy(self) -> bool:
    """Whether the last save is still being written (its files or its checksums): a save now
    would first wait for it."""
    return ((self._hashing is not None and self._hashing.is_alive())
            or self._manager.is_saving_in_progress())

  def seconds_since_save(self) -> float:
    """Seconds since this checkpointer's last save began (inf before its first)."""
    if self._save_started is None:
      return float("inf")
    return time.monotonic() - self._save_started

  def wait(self) -> None:
    """Block until the last save is completely written, checksums included; raises OSError if
    it failed."""
    if self._hashing is not None:
      self._hashing.join()
      self._hashing = None
    error, self._hash_error = self._hash_error, None
    with self._writing():
      if error is not None:
        raise error
      self._manager.wait_until_finished()

  def _checksummed_from(self) -> Optional[int]:
    """The first epoch saved with a manifest (checksums.json); None for a directory that has
    none yet (new, or of a run from before checksums)."""
    try:
      return int(json.loads((self.directory / SINCE).read_text())["from_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
      return None

  def check(self, epoch: int) -> Optional[str]:
    """None if the checkpoint of `epoch` matches its checksums (or predates them); else what is
    wrong with it, in a phrase: "unfinished ..." for a save whose manifest was never written."""
    directory = self.directory / str(epoch)
    try:
      manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
      since = self._checksummed_from()
      if since is None or epoch < since:
        log.info("The checkpoint of epoch %d in %s predates checksums: restored unchecked.",
                 epoch, self.directory)
        return None
      return "unfinished: its save stopped before its checksums were written"
    except (OSError, ValueError) as e:
      return f"its checksum file {MANIFEST} is unreadable ({e})"
    actual = _digests(directory)
    for name, digest in sorted(manifest.items()):
      if name not in actual:
        return f"{name} is missing"
      if actual[name] != digest:
        return f"{name} does not match its checksum"
    return None

  @contextlib.contextmanager
  def _writing(self):
    """orbax's write failures (raised here, or by the background save at the next wait) as an
    OSError naming the directory, so the run stops with one paragraph instead of orbax's traces."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      failure = _as_write_failure(e, self.directory)
      if failure is None:
        raise
      self._failed = True
      raise failure from None

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
    self.damaged = {}
    candidates = [epoch] if epoch is not None else self.epochs()[::-1]
    target = _state_dict(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for candidate in candidates:
      if (problem := self.check(candidate)) is not None:
        if not problem.startswith("unfinished"):
          self.damaged[candidate] = problem
        log.warning("Skipping the checkpoint of epoch %d in %s: %s.", candidate, self.directory,
                    problem)
        continue
      try:
        # Compared before reading any array: a failed orbax read leaves reports behind at exit.
        mismatch = _first_mismatch(self._manager.metadata(candidate).item_metadata, abstract)
        if mismatch is None:
          restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except  # truncated or damaged files
        mismatch = _first_lines(e, 2).split(". ")[0] if _is_shape_mismatch(e) else None
        if mismatch is None:
          self.damaged[candidate] = (f"orbax cannot read it ({type(e).__name__}: "
                                     f"{_first_lines(e, 1)})")
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

  def describe_damage(self) -> str:
    """The damaged checkpoints the last restore skipped, for an error paragraph."""
    return "; ".join(f"epoch {epoch} ({self.directory / str(epoch)}): {problem}"
                     for epoch, problem in sorted(self.damaged.items()))

  def close(self) -> None:
    """Wait for the last save, then release orbax's threads. A write failure is raised once: by
    the call that met it (save, wait, epochs, restore) or else here."""
    try:
      if not self._failed:
        self.wait()
    finally:
      failed_before = self._failed
      try:
        with self._writing():
          self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not failed_before:
          raise  # a failure already raised is not raised again


def _digests(directory: pathlib.Path) -> dict[str, str]:
  """{path relative to `directory`: SHA-256} of every file under it but the manifest."""
  out = {}
  for path in sorted(directory.rglob("*")):
    if path.is_file() and path.name != MANIFEST:
      with open(path, "rb") as f:
        out[str(path.relative_to(directory))] = hashlib.file_digest(f, "sha256").hexdigest()
  return out


# Fields left out of a checkpoint while they hold this empty value: a run without a moving
# average of its weights saves exactly what runs saved before that option existed.
_UNSAVED = {"ema_params": {}}


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


_silenced = False


def _silence_orbax_failure_reports() -> None:
  """Drop the reports orbax leaves when a read or a background save fails, which would read as a
  crash; Checkpointer reports each failure itself, as one paragraph (CheckpointError, a skipped
  damaged checkpoint, or the OSError of a failed write).

  What is dropped, and nothing else: orbax's ERROR records on the absl logger (its threads log a
  failed save with tracebacks when it happens), tensorstore callbacks that hit orbax's closed
  event loop (printed through sys.excepthook or sys.unraisablehook), unretrieved task errors and
  unawaited coroutines of a failed read.

  Why process-wide, installed by the first Checkpointer, and not scoped to a call: these reports
  come from orbax's background threads while training goes on, and from the garbage collector up
  to interpreter exit, long after the call that failed has returned.
  """
  global _silenced  # pylint: disable=global-statement
  if _silenced:
    return
  _silenced = True
  logging.getLogger("absl").addFilter(
      lambda record: not ("orbax" in record.pathname and record.levelno >= logging.ERROR))
  is_closed_loop = lambda error: (isinstance(error, RuntimeError)
                                  and str(error) == "Event loop is closed")
  previous_unraisable, previous_excepthook = sys.unraisablehook, sys.excepthook

  def unraisable_hook(unraisable):
    if not is_closed_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  def excepthook(kind, error, trace):
    if not is_closed_loop(error):
      previous_excepthook(kind, error, trace)

  sys.unraisablehook, sys.excepthook = unraisable_hook, excepthook
  logging.getLogger("asyncio").addFilter(
      lambda record: "exception was never retrieved" not in record.getMessage())
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)


# Words of orbax's and tensorstore's write failures -> the errno they stand for.
_WRITE_FAILURES = {"RESOURCE_EXHAUSTED": errno.ENOSPC, "No space left": errno.ENOSPC,
                   "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES,
                   "Failed writing": errno.EIO, "Input/output error": errno.EIO}


def _as_write_failure(error: Exception, directory: pathlib.Path) -> Optional[OSError]:
  """An OSError for a failed checkpoint write (None if `error` is something else). A barrier
  that timed out in a multi-host save is a lost process, not the storage: LostProcess."""
  if "barrier" in str(error).lower() and jax.process_count() > 1:
    raise LostProcess(
        f"Another process of the job stopped responding while the checkpoint in {directory} "
        f"was being written ({_first_lines(error, 1)}). The checkpoints written before are "
        f"intact. Run the same command again on every host, each with its own --process_id: "
        f"the job resumes from the last complete checkpoint.") from None
  if isinstance(error, OSError):
    return OSError(error.errno, error.strerror or str(error), error.filename or str(directory))
  text = str(error)
  for words, code in _WRITE_FAILURES.items():
    if words in text:
      return OSError(code, os.strerror(code), str(directory))
  return None


def _first_lines(error: Exception, count: int) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()][:count]
  return " ".join(lines)[:160]
