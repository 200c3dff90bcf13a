"""TensorBoard scalars of a run, written at the end of every epoch (tensorboardX's protocol
buffers: no TensorFlow).

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
import socket
import sys
import time
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
    import tensorboardX.proto.event_pb2  # pylint: disable=import-outside-toplevel
    import tensorboardX.proto.summary_pb2  # pylint: disable=import-outside-toplevel
    import tensorboardX.record_writer  # pylint: disable=import-outside-toplevel
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
    import_tensorboardx()
    self._logdir = pathlib.Path(logdir)
    self._names = [replica_name(s) for s in settings] if len(settings) > 1 else [""]
    self._files = {}
    shutil.rmtree(self._logdir, ignore_errors=True)
    for record in history:
      self._add(record)
    self.flush()

  def _add(self, record: dict) -> None:
    per_replica = record.get("replicas", {})
    scalars = {}  # event file's directory -> {tag: value}
    for key, (run, tag) in TAGS.items():
      if key not in record:
        continue
      values = per_replica.get(key, [record[key]] * len(self._names))
      for name, value in zip(self._names, values):
        scalars.setdefault(self._logdir / name / run, {})[tag] = value
    for directory, values in scalars.items():
      if directory not in self._files:
        self._files[directory] = _EventFile(directory)
      self._files[directory].add_scalars(record["epoch"], values)

  def write(self, record: dict) -> None:
    """One epoch's record (metrics.jsonl's), in the files when this returns."""
    self._add(record)
    self.flush()

  def flush(self) -> None:
    for events in self._files.values():
      events.flush()

  def close(self) -> None:
    for events in self._files.values():
      events.close()


class _EventFile:
  """One TensorBoard event file, written in the caller's thread: an epoch's scalars as one Event,
  flushed without fsync. tensorboardX's SummaryWriter (a queue, two threads, an fsync per flush)
  cost several times more an epoch (docs/benchmark.md); a crash loses nothing that metrics.jsonl
  does not rebuild."""

  def __init__(self, directory: pathlib.Path):
    tbx = self._tbx = import_tensorboardx()

    class Records(tbx.record_writer.RecordWriter):  # its TFRecord framing, its flush less fsync
      def flush(self):
        self._writer.flush()

    directory.mkdir(parents=True, exist_ok=True)
    self._records = Records(str(directory / f"events.out.tfevents.{int(time.time())}."
                                            f"{socket.gethostname()}"))
    self._write(tbx.proto.event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def add_scalars(self, step: int, values: dict[str, float]) -> None:
    summary_pb2 = self._tbx.proto.summary_pb2
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)
                                         for tag, value in values.items()])
    self._write(self._tbx.proto.event_pb2.Event(wall_time=time.time(), step=step,
                                                summary=summary))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


def rewrite(logdir: pathlib.Path, settings: Sequence[dict], history: Sequence[dict]) -> None:
  """The event files of a whole run, from its records."""
  Writer(logdir, settings, history).close()
