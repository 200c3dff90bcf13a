"""Does your rerun agree with the committed result? `python -m mnist_jax.verify RUN_DIR...`

    python -m mnist_jax.main --config=adam_mlp --workdir=runs/mine
    python -m mnist_jax.verify runs/mine

Finds the committed result (experiments/results/) of the runs' config, then tests each of your
seeds, and the mean of them all, against the committed seeds' spread: a seed agrees when it falls
inside the 95% prediction interval of one new seed, the mean when it falls inside that of a mean
of k new seeds (Student's t with n - 1 degrees of freedom over the n committed seeds: mean
+- t * std * sqrt(1/k + 1/n)). It says how far the mean is, in standard errors of the difference,
then lists what it can see differs between your runs and the committed ones: config fields that
do not change the experiment (data source, devices, ...), versions, device, CPU, vmapped or single
runs, commit.

A run of another config is refused, naming the fields. Exit codes (cli.py): 0 agrees, 3 disagrees,
1 cannot compare (an unfinished run, a sweep, no committed result, another config).
"""

import dataclasses
import math
import pathlib
from typing import Sequence

from mnist_jax import aggregate, cli, data, hyperparams, paths, report, results
from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ResultError


def find_committed(config) -> results.Committed:
  """The committed result of `config`'s experiment; a paragraph naming the difference otherwise."""
  for name in results.names():
    committed = results.load(name)
    if not results.experiment_differences(config, committed.config):
      return committed
  closest, _ = config_lib.closest(config)
  if closest in results.names():
    committed = results.load(closest)
    fields = results.describe_differences(results.experiment_differences(config, committed.config))
    raise ResultError(
        f"These runs are not of a config with a committed result: the closest, {closest}, "
        f"differs in {fields}. verify compares runs of "
        f"a committed config, up to the seed and how it ran ({', '.join(results.RUN_FIELDS)}). "
        f"The committed seeds were trained by: {results.command(committed)}")
  raise ResultError(
      f"No committed result for {closest} (the experiment closest to these runs' config), so "
      f"there is nothing to verify against. Committed results: {', '.join(results.names())}. "
      f"`python -m mnist_jax.aggregate RUN_DIR...` tabulates your seeds on their own.")


@dataclasses.dataclass(frozen=True)
class Verdict:
  agrees: bool
  lines: list[str]


def compare(yours: aggregate.Aggregate, committed: results.Committed) -> Verdict:
  """Each of your seeds and their mean against the committed seeds' prediction intervals."""
  theirs = committed.result.error()
  if theirs.n < 2:
    raise ResultError(f"The committed result {committed.name} has one seed: there is no spread "
                      f"to test against. Its seed's error is {theirs.mean:.2f}%.")
  split = yours.split
  lines = [f"Committed: experiments/results/{committed.name}, {aggregate.headline(committed.result)}"
           + (f" ({results.seeds_text(committed)})" if committed.typed_seeds else "."),
           f"Test: a seed agrees inside the 95% prediction interval of one new seed; the mean of "
           f"k seeds inside that of a mean of k (Student's t, {theirs.n - 1} degrees of freedom).",
           ""]
  agrees = True
  for seed in sorted(yours.seeds, key=lambda s: s.seed):
    error = 100 * (1 - seed.metrics["accuracy"])
    low, high = theirs.prediction_interval(1)
    inside = low <= error <= high
    agrees &= inside
    same = committed.seed(seed.seed)
    twin = ""
    if same is not None:
      twin = ("; the committed seed's metrics exactly" if same.metrics == seed.metrics else
              f"; the committed seed {seed.seed}: {100 * (1 - same.metrics['accuracy']):.2f}%")
    lines.append(f"  seed {seed.seed}: {data.SPLIT_NAMES[split]} error {error:.2f}%, "
                 f"{'inside' if inside else 'OUTSIDE'} {low:.3f}-{high:.3f}%{twin}")
  mine = yours.error()
  k = mine.n
  low, high = theirs.prediction_interval(k)
  se = theirs.std * math.sqrt(1 / k + 1 / theirs.n)
  z = (mine.mean - theirs.mean) / se
  inside = low <= mine.mean <= high
  agrees &= inside
  lines += ["", f"  mean of {k}: {mine.mean:.3f}% against {theirs.mean:.3f}%, a difference of "
            f"{mine.mean - theirs.mean:+.3f} points = {z:+.1f} standard errors "
            f"({se:.3f}); {'inside' if inside else 'OUTSIDE'} {low:.3f}-{high:.3f}%", ""]
  if agrees:
    lines.append("AGREES: every seed and the mean are inside the committed seeds' spread.")
  else:
    lines.append(f"DISAGREES: the mean is {abs(z):.1f} standard errors "
                 f"{'above' if z > 0 else 'below'} the committed mean"
                 + ("" if inside else ", outside its 95% prediction interval") + ".")
  return Verdict(agrees, lines)


def differences(yours: aggregate.Aggregate, config, committed: results.Committed) -> list[str]:
  """What differs between your runs (`config`'s) and the committed ones that might move a result."""
  lines = []
  flat, theirs = (config_lib.flatten(c.to_dict()) for c in (config, committed.config))
  for field in results.RUN_FIELDS:
    if flat.get(field) != theirs.get(field):
      lines.append(f"config.{field}: {flat.get(field)!r} yours, {theirs.get(field)!r} committed")
  yours_env = _environments(yours.seeds)
  theirs_env = _environments(committed.result.seeds)
  if not theirs_env:
    typed = "; ".join(sorted({s.typed_where for s in committed.result.seeds})) or "not recorded"
    lines.append(f"environment: the committed seeds have no {workdir_lib.ENVIRONMENT} ({typed})")
  elif not yours_env:
    lines.append(f"environment: your runs have no {workdir_lib.ENVIRONMENT} (trained before "
                 f"mnist_jax recorded it)")
  else:
    for what, get in (("data source", lambda e: e["data_source"]),
                      ("versions", lambda e: ", ".join(f"{k} {v}" for k, v in e["versions"].items())),
                      ("device", lambda e: f"{e['device']['count']} {e['device']['kind']} "
                                           f"({e['device']['platform']})"),
                      ("CPU", lambda e: f"{e['cpu']['model']}, {e['cpu']['cores']} cores"),
                      ("commit", lambda e: (e.get("commit") or {}).get("sha", "unknown")[:10]
                       + (" (modified)" if (e.get("commit") or {}).get("modified") else ""))):
      mine = sorted({get(e) for e in yours_env})
      committed_values = sorted({get(e) for e in theirs_env})
      if mine != committed_values:
        lines.append(f"{what}: {'; '.join(mine)} yours, {'; '.join(committed_values)} committed")
  vmapped = lambda seeds: "vmapped" if any(s.num_seeds > 1 for s in seeds) else "one run a seed"
  mine, theirs_how = vmapped(yours.seeds), vmapped(committed.result.seeds)
  if mine != theirs_how:
    lines.append(f"runs: {mine} yours, {theirs_how} committed (a vmapped replica and the single "
                 f"run of its seed start equal and then drift apart through rounding: two samples "
                 f"of one distribution)")
  return lines


def _environments(seeds) -> list[dict]:
  return [e for s in seeds for e in s.environment]


def main(args: list[str]) -> int:
  if not args:
    raise ResultError("Name the runs to verify: python -m mnist_jax.verify RUN_DIR... (the "
                      "workdirs of finished runs of one config).")
  workdirs = [pathlib.Path(a) for a in args]
  for workdir in workdirs:
    config = workdir_lib.load_config(workdir)
    if swept := hyperparams.swept(config):
      raise ResultError(
          f"{workdir} is a sweep (of {', '.join(swept)}): its replicas are points to choose "
          f"from, and no committed result is a sweep. Train the chosen point on its own (its "
          f"report.md gives the command), then verify that run.")
    if not workdir_lib.is_finished(workdir):
      done = len(workdir_lib.read_metrics(workdir))
      raise ResultError(
          f"{workdir} has not finished ({done} of {config.train.epochs} epochs recorded, no "
          f"{workdir_lib.SUMMARY}), so it has no result to compare yet. Run its command again to "
          f"finish it, then verify: {report.reproduce_command(config, workdir)}")
  yours = aggregate.aggregate(workdirs)  # one experiment's seeds, each once
  config = workdir_lib.load_config(workdirs[0])
  committed = find_committed(config)
  verdict = compare(yours, committed)
  print(f"Your runs: {', '.join(paths.relative(w) for w in workdirs)}, "
        f"{aggregate.headline(yours)}.")
  print("\n".join(verdict.lines))
  seen = differences(yours, config, committed)
  print("\nDifferences between your runs and the committed ones:" if seen else
        "\nNo difference seen between your runs and the committed ones (config, environment).")
  for line in seen:
    print(f"  {line}")
  return 0 if verdict.agrees else cli.DISAGREES


def run(argv: Sequence[str]) -> int:
  """The program, in this process: `run(["verify", "runs/mine"])` -> exit code."""
  return cli.run(main, argv)


if __name__ == "__main__":
  cli.start(main)
