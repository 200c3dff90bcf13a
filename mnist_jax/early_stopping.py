"""Keras's EarlyStopping, as pure functions of the per-epoch records (metrics.jsonl).

Nothing is kept in the checkpoint: the best epoch and the patience counter are derived from the
records, so a resumed run stops exactly where an uninterrupted one would.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Best:
  """The best epoch so far by the monitored validation metric, and the epochs trained since."""
  epoch: int
  value: float
  waited: int


# config.train.monitor -> +1 if larger is better, -1 if smaller is.
MONITORS = {"val_accuracy": 1.0, "val_loss": -1.0,
            # with train.adversarial_epsilon: accuracy on the validation images' FGSM attacks
            "val_adversarial_accuracy": 1.0}


def best_epoch(history: list[dict], monitor: str) -> Optional[Best]:
  """The best record of `history` by `monitor` (the first of equals); None without validation.

  Derived from the per-epoch records alone, not kept in the checkpoint, so a resumed run
  continues with exactly the patience counter an uninterrupted run has.
  """
  sign = MONITORS[monitor]
  best = None
  for record in history:
    if monitor in record and (best is None or sign * record[monitor] > sign * best[monitor]):
      best = record
  if best is None:
    return None
  return Best(best["epoch"], best[monitor], history[-1]["epoch"] - best["epoch"])


def patience_exhausted(best: Optional[Best], patience: int) -> bool:
  return patience > 0 and best is not None and best.waited >= patience
