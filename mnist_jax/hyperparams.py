"""The hyperparameters a sweep may vary inside one compiled program, and their valid ranges.

A swept field reaches the compiled step as data, one value per replica on the vmapped axis (the
optimizer's through `optax.inject_hyperparams`, the model's as its traced fields, the
objective's as traced numbers), so a grid of R points is one program, not R recompilations.
Fields that change shapes or the program itself (sizes, batch size, epochs, activation,
optimizer, schedule) are not here: they take one run per value.

A leaf: defaults (the `config.sweep` groups), validation (the ranges), optim, the models, train,
replicas and the reports read it. It also names a config's fields by their dotted names
(`flatten`), as overrides and sweeps write them.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Range:
  """A field's valid values: low..high, each end open or closed."""
  low: float
  high: float = math.inf
  low_open: bool = False
  high_open: bool = True
  note: str = ""  # what a special value means, e.g. "0 = off"

  def __contains__(self, value) -> bool:
    try:
      v = float(value)
    except (TypeError, ValueError):  # a string or a tuple, from a config file
      return False
    return ((v > self.low if self.low_open else v >= self.low)
            and (v < self.high if self.high_open else v <= self.high))

  def __str__(self) -> str:
    high = "inf)" if self.high == math.inf else f"{self.high:g}{')' if self.high_open else ']'}"
    text = f"{'(' if self.low_open else '['}{self.low:g}, {high}"
    return f"{text} ({self.note})" if self.note else text


_POSITIVE = Range(0.0, low_open=True)
_FRACTION = Range(0.0, 1.0)  # [0, 1)
_OFF_OR_POSITIVE = Range(0.0, note="0 = off")

# "group.field" -> its valid values. Per-layer model fields (dropout, noise_std,
# denoising_weights) take one swept value for every layer.
SWEEPABLE: dict[str, Range] = {
    "optimizer.learning_rate": _POSITIVE,
    "optimizer.b1": _FRACTION,
    "optimizer.b2": _FRACTION,
    "optimizer.eps": _POSITIVE,
    "optimizer.momentum": _FRACTION,
    "optimizer.weight_decay": Range(0.0),
    "optimizer.rho": _FRACTION,
    "optimizer.grad_clip_norm": _OFF_OR_POSITIVE,
    "optimizer.max_norm": _OFF_OR_POSITIVE,
    "model.dropout": Range(0.0, 1.0, note="a rate of 1 drops everything"),
    "model.input_dropout": Range(0.0, 1.0, note="a rate of 1 drops everything"),
    "model.gaussian_noise": _OFF_OR_POSITIVE,
    "model.noise_std": Range(0.0),
    "model.denoising_weights": Range(0.0),
    "train.label_smoothing": _FRACTION,
    "train.vat_epsilon": _OFF_OR_POSITIVE,
    "train.vat_weight": Range(0.0),
    "train.adversarial_epsilon": _OFF_OR_POSITIVE,
    "train.adversarial_alpha": Range(0.0, 1.0, high_open=False),
    "train.ema_decay": Range(0.0, 1.0, note="0 = off"),
}


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}: a config's fields by their override names."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def swept(config) -> dict[str, tuple]:
  """{"group.field": values} of config.sweep's swept fields; {} without a sweep."""
  return {name: tuple(values) for name, values in flatten(config.sweep.to_dict()).items()
          if values}


def in_group(values: dict, group: str) -> dict:
  """{field: value} of the `group.field` entries of a dotted-name dict (e.g. "model")."""
  prefix = f"{group}."
  return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}


def per_layer(current, value, num_hidden: int):
  """A swept `value` for a field whose `current` value may be per layer (a sequence): the value
  for every layer (as many as `current` has, or one per hidden layer where it is empty)."""
  if not isinstance(current, (list, tuple)) or isinstance(value, (list, tuple)):
    return value
  return (value,) * (len(current) or num_hidden)


def active(value) -> bool:
  """Whether a term scaled by `value` is computed: a Python zero leaves it out of the program; a
  swept (traced) value keeps it in, even for the replicas whose value is 0, where it adds 0."""
  return not isinstance(value, (int, float)) or value != 0
