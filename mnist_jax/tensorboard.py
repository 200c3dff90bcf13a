"""TensorBoard scalars of a run, written at the end of every epoch (tensorboardX: no TensorFlow).

    tensorboard --logdir runs/          # follows every run while it trains

Keras's layout, so TensorBoard overlays the training and validation curves of a tag:
`<workdir>/tensorboard/train` and `/validation`. A run of several replicas (seeds, a sweep) writes
one TensorBoard run per replica, `<workdir>/tensorboard/<replica>/train` and `/validation`, named
by its seed and swept values, so the run selector lists them. The files are rebuilt from
metrics.jsonl when a run starts or resumes and when its report is built, so an epoch trained again
after a resume is never plotted twice.
"""

import pathlib
import shutil
import sys
from typing import Sequence

TAGS = {  # metrics.jsonl key -> (run, tag)
    "train_loss": ("train", "loss"),
    "train_accuracy": ("train", "accuracy"),
    "learning_rate": ("train", "learning_rate"),
    "val_loss": ("validation", "loss"),
    "val_accuracy": ("validation", "accuracy"),
    "val_adversarial_accuracy": ("validation", "adversarial_accuracy"),
}


def import_tensorboardx():
  """tensorboardX imports torch, when installed, only to accept torch tensors (a second or more):
  torch is hidden for the duration of this import; we pass plain floats."""
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    import tensorboardX  # pylint: disable=import-outside-toplevel
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return tensorboardX


def replica_name(setting: dict) -> str:
  """A replica's TensorBoard run: its seed and swept values, e.g.
  "seed=1,optimizer.learning_rate=0.003"."""
  return ",".join(f"{key}={value:g}" for key, value in setting.items())


class Writer:
  """The event files of one run, rebuilt from `history`, then appended to epoch by epoch."""

  def __init__(self, logdir: pathlib.Path, settings: Sequence[dict], history: Sequence[dict] = ()):
    self._summary_writer = import_tensorboardx().SummaryWriter
    self._logdir = pathlib.Path(logdir)
    self._names = [replica_name(s) for s in settings] if len(settings) > 1 else [""]
    self._writers = {}
    shutil.rmtree(self._logdir, ignore_errors=True)
    for record in history:
      self._add(record)
    self.flush()

  def _add(self, record: dict) -> None:
    per_replica = record.get("replicas", {})
    for key, (run, tag) in TAGS.items():
      if key not in record:
        continue
      values = per_replica.get(key, [record[key]] * len(self._names))
      for name, value in zip(self._names, values):
        directory = self._logdir / name / run
        if directory not in self._writers:
          self._writers[directory] = self._summary_writer(logdir=str(directory))
        self._writers[directory].add_scalar(tag, value, global_step=record["epoch"])

  def write(self, record: dict) -> None:
    """One epoch's record (metrics.jsonl's), on disk when this returns."""
    self._add(record)
    self.flush()

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


def rewrite(logdir: pathlib.Path, settings: Sequence[dict], history: Sequence[dict]) -> None:
  """The event files of a whole run, from its records."""
  Writer(logdir, settings, history).close()
