"""A sweep's results: one row per grid point (mean +- std over its seeds), the point chosen on
validation, and a figure per swept field.

A sweep is one vmapped run (`config.sweep`: its replicas are the trials) or several runs that
differ in any fields (a shell loop over hidden sizes, say): `report` shows the first,
`aggregate` the second, from the same `Trial`s. The point is chosen by the mean of the monitored
validation metric (config.train.monitor), never by the test metrics, which are shown beside it:
without a validation split there is nothing to choose by, and `best` says so.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from mnist_jax import early_stopping, figures, hyperparams

# The columns of the table, in order: validation (at the tested epoch), then test.
METRICS = ("val_accuracy", "val_loss", "val_adversarial_accuracy", "test_accuracy", "test_loss",
           "test_adversarial_accuracy")


@dataclasses.dataclass(frozen=True)
class Trial:
  """One trained model: its point (swept field -> value), seed, and final metrics."""
  point: dict
  seed: int
  metrics: dict  # names of METRICS -> value


def trials_of_run(config, summary: dict, history: Sequence[dict], point: Optional[dict] = None):
  """The trials of one finished run: its replicas, each at the run's `point` (fields a shell loop
  varied) plus its own swept values; validation metrics from the tested epoch's record, or from
  summary.json where a run without the test set measured them at its end."""
  tested = summary.get("tested_epoch", summary.get("epochs"))
  record = next((r for r in history if r["epoch"] == tested), history[-1] if history else {})
  replicas = summary.get("replicas") or [{"seed": config.seed, **summary}]
  trials = []
  for k, replica in enumerate(replicas):
    metrics = {m: replica[m] for m in METRICS if m in replica}
    for m in METRICS:
      if m.startswith("val_") and m in record and m not in metrics:
        metrics[m] = record.get("replicas", {}).get(m, [record[m]] * len(replicas))[k]
    own = {name: replica[name] for name in replica if name in hyperparams.SWEEPABLE}
    trials.append(Trial({**(point or {}), **own}, replica["seed"], metrics))
  return trials


@dataclasses.dataclass(frozen=True)
class Point:
  """A grid point's trials, summarised: mean and std over its seeds of each metric."""
  point: dict
  seeds: list
  mean: dict
  std: dict


def points(trials: Sequence[Trial]) -> list[Point]:
  """The trials grouped by point, in the order the points first appear."""
  groups = {}
  for trial in trials:
    groups.setdefault(_key(trial.point), []).append(trial)
  out = []
  for group in groups.values():
    names = [m for m in METRICS if all(m in t.metrics for t in group)]
    values = {m: [t.metrics[m] for t in group] for m in names}
    out.append(Point(group[0].point, [t.seed for t in group],
                     {m: float(np.mean(v)) for m, v in values.items()},
                     {m: float(np.std(v)) for m, v in values.items()}))
  return out


def _key(point: dict) -> tuple:
  return tuple((name, repr(value)) for name, value in sorted(point.items()))


def best(grid: Sequence[Point], monitor: str) -> Optional[Point]:
  """The point with the best mean validation `monitor`; None without validation metrics."""
  if not grid or any(monitor not in p.mean for p in grid):
    return None
  return max(grid, key=lambda p: early_stopping.MONITORS[monitor] * p.mean[monitor])


def table(grid: Sequence[Point], chosen: Optional[Point]) -> tuple[list[str], list[list[str]]]:
  """(header, rows): the swept fields, the number of seeds, mean +- std of each metric; the
  chosen point's row in bold."""
  fields = list(grid[0].point) if grid else []
  metrics = [m for m in METRICS if grid and all(m in p.mean for p in grid)]
  header = fields + ["seeds"] + [m.replace("_", " ") for m in metrics]
  rows = []
  for p in grid:
    row = [format_value(p.point[f]) for f in fields] + [str(len(p.seeds))]
    row += [f"{p.mean[m]:.4f} +- {p.std[m]:.4f}" for m in metrics]
    rows.append([f"**{c}**" for c in row] if p is chosen else row)
  return header, rows


def format_value(value) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(map(format_value, value)) or "()"
  return f"{value:g}" if isinstance(value, float) else str(value)


def figure(grid: Sequence[Point], field: str, monitor: str):
  """`monitor` (mean over seeds, std as error bars) against the values of `field`, one line per
  value of another swept field (averaged over any others); a log axis where the values span
  a decade or more; categories (e.g. hidden sizes) in order where they are not numbers."""
  line_field = next((f for f in grid[0].point if f != field), None)
  values = list(dict.fromkeys(_hashable(p.point[field]) for p in grid))
  numeric = all(isinstance(v, (int, float)) for v in values)
  lines = {}
  for line in dict.fromkeys(_hashable(p.point.get(line_field)) for p in grid):
    xs, ys, errs = [], [], []
    for i, value in enumerate(values):
      members = [p for p in grid if _hashable(p.point[field]) == value
                 and _hashable(p.point.get(line_field)) == line]
      if members:
        xs.append(value if numeric else i)
        ys.append(float(np.mean([p.mean[monitor] for p in members])))
        errs.append(float(np.mean([p.std[monitor] for p in members])))
    lines[None if line_field is None else f"{line_field}={format_value(line)}"] = (xs, ys, errs)
  log_x = numeric and min(values) > 0 and max(values) >= 10 * min(values)  # a decade or more
  return figures.sweep_figure(lines, xlabel=field, ylabel=f"{monitor} (mean +- std over seeds)",
                              log_x=log_x,
                              categories=None if numeric else [format_value(v) for v in values])


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


def point_config(config, point: dict):
  """`config` as the single run of `point`: its swept fields set to the point's values, no sweep,
  one seed."""
  config = config.copy_and_resolve_references()
  config.unlock()
  for name, value in point.items():
    group, field = name.rsplit(".", 1) if "." in name else ("", name)
    node = config[group] if group else config
    node[field] = hyperparams.per_layer(node[field], value, len(config.model.hidden_sizes))
  for name in hyperparams.flatten(config.sweep.to_dict()):
    group, field = name.split(".")
    config.sweep[group][field] = ()
  config.num_seeds = 1
  return config
