"""The committed results: the run files behind every table of experiments/RESULTS.md and README.md,
and the command that writes those tables from them.

    experiments/results/published.toml    what each config reproduces and its published figure
    experiments/results/<name>/<run>/      a finished run's config.json, summary.json,
                                           metrics.jsonl and environment.jsonl (never checkpoints)
    experiments/results/<name>/typed.json  seeds whose run files were not kept: their figures as
                                           the runs printed them, marked "no files" in every table

<name> is the experiment's (experiments/<name>.py) for runs of that config as it is, up to the
seed and RUN_FIELDS; a variant gets a name of its own (`save --name=...`). <run> is seed-K for a
run of one seed and seeds-K-L for a vmapped run of seeds K..L.

    python -m mnist_jax.results save runs/best_ladder-seed7   # as soon as a reported run ends
    python -m mnist_jax.results tables                        # rewrite the generated tables
    python -m mnist_jax.results tables --check                # exit 1 if one differs (a test runs it)

A generated table sits between `<!-- table: KIND [NAME] -->` and `<!-- end table -->` in the
Markdown; edit the files here, never the table.
"""

import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import shutil
import tomllib
from typing import Optional, Sequence

from absl import flags

from mnist_jax import aggregate, cli, environment, hyperparams, paths, report
from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ResultError

_NAME = flags.DEFINE_string("name", None, "save: the result's name in experiments/results/ "
                            "(default: the experiment whose config the run has, as it is).")
_CHECK = flags.DEFINE_bool("check", False, "tables: change nothing; exit 1 if a table differs "
                           "from what the files give.")

PUBLISHED = paths.RESULTS_DIR / "published.toml"
TYPED = "typed.json"
# How a run ran, not what it trains: runs that differ only in these (and the seed) are runs of one
# experiment to `verify`, which shows these differences beside the verdict.
RUN_FIELDS = ("data.source", "data.idx_dir", "data.tfds_dir", "mesh.num_devices",
              "matmul_precision", "train.checkpoint_every", "train.keep_checkpoints",
              "train.skip_checkpoints_while_saving", "train.min_seconds_between_checkpoints",
              "train.eval_batch_size")
# What the line before a table that is not generated starts with, telling the reader what it is:
# runs whose files were not kept (typed from their logs), or a paper's figures.
UNGENERATED_MARKS = ("<!-- typed -->", "<!-- published -->")
MARKDOWN_FILES = (paths.EXPERIMENTS_DIR / "RESULTS.md", paths.REPO_ROOT / "README.md")


def experiment_differences(a, b) -> dict[str, tuple]:
  """{field: (a's value, b's)} for the fields in which two configs are different experiments:
  all but the seed fields and RUN_FIELDS."""
  a, b = (config_lib.flatten(c.to_dict()) for c in (a, b))
  keys = sorted((set(a) | set(b)) - set(aggregate.SEED_FIELDS) - set(RUN_FIELDS))
  return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def describe_differences(differences: dict[str, tuple], names=("yours", "committed")) -> str:
  return ", ".join(f"{k} ({a!r} {names[0]}, {b!r} {names[1]})" for k, (a, b) in differences.items())


# ---------------------------------------------------------------------------------------------
# Reading a committed result


@dataclasses.dataclass(frozen=True)
class Committed:
  """One result in experiments/results/: its seeds (with files, or typed) and their config."""
  name: str
  config: object  # its runs' ConfigDict; for typed seeds alone, the experiment's with their overrides
  result: aggregate.Aggregate

  @property
  def typed_seeds(self) -> list[int]:
    return sorted(s.seed for s in self.result.seeds if s.workdir is None)

  def seed(self, seed: int) -> Optional[aggregate.SeedResult]:
    return next((s for s in self.result.seeds if s.seed == seed), None)


def names() -> list[str]:
  """The results in experiments/results/, by name."""
  return sorted(p.name for p in paths.RESULTS_DIR.iterdir() if p.is_dir())


def run_dirs(name: str) -> list[pathlib.Path]:
  directory = paths.RESULTS_DIR / name
  return sorted(p for p in directory.iterdir() if (p / workdir_lib.CONFIG).is_file()) \
      if directory.is_dir() else []


@functools.cache
def load(name: str) -> Committed:
  """The committed result `name`: its runs' seeds, and its typed seeds."""
  directory = paths.RESULTS_DIR / name
  if not directory.is_dir():
    raise ResultError(f"experiments/results/ has no result {name!r}. Committed results: "
                      f"{', '.join(names())}.")
  runs = run_dirs(name)
  result = aggregate.aggregate(runs) if runs else None
  config = workdir_lib.load_config(runs[0]) if runs else None
  seeds = list(result.seeds) if result else []
  if (directory / TYPED).is_file():
    typed = json.loads((directory / TYPED).read_text())
    if config is None:
      config = config_lib.load(typed["config"])
      for key, value in typed.get("overrides", {}).items():
        group, field = key.split(".")
        config[group][field] = value
    for record in typed["seeds"]:
      if any(s.seed == record["seed"] for s in seeds):
        raise ResultError(f"Seed {record['seed']} of {name} is both typed and in a run's files: "
                          f"remove it from {directory / TYPED}.")
      seeds.append(aggregate.SeedResult(
          seed=record["seed"], workdir=None, tested_epoch=record["tested_epoch"],
          metrics={m: record[f"test_{m}"] for m in aggregate.METRICS if f"test_{m}" in record},
          train_seconds=record["train_seconds"] or math.nan,
          median_epoch_seconds=record["median_epoch_seconds"] or math.nan,
          num_seeds=typed["num_seeds"], typed_where=record.get("where", typed["where"])))
  seeds.sort(key=lambda s: s.seed)
  split = result.split if result else "test"
  return Committed(name, config, aggregate.Aggregate([], seeds, split))


@functools.cache
def published() -> dict:
  """published.toml: {config name: {reproduces, model, metric, figure, ...}}."""
  return tomllib.loads(PUBLISHED.read_text())


# ---------------------------------------------------------------------------------------------
# Saving a finished run


def run_dir_name(config) -> str:
  last = config.seed + config.num_seeds - 1
  return f"seed-{config.seed}" if config.num_seeds == 1 else f"seeds-{config.seed}-{last}"


def save(workdir: pathlib.Path, name: Optional[str] = None) -> pathlib.Path:
  """Copy a finished run's result files into experiments/results/<name>/<run>/; never over
  anything already there. Returns the new directory."""
  workdir = pathlib.Path(workdir)
  config = workdir_lib.load_config(workdir)
  if not workdir_lib.is_finished(workdir):
    raise ResultError(f"{workdir} has not finished (it has no {workdir_lib.SUMMARY}), so it has "
                      f"no result to save. Run its command again to finish it: "
                      f"{report.reproduce_command(config, workdir)}")
  if swept := hyperparams.swept(config):
    raise ResultError(f"{workdir} is a sweep (of {', '.join(swept)}): its replicas are points to "
                      f"choose from, not the seeds of one result. Train the chosen point on its "
                      f"own and save that run.")
  if name is None:
    closest, _ = config_lib.closest(config)
    if differences := experiment_differences(config, config_lib.load(closest)):
      raise ResultError(
          f"{workdir} is not a run of an experiment as it is: it differs from {closest} in "
          f"{describe_differences(differences, ('this run', closest))}. Give the variant a name "
          f"of its own: --name={closest}-SOMETHING.")
    name = closest
  target = paths.RESULTS_DIR / name / run_dir_name(config)
  if target.exists():
    raise ResultError(f"{target} already exists: a committed run is never replaced. A new seed "
                      f"is a new result row; to replace this one, delete it with git rm first.")
  if runs := run_dirs(name):
    aggregate.aggregate([*runs, workdir])  # refuses another config, or a seed twice
  tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
  tmp.mkdir(parents=True)
  for file in workdir_lib.RESULT_FILES:
    if (workdir / file).is_file():
      shutil.copyfile(workdir / file, tmp / file)
  os.replace(tmp, target)
  load.cache_clear()
  return target


# ---------------------------------------------------------------------------------------------
# The tables


def _seed_ranges(seeds: Sequence[int]) -> str:
  """[0, 1, 2, 4] -> "0-2, 4"."""
  out, seeds = [], sorted(seeds)
  start = prev = seeds[0]
  for s in seeds[1:] + [None]:
    if s is not None and s == prev + 1:
      prev = s
      continue
    out.append(f"{start}" if start == prev else f"{start}-{prev}")
    if s is not None:
      start = prev = s
  return ", ".join(out)


def _runs(c: Committed) -> list[tuple[object, int]]:
  """(config, seeds) of each run behind a result: the runs with files, then the typed ones."""
  runs = {}
  for s in c.result.seeds:
    key = s.workdir or ("typed", s.seed if s.num_seeds == 1 else None)
    runs.setdefault(key, []).append(s.seed)
  out = []
  for key, seeds in runs.items():
    if isinstance(key, pathlib.Path):
      config = workdir_lib.load_config(key)
    else:
      config = c.config.copy_and_resolve_references()
      config.seed, config.num_seeds = min(seeds), len(seeds)
    out.append((config, len(seeds)))
  return out


def seeds_text(c: Committed) -> str:
  """ "5 (0-4), one run each", "5 (0-4), vmapped", with the typed ones marked."""
  seeds = [s.seed for s in c.result.seeds]
  runs = _runs(c)
  how = ("one run" if len(seeds) == 1 else "vmapped" if len(runs) == 1 else "one run each"
         if all(n == 1 for _, n in runs) else f"in {len(runs)} runs")
  missing = _without_files(c)
  return f"{len(seeds)} ({_seed_ranges(seeds)}), {how}" + (f"; {missing} (typed)" if missing else "")


def _without_files(c: Committed, files: str = "files", seeds: str = "") -> str:
  """ "" when every seed has its run files; else "no files", or "0-4 without files"."""
  typed = c.typed_seeds
  if not typed:
    return ""
  if len(typed) == len(c.result.seeds):
    return f"no {files}"
  return f"{seeds}{_seed_ranges(typed)} without {files}"


def command(c: Committed, loop: bool = False) -> str:
  """The command that trains the result's seeds: one, or one per seed with K for the seed (with
  `loop`, as a shell loop, each seed in its own workdir)."""
  runs = _runs(c)
  if len(runs) == 1:
    return report.reproduce_command(runs[0][0])
  if any(n > 1 for _, n in runs):
    return "\n".join(report.reproduce_command(config) for config, _ in runs)
  template = runs[0][0].copy_and_resolve_references()
  template.seed = -1  # a seed no experiment has: its override is always written
  one = report.reproduce_command(template).replace("--config.seed=-1", "--config.seed=K")
  if not loop:
    return one
  seeds = " ".join(str(s.seed) for s in c.result.seeds)
  one = one.replace("--config.seed=K", "--config.seed=$K")
  return f"for K in {seeds}; do\n  {one} --workdir=runs/{c.name}-seed$K\ndone"


def where(c: Committed) -> str:
  """Where each seed ran, from environment.jsonl (every process that trained it), in a line."""
  groups = {}
  for s in c.result.seeds:
    if s.workdir is None:
      text = f"no files (typed from the runs' printed summaries); {s.typed_where}"
    elif not s.environment:
      text = f"not recorded (the run predates {workdir_lib.ENVIRONMENT})"
    else:
      text = "; then ".join(dict.fromkeys(environment.summary_line(e) for e in s.environment))
    groups.setdefault(text, []).append(s.seed)
  return " ".join(f"Seed{'s' * (len(seeds) > 1)} {_seed_ranges(seeds)}: {text}."
                  for text, seeds in groups.items())


def _own_seed(c: Committed) -> aggregate.SeedResult:
  """The seed the experiment's config trains (a tutorial's own): what its row shows."""
  return c.seed(config_lib.load(c.name).seed) or c.result.seeds[0]


def comparison(c: Committed, pub: dict) -> tuple[str, str]:
  """Where the published figure falls against our seeds' interval: a paper's mean against the
  95% interval of our mean; a single published run against the 95% prediction interval of one of
  our seeds. Returns (outcome, how): the outcome ("below it", "matches it" or "above it") is empty
  where there is nothing to compare yet, and `how` then says why."""
  if "figure" not in pub:
    return "", ""
  if len(c.result.seeds) < 2:
    return "", "not yet: one seed gives no interval"
  error = pub["metric"] == "error"
  stats = c.result.error() if error else c.result.stats("accuracy")
  if pub["figure_is"] == "one run":
    low, high = stats.prediction_interval(1)
    what = "one seed's 95% prediction interval"
  else:
    low, high = stats.low, stats.high
    what = "the 95% interval of our mean"
  fmt = (lambda v: f"{v:.3f}%") if error else (lambda v: f"{v:.4f}")
  figure = pub["figure"]
  if high < figure:
    outcome, relation = "below it", "is below"
  elif low > figure:
    outcome, relation = "above it", "is above"
  else:
    outcome, relation = "matches it", "contains"
  return outcome, f"{what}, {fmt(low)}-{fmt(high)}, {relation} {fmt(figure)}"


def comparison_text(c: Committed, pub: dict) -> str:
  """The comparison as RESULTS.md's table words it: "below it: the 95% interval ..."."""
  return ": ".join(part for part in comparison(c, pub) if part)


def _ours(c: Committed, pub: dict, bold: bool = True) -> str:
  b = "**" if bold else ""
  if pub["metric"] == "accuracy":
    own, acc = _own_seed(c), c.result.stats("accuracy")
    spread = f"; {acc.n} seeds {acc.mean:.4f} +- {acc.std:.4f}" if acc.n > 1 else ""
    return f"test accuracy {b}{own.metrics['accuracy']:.4f}{b} (seed {own.seed}){spread}"
  error = c.result.error()
  if error.n == 1:  # no spread yet: the seed, not a "+- nan"
    return f"test error {b}{error.mean:.2f}%{b} (seed {c.result.seeds[0].seed} alone)"
  return f"test error {b}{error.mean:.2f}% +- {error.std:.2f}{b}"


def _figure_text(pub: dict) -> str:
  """How the source states its figure, else the figure."""
  return f"test {pub['metric']} {pub.get('figure_text', pub.get('figure'))}"


def summary_table() -> str:
  """RESULTS.md's first table: every config, its published figure, ours, and how they compare."""
  header = ["config", "reproduces", "their figure", "ours (mean +- std, n - 1)",
            "against their figure", "seeds", "command"]
  rows = []
  for name, pub in published().items():
    if name not in names():
      rows.append([f"`{name}`", pub["reproduces"], _figure_text(pub),
                   pub.get("status", "no committed result"), "", "",
                   f"see [{name}](#{pub['section']})"])
      continue
    c = load(name)
    rows.append([f"`{name}`", pub["reproduces"], _figure_text(pub), _ours(c, pub),
                 comparison_text(c, pub), seeds_text(c), f"`{command(c)}`"])
  return report.markdown_table(header, rows)


def readme_table() -> str:
  """README's table: what each config trains, the figure it reproduces and ours, linked."""
  header = ["config", "reproduces", "model and training", "their figure", "ours"]
  rows = []
  for name, pub in published().items():
    link = f"experiments/RESULTS.md#{pub['section']}"
    if name not in names():
      ours = f"[{pub.get('status', 'no committed result').split(':')[0]}]({link})"
    else:
      c = load(name)
      outcome = comparison(c, pub)[0].replace(" it", " their figure")
      missing = _without_files(c, files="run files", seeds="seeds ")
      ours = (f"[{_ours(c, pub, bold=False)}]({link})" + (f", {outcome}" if outcome else "")
              + (f" ({missing})" if missing else ""))
    rows.append([f"`{name}`", pub["reproduces"], pub["model"], _figure_text(pub), ours])
  return report.markdown_table(header, rows)


def tutorials_table() -> str:
  """The tutorials' configs: their figure, our run of their seed, the spread of our seeds."""
  header = ["config", "tutorial", "epochs, batch", "tutorial's test accuracy",
            "**ours, the config's seed**", "difference (points)", "ours: mean +- std (n - 1)",
            "one seed's 95% prediction interval", "ours, test loss (the config's seed)"]
  rows = []
  for name, pub in published().items():
    if pub.get("section") != "the-five-tutorials" or name not in names():
      continue
    c = load(name)
    own, acc = _own_seed(c), c.result.stats("accuracy")
    low, high = acc.prediction_interval(1)
    figure = pub.get("figure")
    rows.append([f"`{name}`", pub["reproduces"],
                 f"{c.config.train.epochs}, {c.config.train.batch_size}",
                 figure if figure else pub["figure_text"],
                 f"**{own.metrics['accuracy']:.4f}** (seed {own.seed})",
                 f"{100 * (own.metrics['accuracy'] - figure):+.2f}" if figure else "",
                 f"{acc.mean:.4f} +- {acc.std:.4f} ({acc.n} seeds)", f"{low:.4f}-{high:.4f}",
                 f"{own.metrics['loss']:.4f}"])
  return report.markdown_table(header, rows)


def _figure_of_run(seed: aggregate.SeedResult, spec: str) -> str:
  """A figure of one seed's run, by published.toml's spec: "test_KEY" or "KEY@EPOCH", joined
  by " / "."""
  run = workdir_lib.load_config(seed.workdir)
  replica = seed.seed - run.seed  # its index among the run's replicas
  history = workdir_lib.read_metrics(seed.workdir)
  out = []
  for part in spec.split(" / "):
    if part.startswith("test_"):
      out.append(seed.metrics[part.removeprefix("test_")])
      continue
    key, epoch = part.split("@")
    record = history[int(epoch) if int(epoch) < 0 else int(epoch) - 1]
    out.append(record.get("replicas", {}).get(key, [record[key]] * (replica + 1))[replica])
  return " / ".join(f"{v:.4f}" for v in out)


def tutorial_figures_table() -> str:
  """The other figures the tutorials report, beside our run of the tutorial's seed."""
  rows = []
  for name, pub in published().items():
    if name not in names():
      continue
    for figure, theirs, spec in pub.get("tutorial_figures", ()):
      own = _own_seed(load(name))
      rows.append([f"`{name}`", figure, theirs, f"{_figure_of_run(own, spec)} (seed {own.seed})"])
  return report.markdown_table(["config", "figure", "tutorial", "ours"], rows)


def seeds_section(name: str) -> str:
  """A result's table of seeds, where they ran, and the command that trains them."""
  c = load(name)
  return "\n".join([aggregate.seeds_table(c.result), "", where(c), "", "```bash",
                    command(c, loop=True), "```"])


TABLES = {"summary": summary_table, "readme": readme_table, "tutorials": tutorials_table,
          "tutorial-figures": tutorial_figures_table, "seeds": seeds_section}
_BLOCK = re.compile(r"(<!-- table: ([\w-]+)(?: ([\w.-]+))? -->\n)(.*?)(<!-- end table -->)", re.S)


def render(text: str) -> str:
  """`text` with every generated table written anew from the files."""
  def table(match):
    kind, name = match.group(2), match.group(3)
    if kind not in TABLES:
      raise ResultError(f"Unknown table {kind!r} in a <!-- table: ... --> marker; the kinds are "
                        f"{', '.join(TABLES)}.")
    body = TABLES[kind](name) if name else TABLES[kind]()
    return f"{match.group(1)}{body}\n{match.group(5)}"
  return _BLOCK.sub(table, text)


def tables(check: bool) -> list[pathlib.Path]:
  """Rewrite (or, with `check`, compare) the generated tables; returns the files that differ."""
  differ = []
  for path in MARKDOWN_FILES:
    text = path.read_text()
    new = render(text)
    if new != text:
      differ.append(path)
      if not check:
        workdir_lib.write_atomic(path, new)
  return differ


def main(args: list[str]) -> int:
  if not args or args[0] not in ("save", "tables") or (args[0] == "tables") != (len(args) == 1):
    raise ResultError("Usage: python -m mnist_jax.results save RUN_DIR... [--name=NAME], or "
                      "python -m mnist_jax.results tables [--check].")
  if args[0] == "save":
    for workdir in args[1:]:
      print(f"Saved {workdir} as {paths.relative(save(workdir, _NAME.value))}")
    print("Now regenerate the tables (python -m mnist_jax.results tables) and commit both.")
    return 0
  differ = tables(_CHECK.value)
  names_ = ", ".join(paths.relative(p) for p in differ)
  if _CHECK.value and differ:
    return cli.fail(f"The generated tables in {names_} differ from what experiments/results/ "
                    f"gives. Run `python -m mnist_jax.results tables` and commit the result.")
  print(f"Rewrote the tables in {names_}." if differ else "The tables are up to date.")
  return 0


def run(argv: Sequence[str]) -> int:
  """The program, in this process: `run(["results", "tables", "--check"])` -> exit code."""
  return cli.run(main, argv)


if __name__ == "__main__":
  cli.start(main)
