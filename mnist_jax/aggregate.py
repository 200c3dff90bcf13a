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
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from mnist_jax import cli, data, hyperparams, paths, report, sweeps
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
  workdir: Optional[pathlib.Path]  # None: a seed whose run's files were lost (results.typed)
  metrics: dict  # a subset of METRICS' keys -> value (without the split's prefix)
  tested_epoch: int
  train_seconds: float  # the run's; the replicas of a vmapped run share it
  median_epoch_seconds: float
  environment: tuple = ()  # environment.jsonl's records (empty for runs that predate it)
  num_seeds: int = 1  # of its run: > 1 for a replica of a vmapped run
  typed_where: str = ""  # a seed without files: where it ran, as typed


@dataclasses.dataclass(frozen=True)
class Stats:
  """A metric over n seeds: mean, standard deviation (n - 1), standard error of the mean, and the
  mean's 95% confidence interval (Student's t, n - 1 degrees of freedom)."""
  n: int
  mean: float
  std: float  # nan for one seed
  se: float
  low: float
  high: float

  @classmethod
  def of(cls, values: Sequence[float]) -> "Stats":
    values = np.asarray(values, dtype=np.float64)
    n, mean = len(values), float(np.mean(values))
    if n < 2:
      return cls(n, mean, math.nan, math.nan, math.nan, math.nan)
    std = float(np.std(values, ddof=1))
    se = std / math.sqrt(n)
    half = t_quantile(n - 1) * se
    return cls(n, mean, std, se, mean - half, mean + half)

  def prediction_interval(self, k: int = 1) -> tuple[float, float]:
    """The 95% prediction interval of the mean of `k` new seeds: where it falls 95% of the time
    if they are drawn like these n (Student's t, n - 1 degrees of freedom)."""
    half = t_quantile(self.n - 1) * self.std * math.sqrt(1 / k + 1 / self.n)
    return self.mean - half, self.mean + half

  def scaled(self, factor: float, offset: float = 0.0) -> "Stats":
    """The same statistics of offset + factor * value (e.g. error in % from accuracy)."""
    low, high = sorted((offset + factor * self.low, offset + factor * self.high))
    return Stats(self.n, offset + factor * self.mean, abs(factor) * self.std,
                 abs(factor) * self.se, low, high)


def t_quantile(dof: int, level: float = 0.95) -> float:
  """The two-sided `level` quantile of Student's t with `dof` degrees of freedom."""
  from scipy import stats  # pylint: disable=import-outside-toplevel  # jax's dependency; slow import
  return float(stats.t.ppf(0.5 + level / 2, dof))


@dataclasses.dataclass(frozen=True)
class Aggregate:
  commands: list[str]  # one per run: what reproduces it
  seeds: list[SeedResult]
  split: str  # what the metrics were measured on: "test", or "val" (data.final_split)

  @property
  def metrics(self) -> list[str]:
    """The METRICS any seed has (an older summary.json, or a typed seed, may lack one)."""
    return [m for m in METRICS if any(m in s.metrics for s in self.seeds)]

  def stats(self, metric: str) -> Stats:
    """`metric` over the seeds that have it."""
    return Stats.of([s.metrics[metric] for s in self.seeds if metric in s.metrics])

  def error(self) -> Stats:
    """The error in percent (100 x (1 - accuracy)) over the seeds."""
    return self.stats("accuracy").scaled(-100.0, 100.0)


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
                median_epoch_seconds=float(np.median([r["seconds"] for r in history])),
                environment=tuple(workdir_lib.read_metrics(workdir, workdir_lib.ENVIRONMENT)),
                num_seeds=config.num_seeds)
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


def _run_name(seed: SeedResult) -> str:
  return f"`{paths.relative(seed.workdir)}`" if seed.workdir else "no files (typed)"


def seeds_table(result: Aggregate) -> str:
  """A row per seed, then the mean, the standard deviation (n - 1), the standard error and the
  mean's 95% interval of each metric: the table RESULTS.md has for every result."""
  metrics, split = result.metrics, data.SPLIT_NAMES[result.split]
  header = ["seed", "run", f"{split} error", *(f"{split} {METRICS[m]}" for m in metrics),
            "tested epoch", "training seconds (run)", "median seconds an epoch"]
  rows = [[s.seed, _run_name(s), _percent(s.metrics["accuracy"]),
           *(f"{s.metrics[m]:.4f}" if m in s.metrics else "" for m in metrics), s.tested_epoch,
           f"{s.train_seconds:,.0f}".replace("nan", ""),
           f"{s.median_epoch_seconds:.1f}".replace("nan", "")]
          for s in sorted(result.seeds, key=lambda s: s.seed)]
  if len(result.seeds) > 1:
    error, per_metric = result.error(), [result.stats(m) for m in metrics]
    blank = ["", "", ""]
    rows += [
        ["**mean**", "", f"**{error.mean:.3f}%**", *(f"{m.mean:.5f}" for m in per_metric), *blank],
        ["std (n - 1)", "", f"{error.std:.3f}", *(f"{m.std:.5f}" for m in per_metric), *blank],
        ["standard error", "", f"{error.se:.3f}", *(f"{m.se:.5f}" for m in per_metric), *blank],
        ["95% interval", "", f"{error.low:.3f}-{error.high:.3f}%",
         *(f"{m.low:.5f}-{m.high:.5f}" for m in per_metric), *blank]]
  return report.markdown_table(header, rows)


def headline(result: Aggregate) -> str:
  """"0.522% +- 0.028 (n - 1), 95% interval 0.487-0.557%, 5 seeds": a result in one phrase."""
  error, n = result.error(), len(result.seeds)
  if n < 2:
    return f"{error.mean:.2f}%, 1 seed"
  return (f"{error.mean:.3f}% +- {error.std:.3f} (std, n - 1), 95% interval "
          f"{error.low:.3f}-{error.high:.3f}%, {n} seeds")


def markdown(result: Aggregate) -> str:
  """The seeds' table and the commands that reproduce it, as RESULTS.md has them."""
  split = data.SPLIT_NAMES[result.split]
  return "\n".join([
      f"{split.capitalize()} error {headline(result)} ("
      + ("each seed's test set used once, by its run):" if result.split == "test" else
         "the runs kept the test set out):"),
      "",
      seeds_table(result),
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
