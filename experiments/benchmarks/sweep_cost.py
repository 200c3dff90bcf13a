"""What a sweep costs as one vmapped program against one run per point, as a user runs each.

    python -m experiments.benchmarks.sweep_cost        # best_mlp's network: 4 rates x 4 noise levels
    python -m experiments.benchmarks.sweep_cost --config=adam_mlp --field=model.input_dropout \
        --values=0,0.2 --learning_rates=1e-3,1e-2 --epochs=3 --repeats=3

Each repeat times two whole commands' worth of processes, alternating which goes first:
  * one program: `python -m mnist_jax.main --config=C --config.sweep.optimizer.learning_rate=...
    --config.sweep.FIELD=...`, the grid as vmapped replicas;
  * a shell loop: one `python -m mnist_jax.main` per point of the same grid, one after another.
Both train the same points for the same epochs on the same data (`--train_subset` images, one
seed), without reports, each repeat with an empty compilation cache (as a new sweep meets it).
Where the time goes comes from the runs' own records (metrics.jsonl): the first epoch (which
compiles), the other epochs, and the rest of the process (start-up, data, initialisation, the
test, the last checkpoint). Writes sweep_cost.md and sweep_cost.json to --out.
"""

import itertools
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from experiments.benchmarks.workers import REPO_ROOT, flag_args, machine_info, quiet_env
from mnist_jax import cli, errors

PROGRAM = "experiments.benchmarks.sweep_cost"

flags.DEFINE_string("config", "best_mlp", "Experiment name or config file.")
flags.DEFINE_list("learning_rates", ["5e-4", "1e-3", "2e-3", "4e-3"],
                  "optimizer.learning_rate values.")
flags.DEFINE_string("field", "model.gaussian_noise", "The second swept field (GROUP.FIELD).")
flags.DEFINE_list("values", ["0", "0.1", "0.3", "0.5"], "Its values.")
flags.DEFINE_integer("epochs", 2, "Epochs of every run.")
flags.DEFINE_integer("train_subset", 6000, "Training images (the first N).")
flags.DEFINE_string("source", "idx", "config.data.source of every run.")
flags.DEFINE_integer("repeats", 2, "Interleaved repeats of both ways.")
flags.DEFINE_string("out", "runs/sweep_cost", "Directory for sweep_cost.json and sweep_cost.md.")

ARGS = ("config", "learning_rates", "field", "values", "epochs", "train_subset", "source",
        "repeats")  # recorded in sweep_cost.json


def _common(args) -> list[str]:
  return [f"--config={args.config}", "--config.num_seeds=1", f"--config.train.epochs={args.epochs}",
          f"--config.data.train_subset={args.train_subset}", f"--config.data.source={args.source}",
          "--noreport"]


def _run(flags_: list[str], workdir: pathlib.Path, cache: pathlib.Path) -> dict:
  """One `mnist_jax.main` process: its wall time and its epochs' times."""
  started = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "mnist_jax.main", *flags_, f"--workdir={workdir}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=7200,
                          env=quiet_env(JAX_COMPILATION_CACHE_DIR=str(cache)))
  wall = time.perf_counter() - started
  if result.returncode != 0:
    raise errors.Error(f"{' '.join(flags_)} failed:\n{result.stderr[-2000:]}")
  epochs = [json.loads(line)["seconds"]
            for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {"wall": wall, "first_epoch": epochs[0], "other_epochs": sum(epochs[1:]),
          "rest": wall - sum(epochs)}


def _total(runs: list[dict]) -> dict:
  return {key: sum(r[key] for r in runs) for key in runs[0]}


def _one_program(args, scratch: pathlib.Path) -> dict:
  flags_ = _common(args) + [
      f"--config.sweep.optimizer.learning_rate={','.join(args.learning_rates)}",
      f"--config.sweep.{args.field}={','.join(args.values)}"]
  return {**_run(flags_, scratch / "sweep", scratch / "cache-sweep"), "processes": 1}


def _shell_loop(args, scratch: pathlib.Path) -> dict:
  runs = []
  for k, (lr, value) in enumerate(itertools.product(args.learning_rates, args.values)):
    flags_ = _common(args) + [f"--config.optimizer.learning_rate={lr}",
                              f"--config.{args.field}={value}"]
    runs.append(_run(flags_, scratch / f"point{k}", scratch / "cache-loop"))
  return {**_total(runs), "processes": len(runs)}


def main(argv: list[str]) -> int:
  del argv
  args = flag_args()
  points = len(args.learning_rates) * len(args.values)
  measured = {"one program": [], "shell loop": []}
  for repeat in range(args.repeats):
    order = ["one program", "shell loop"][::1 if repeat % 2 == 0 else -1]
    for way in order:
      with tempfile.TemporaryDirectory() as scratch:
        run = (_one_program if way == "one program" else _shell_loop)(args, pathlib.Path(scratch))
      measured[way].append(run)
      print(f"repeat {repeat + 1}/{args.repeats}, {way}: {run['wall']:.1f} s", flush=True)

  def row(way):
    runs = measured[way]
    walls = [r["wall"] for r in runs]
    med = lambda key: statistics.median(r[key] for r in runs)
    return (f"| {way} | {runs[0]['processes']} | {min(walls):.1f} | {statistics.median(walls):.1f} "
            f"| {med('first_epoch'):.1f} | {med('other_epochs'):.1f} | {med('rest'):.1f} |")

  ratio = [loop["wall"] / one["wall"]
           for one, loop in zip(measured["one program"], measured["shell loop"])]
  machine = machine_info()
  command = (f"python -m {PROGRAM} --config={args.config} "
             f"--learning_rates={','.join(args.learning_rates)} --field={args.field} "
             f"--values={','.join(args.values)} --epochs={args.epochs} "
             f"--train_subset={args.train_subset} --repeats={args.repeats}")
  table = "\n".join([
      f"`{command}` on {machine['cpu']} ({machine['cores']} cores), {args.config}'s network, "
      f"{points} points (optimizer.learning_rate x {args.field}), {args.epochs} epochs of "
      f"{args.train_subset} images each:", "",
      "| way | processes | wall s (min) | wall s (median) | first epochs s | other epochs s "
      "| rest of the processes s |",
      "| --- | --- | --- | --- | --- | --- | --- |",
      row("one program"), row("shell loop"), "",
      f"The shell loop takes {min(ratio):.2f}x (min) / {statistics.median(ratio):.2f}x (median) "
      f"the one program's time, repeat by repeat ({args.repeats} interleaved repeats; the columns "
      f"after the wall times are medians over the repeats, summed over a loop's processes)."])
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "sweep_cost.md").write_text(table + "\n")
  (out / "sweep_cost.json").write_text(json.dumps(
      {"args": {name: getattr(args, name) for name in ARGS}, "machine": machine,
       "measured": measured, "ratio": ratio}, indent=2))
  return 0


if __name__ == "__main__":
  cli.start(main)
