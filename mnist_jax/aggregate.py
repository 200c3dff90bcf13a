"""The seeds of one experiment as one result (mean +- std of their test metrics), or a sweep's runs
as one table of its points. Runs that keep the test set out (config.data.use_test=False) give
their validation metrics instead.

    python -m mnist_jax.aggregate runs/ladder-seed0 runs/ladder-seed1 runs/ladder-seed2
    python -m mnist_jax.aggregate runs/adam_mlp-hidden_sizes-*     # a shell loop's sweep

Seeds run one per workdir (`--config.num_seeds=1 --config.seed=K`) and the replicas of a vmapped
run (`--config.num_seeds=3`) count alike, one row per seed: replica k of a vmapped run is the run
of seed config.seed + k. Every number is read from the runs' summary.json and metrics.jsonl (the
test set was used once, by each run); nothing is evaluated again. The runs must be finished. Runs
whose configs share everything up to the seed are one experiment: the Markdown table that
experiments/RESULTS.md holds, and the commands that reproduce it. Runs that differ in a few fields
(a shell loop over values of any field, hidden sizes say), or a vmapped sweep, are a sweep: the
table of `report.sweep_section`, one row per point, the point chosen on validation.
"""

import dataclasses
import pathlib
from typing import Sequence

import numpy as np

from mnist_jax import cli, data, hyperparams, report, sweeps
from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import AggregateError

SEED_FIELDS = ("seed", "num_seeds")  # all that may differ between the runs of one experiment
# summary.json's per-seed final metrics, after the split's prefix (test_, or val_ for a run that
# keeps the test set out), with their column names after the split's name.
METRICS = {"accuracy": "accuracy", "loss": "loss",
           "adversarial_accuracy": "accuracy under FGSM attacks"}


@dataclasses.dataclass(frozen=True)
class SeedResult:
  """One seed's final numbers, as its run recorded them."""
  seed: int
  workdir: pathlib.Path
  metrics: dict  # a subset of METRICS' keys -> value (without the split's prefix)
  tested_epoch: int
  train_seconds: float  # the run's; the replicas of a vmapped run share it
  median_epoch_seconds: float


@dataclasses.dataclass(frozen=True)
class Aggregate:
  commands: list[str]  # one per run: what reproduces it
  seeds: list[SeedResult]
  split: str  # what the metrics were measured on: "test", or "val" (data.final_split)

  @property
  def metrics(self) -> list[str]:
    """The METRICS every seed has (an older summary.json may lack one)."""
    return [m for m in METRICS if all(m in s.metrics for s in self.seeds)]

  def mean_std(self, metric: str) -> tuple[float, float]:
    """Mean and (population) standard deviation over the seeds, as summary.json's replicas."""
    values = [s.metrics[metric] for s in self.seeds]
    return float(np.mean(values)), float(np.std(values))


def _seed_results(workdir: pathlib.Path, config) -> list[SeedResult]:
  summary = workdir_lib.read_summary(workdir)
  history = workdir_lib.read_metrics(workdir)
  if not summary:
    raise AggregateError(
        f"{workdir} has not finished (it has no {workdir_lib.SUMMARY}; {len(history)} of its "
        f"{config.train.epochs} epochs are recorded), so it has no result yet. Run its "
        f"command again to finish it: {report.reproduce_command(config, workdir)}")
  if swept := hyperparams.swept(config):
    raise AggregateError(
        f"{workdir} is a sweep (of {', '.join(swept)}): its replicas are different "
        f"experiments, not seeds of one. `python -m mnist_jax.aggregate` of it alone (or with the "
        f"other runs of the sweep) tabulates its points, as its report.md does.")
  shared = dict(workdir=workdir, tested_epoch=summary.get("tested_epoch", summary["epochs"]),
                train_seconds=summary["train_seconds"],
                median_epoch_seconds=float(np.median([r["seconds"] for r in history])))
  per_seed = summary.get("replicas", [{"seed": config.seed, **summary}])
  prefix = data.final_split(config.data) + "_"
  return [SeedResult(seed=r["seed"], metrics={m: r[prefix + m] for m in METRICS if prefix + m in r},
                     **shared) for r in per_seed]


def _differences(a: dict, b: dict, shown: int = 4) -> str:
  """The fields two flattened configs differ in besides the seed, the first `shown` named; ""."""
  keys = sorted((set(a) | set(b)) - set(SEED_FIELDS))
  fields = [f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in keys if a.get(k) != b.get(k)]
  more = f" and {len(fields) - shown} more fields" if len(fields) > shown else ""
  return ", ".join(fields[:shown]) + more


def aggregate(workdirs: Sequence) -> Aggregate:
  """The seeds of the finished runs in `workdirs`, checked to be one experiment's."""
  if not workdirs:
    raise AggregateError("No workdirs given: name the runs of one config, e.g. python -m "
                         "mnist_jax.aggregate runs/ladder-seed0 runs/ladder-seed1")
  first, seeds, commands = None, [], []  # first: the first run's (workdir, flattened config)
  for workdir in map(pathlib.Path, workdirs):
    config = workdir_lib.load_config(workdir)
    flat = config_lib.flatten(config.to_dict())
    if first is None:
      first = (workdir, flat)
    elif differences := _differences(first[1], flat):
      raise AggregateError(
          f"{first[0]} and {workdir} are not seeds of one experiment: their configs differ in "
          f"{differences}. Aggregate runs whose configs differ only in "
          f"{' and '.join(SEED_FIELDS)}.")
    for result in _seed_results(workdir, config):
      if twin := next((s for s in seeds if s.seed == result.seed), None):
        raise AggregateError(
            f"Seed {result.seed} is in both {twin.workdir} and {workdir}: it would count "
            f"twice in the mean and the spread. Give each seed's run once.")
      seeds.append(result)
    commands.append(report.reproduce_command(config, workdir))
  return Aggregate(commands, seeds, data.final_split(config.data))


def _percent(accuracy: float) -> str:
  return f"{100 * (1 - accuracy):.2f}%"


def markdown(result: Aggregate) -> str:
  """The seeds' table (a row each, then mean +- std) and the commands, as RESULTS.md has them."""
  metrics, split = result.metrics, data.SPLIT_NAMES[result.split]
  header = ["seed", "workdir", f"{split} error", *(f"{split} {METRICS[m]}" for m in metrics),
            "tested epoch", "training seconds (run)", "median seconds an epoch"]
  rows = [[s.seed, f"`{s.workdir}`", _percent(s.metrics["accuracy"]),
           *(f"{s.metrics[m]:.4f}" for m in metrics), s.tested_epoch, f"{s.train_seconds:,.0f}",
           f"{s.median_epoch_seconds:.1f}"] for s in sorted(result.seeds, key=lambda s: s.seed)]
  accuracy, accuracy_std = result.mean_std("accuracy")
  error = f"{_percent(accuracy)} +- {100 * accuracy_std:.2f}"
  mean_row = ["**mean +- std**", "", f"**{error}**"]
  for m in metrics:
    mean, std = result.mean_std(m)
    mean_row.append(f"{mean:.5f} +- {std:.5f}")
  rows.append(mean_row + ["", "", ""])
  return "\n".join([
      f"{len(result.seeds)} seed{'s' * (len(result.seeds) > 1)}, {split} error {error} (mean +- std; "
      + ("each seed's test set used once, by its run):" if result.split == "test" else
         "the runs kept the test set out):"),
      "",
      report.markdown_table(header, rows),
      "",
      "Reproduced by:",
      "",
      "```bash",
      *result.commands,
      "```",
  ])


# A sweep varies a few fields; runs that differ in more are different experiments.
MAX_VARIED_FIELDS = 3


def _varied_fields(configs: Sequence[dict]) -> list[str]:
  """The fields (besides the seed) whose values differ between flattened configs."""
  keys = sorted(set().union(*configs) - set(SEED_FIELDS))
  return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def is_sweep(workdirs: Sequence) -> bool:
  """Whether the runs are a sweep: a vmapped one, or runs that differ in a few fields."""
  configs = [workdir_lib.load_config(pathlib.Path(w)) for w in workdirs]
  varied = _varied_fields([config_lib.flatten(c.to_dict()) for c in configs])
  return any(hyperparams.swept(c) for c in configs) or 0 < len(varied) <= MAX_VARIED_FIELDS


def sweep_markdown(workdirs: Sequence) -> str:
  """The sweep's table (a row per point, mean +- std over its seeds), the point chosen on
  validation, and the commands that reproduce each run."""
  workdirs = [pathlib.Path(w) for w in workdirs]
  configs = [workdir_lib.load_config(w) for w in workdirs]
  flats = [config_lib.flatten(c.to_dict()) for c in configs]
  varied = _varied_fields(flats)
  trials = []
  for workdir, config, flat in zip(workdirs, configs, flats):
    summary = workdir_lib.read_summary(workdir)
    if not summary:
      raise AggregateError(f"{workdir} has not finished (it has no {workdir_lib.SUMMARY}): run "
                           f"its command again to finish it: "
                           f"{report.reproduce_command(config, workdir)}")
    point = {f: flat.get(f) for f in varied if not f.startswith("sweep.")}
    trials += sweeps.trials_of_run(config, summary, workdir_lib.read_metrics(workdir), point)
  points = sweeps.points(trials)
  for p in points:
    if len(set(p.seeds)) < len(p.seeds):
      raise AggregateError(f"A seed appears twice at the point {p.point}: it would count twice "
                           f"in the mean and the spread. Give each seed's run once.")
  monitor = configs[0].train.monitor
  return "\n".join([
      f"{len(trials)} models at {len(points)} points, {len(workdirs)} run(s):", "",
      *report.sweep_section(trials, configs[0], workdirs[0].parent / "sweep", monitor),
      "Reproduced by:", "", "```bash",
      *(report.reproduce_command(c, w) for c, w in zip(configs, workdirs)), "```"])


def main(workdirs: list[str]) -> int:
  print(sweep_markdown(workdirs) if workdirs and is_sweep(workdirs)
        else markdown(aggregate(workdirs)))
  return 0


def run(argv: Sequence[str]) -> int:
  """The program, in this process: `run(["aggregate", "runs/a", "runs/b"])` -> exit code."""
  return cli.run(main, argv)


if __name__ == "__main__":
  cli.start(main)
