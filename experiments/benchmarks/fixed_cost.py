"""The fixed cost of an epoch: mnist_jax's whole loop epoch against the benchmark's `jax_scan`,
at 1, 10, 100 and 1,000 steps an epoch.

    python -m experiments.benchmarks.fixed_cost                  # about 5 minutes on 2 CPU cores
    python -m experiments.benchmarks.fixed_cost --repeats=1 --breakdown_repeats=0

`adam_mlp` (batch 32) on the first steps x 32 training images of the shipped IDX files, so every
epoch has exactly `steps` full batches in both systems; no validation (adam_mlp has none, nor has
jax_scan). Each run is a fresh process (`--worker=...`, the protocol of workers.py), and the runs
alternate: for each repeat, each size, each system. The systems:

  mnist_jax                 `python -m mnist_jax.main --config=adam_mlp --noreport` run in the
                            worker (`main.run`): an epoch is the time from one epoch's start in
                            the loop to the next's, so it holds everything the loop does per
                            epoch (the compiled epoch, fetching its metrics, the divergence check,
                            the record in metrics.jsonl, the progress line, TensorBoard, the stop
                            agreement, the checkpoint at the config's cadence: every epoch,
                            skipped while the previous save is still being written or began
                            less than 60 s ago, so only epoch 1's within the timed epochs).
  mnist_jax_while_saving    the same without the minimum interval: every epoch saved unless the
                            previous save is still being written
                            (--config.train.min_seconds_between_checkpoints=0).
  mnist_jax_every_save      the same saving every epoch, each save waiting for the previous one
                            (--config.train.skip_checkpoints_while_saving=False).
  mnist_jax_no_checkpoints  the same with a checkpoint after the last epoch only (no save within
                            the timed epochs): the loop without its checkpoints.
  jax_scan                  the benchmark's hand-written epoch (systems.worker_jax_scan: `jax.jit`
                            over one `lax.scan`, the data on the device), timed by that worker,
                            from the call to `jax.block_until_ready`.

Steady epochs are all but each run's first, which compiles. It prints one Markdown table: each
system's median (and fastest) steady milliseconds an epoch at each size, the least-squares fit
seconds = fixed + steps x per_step over the sizes' medians, and the fixed cost as the 1-step epoch
less one step. With `--breakdown_repeats` > 0 it then times the parts of mnist_jax's 1-step epoch
(the functions the loop calls, each wrapped with a clock; the compiled epoch waited for) and prints
their medians per epoch. docs/benchmark.md (The fixed cost of an epoch) has a measurement.
"""

import collections
import functools
import pathlib
import statistics
import sys
import tempfile
import time
import types

from absl import flags

from experiments.benchmarks.systems import worker_jax_scan
from experiments.benchmarks.workers import emit, flag_args, machine_info
from experiments.benchmarks.workers import run_worker as _run_worker
from mnist_jax import cli, errors

PROGRAM = "experiments.benchmarks.fixed_cost"
# mnist_jax's systems: the checkpoint flags each adds to the command, given its epochs.
CADENCES = {
    "mnist_jax": lambda epochs: [],
    "mnist_jax_while_saving": lambda epochs: ["--config.train.min_seconds_between_checkpoints=0"],
    "mnist_jax_every_save": lambda epochs: ["--config.train.skip_checkpoints_while_saving=False"],
    "mnist_jax_no_checkpoints": lambda epochs: [f"--config.train.checkpoint_every={epochs + 1}"],
}
SYSTEMS = (*CADENCES, "jax_scan")
EXPERIMENT = "adam_mlp"

flags.DEFINE_list("steps", ["1", "10", "100", "1000"], "Steps an epoch (batches of 32).")
flags.DEFINE_list("epochs", ["40", "40", "15", "6"], "Epochs of each run, one per --steps; the "
                  "first compiles, and mnist_jax's last has no next start to end it.")
flags.DEFINE_integer("repeats", 3, "Runs of each system and size, interleaved.")
flags.DEFINE_list("systems", list(SYSTEMS), "A subset of " + ",".join(SYSTEMS))
flags.DEFINE_integer("breakdown_repeats", 2, "Runs per mnist_jax system of the timed parts of "
                     "a 1-step epoch (0: none).")
flags.DEFINE_float("timeout", 600, "Seconds after which one worker run is abandoned.")
# Internal: a subprocess running one system.
flags.DEFINE_string("worker", None, "(internal) run one system: " + ", ".join(SYSTEMS))
flags.DEFINE_integer("worker_steps", 1, "(internal) the worker's steps an epoch.")
flags.DEFINE_integer("worker_epochs", 10, "(internal) the worker's epochs.")
flags.DEFINE_bool("parts", False, "(internal) also time the parts of each epoch.")


def run_worker(worker: str, extra: list[str], timeout: float):
  return _run_worker(PROGRAM, worker, extra, timeout)


# ---------------------------------------------------------------------------------------------
# Workers


def worker_jax_scan_subset(args) -> None:
  """The benchmark's jax_scan worker on the first steps x 32 images, prepared as it prepares them."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from mnist_jax import data  # pylint: disable=import-outside-toplevel
  config = _config(config_lib.load(EXPERIMENT), args.worker_steps)
  splits = data.load(config.data)
  prepare = lambda split: np.asarray(data.preprocess(split.images, config.data.preprocess),
                                     np.float32)
  with tempfile.TemporaryDirectory(prefix="mnist_jax_fixed_cost_") as tmp:
    arrays = pathlib.Path(tmp) / "arrays.npz"
    np.savez(arrays, x_train=prepare(splits.train), y_train=splits.train.labels.astype(np.int32),
             x_test=prepare(splits.test), y_test=splits.test.labels.astype(np.int32))
    worker_jax_scan(types.SimpleNamespace(config=EXPERIMENT, arrays=str(arrays), seed=0,
                                          epochs=args.worker_epochs))


def worker_mnist_jax(args) -> None:
  """`python -m mnist_jax.main` in this process, each epoch's start in the loop on the clock."""
  from mnist_jax import loop  # pylint: disable=import-outside-toplevel
  from mnist_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  starts, parts = [], _Parts() if args.parts else None
  one_epoch = loop._train_one_epoch  # pylint: disable=protected-access

  def timed_epoch(*a, **k):
    starts.append(time.perf_counter())
    if parts is not None:
      parts.epoch = len(starts)
    return one_epoch(*a, **k)

  loop._train_one_epoch = timed_epoch  # pylint: disable=protected-access
  if parts is not None:
    parts.install()
  cadence = CADENCES[args.worker](args.worker_epochs)
  with tempfile.TemporaryDirectory(prefix="mnist_jax_fixed_cost_") as tmp:
    code = main_lib.run(["main", f"--config={EXPERIMENT}", f"--workdir={tmp}", "--noreport",
                         "--config.data.source=idx",
                         f"--config.data.train_subset={32 * args.worker_steps}",
                         f"--config.train.epochs={args.worker_epochs}", *cadence])
  if code:
    raise SystemExit(code)
  # From each epoch's start to the next's; the last epoch has no end mark.
  record = {"epoch_seconds": [b - a for a, b in zip(starts[:-1], starts[1:])]}
  if parts is not None:
    record["parts"] = parts.per_epoch(len(starts) - 1)
  emit(record)


class _Parts:
  """Clocks on the functions an epoch of the loop calls: seconds per part and epoch."""

  def __init__(self):
    self.epoch = 0
    self.seconds = collections.defaultdict(lambda: collections.defaultdict(float))

  def install(self) -> None:
    import jax  # pylint: disable=import-outside-toplevel

    from mnist_jax import (  # pylint: disable=import-outside-toplevel
      checkpoints,
      early_stopping,
      loop,
      multihost,
      tensorboard,
      trainer,
    )
    from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
    wrap = lambda owner, name, part, wait=False: setattr(
        owner, name, self._clock(getattr(owner, name), part, wait))
    wrap(trainer.Trainer, "train_epoch", "compiled epoch (dispatch to results)",
         wait=jax.block_until_ready)
    wrap(loop, "summarize", "metric sums to the host (summarize)")
    wrap(loop, "_raise_if_diverged", "divergence check (_raise_if_diverged)")
    wrap(loop, "_train_one_epoch", "_train_one_epoch")
    wrap(workdir_lib, "append_record", "record appended to metrics.jsonl")
    wrap(loop, "_progress_line", "progress line (formatted)")
    wrap(tensorboard.Writer, "write", "TensorBoard (Writer.write)")
    wrap(early_stopping, "best_epoch", "best epoch (early_stopping.best_epoch)")
    wrap(multihost, "any_process", "stop and checkpoint-skip agreement (multihost.any_process)")
    wrap(checkpoints.Checkpointer, "save", "checkpoint save (Checkpointer.save)")
    wrap(checkpoints.Checkpointer, "wait", "  of which: waiting for the previous save")

  def _clock(self, function, part: str, wait=None):
    @functools.wraps(function)
    def clocked(*a, **k):
      started = time.perf_counter()
      out = function(*a, **k)
      if wait:
        wait(out)
      self.seconds[self.epoch][part] += time.perf_counter() - started
      return out
    return clocked

  def per_epoch(self, epochs: int) -> dict[str, list[float]]:
    """{part: seconds in each of epochs 2..epochs} (each epoch's calls: the record in
    _train_one_epoch counts from its start, what follows it until the next epoch's start)."""
    names = {part for seconds in self.seconds.values() for part in seconds}
    return {part: [self.seconds[epoch][part] for epoch in range(2, epochs + 1)] for part in names}


WORKERS = {**dict.fromkeys(CADENCES, worker_mnist_jax), "jax_scan": worker_jax_scan_subset}


def _config(config, steps: int):
  config.data.source, config.data.train_subset = "idx", 32 * steps
  return config


# ---------------------------------------------------------------------------------------------
# The table


def fit(steps: list[int], seconds: list[float]) -> tuple[float, float]:
  """Least squares of seconds = fixed + steps x per_step: (fixed, per_step)."""
  mean_x, mean_y = statistics.fmean(steps), statistics.fmean(seconds)
  per_step = (sum((x - mean_x) * (y - mean_y) for x, y in zip(steps, seconds))
              / sum((x - mean_x) ** 2 for x in steps))
  return mean_y - per_step * mean_x, per_step


def markdown(steps: list[int], times: dict) -> str:
  """times: {system: {steps: [steady seconds]}}. Two estimates of the fixed cost: the fit's
  intercept, and the smallest epoch less its steps at the fit's cost per step."""
  ms = lambda s: f"{1e3 * s:.2f}"
  fits, fixed = {}, {}
  for system, by_steps in times.items():
    if all(by_steps.get(n) for n in steps):
      fits[system] = fit(steps, [statistics.median(by_steps[n]) for n in steps])
      fixed[system] = statistics.median(by_steps[steps[0]]) - steps[0] * fits[system][1]
  head = ["system", *[f"{n} step{'s' if n > 1 else ''}" for n in steps], "per step (fit)",
          "fixed (fit)", f"fixed ({steps[0]}-step epoch)", "fixed - jax_scan's"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for system, by_steps in times.items():
    cells = [f"{ms(statistics.median(by_steps[n]))} ({ms(min(by_steps[n]))})"
             if by_steps.get(n) else "failed" for n in steps]
    if system in fixed:
      intercept, per_step = fits[system]
      cells += [f"{1e3 * per_step:.3f}", ms(intercept), ms(fixed[system]),
                f"{1e3 * (fixed[system] - fixed['jax_scan']):+.2f}" if "jax_scan" in fixed
                else "n/a"]
    else:
      cells += ["n/a"] * 4
    lines.append(f"| {system} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# The parts _Parts times: within _train_one_epoch, and the loop's calls after it.
INNER = ("compiled epoch (dispatch to results)", "metric sums to the host (summarize)",
         "divergence check (_raise_if_diverged)")
AFTER = ("record appended to metrics.jsonl", "progress line (formatted)",
         "TensorBoard (Writer.write)", "best epoch (early_stopping.best_epoch)",
         "stop and checkpoint-skip agreement (multihost.any_process)",
         "checkpoint save (Checkpointer.save)")
RECORD = "the record: step and learning rate (the rest of _train_one_epoch)"
REST = "the loop's own lines (the rest)"
WHOLE = "whole epoch (one start to the next)"


def _part(parts: dict, name: str, epoch: int) -> float:
  return parts[name][epoch] if name in parts else 0.0


def parts_markdown(runs: dict) -> str:
  """runs: {system: [worker records with "parts"]}: each part's median (fastest) ms an epoch."""
  per = {}
  for system, records in runs.items():
    per[system] = collections.defaultdict(list)
    for record in records:
      whole, parts = record["epoch_seconds"][1:], record["parts"]
      part = functools.partial(_part, parts)
      for i, seconds in enumerate(whole):
        one = part("_train_one_epoch", i)
        values = {WHOLE: seconds, **{name: part(name, i) for name in parts},
                  RECORD: one - sum(part(name, i) for name in INNER),
                  REST: seconds - one - sum(part(name, i) for name in AFTER)}
        for name, value in values.items():
          per[system][name].append(value)
  order = [WHOLE, *INNER, RECORD,
           *AFTER, "  of which: waiting for the previous save", REST]
  systems = [s for s in per if per[s]]
  lines = ["| part of a 1-step epoch | " + " | ".join(f"{s}: ms" for s in systems) + " |",
           "| --- |" + " --- |" * len(systems)]
  for name in order:
    cells = [f"{1e3 * statistics.median(per[s][name]):.3f} ({1e3 * min(per[s][name]):.3f})"
             if per[s].get(name) else "-" for s in systems]
    if any(c != "-" for c in cells):
      lines.append(f"| {name.strip()} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  del argv
  args = flag_args()
  if args.worker:
    WORKERS[args.worker](args)
    return 0
  steps, epochs = [int(s) for s in args.steps], [int(e) for e in args.epochs]
  unknown = set(args.systems) - set(SYSTEMS)
  if len(steps) != len(epochs) or min(epochs) < 3 or unknown or args.repeats < 1:
    raise errors.ConfigError(
        "Give one --epochs (at least 3) per --steps, --repeats of at least 1, and --systems "
        f"from {', '.join(SYSTEMS)}.")
  log = lambda message: print(message, file=sys.stderr, flush=True)
  started = time.perf_counter()
  times = {s: {n: [] for n in steps} for s in args.systems}
  for repeat in range(args.repeats):
    for n, e in zip(steps, epochs):
      for system in args.systems:
        records, error = run_worker(system, [f"--worker_steps={n}", f"--worker_epochs={e}"],
                                    args.timeout)
        if error:
          log(f"[{repeat + 1}/{args.repeats}] {system} {n} steps: FAILED {error}")
          continue
        steady = records[-1]["epoch_seconds"][1:]
        times[system][n] += steady
        log(f"[{repeat + 1}/{args.repeats}] {system}, {n} steps an epoch: steady median "
            f"{1e3 * statistics.median(steady):.2f} ms, min {1e3 * min(steady):.2f} ms")
  parts = {s: [] for s in args.systems if s in CADENCES}
  for repeat in range(args.breakdown_repeats):
    for system in parts:
      records, error = run_worker(system, ["--worker_steps=1", f"--worker_epochs={epochs[0]}",
                                           "--parts"], args.timeout)
      if error:
        log(f"[{repeat + 1}/{args.breakdown_repeats}] parts of {system}: FAILED {error}")
      else:
        parts[system].append(records[-1])
  machine = machine_info()
  print(f"Command: `{' '.join(['python -m', PROGRAM, *sys.argv[1:]])}`")
  print(f"\nMachine: {machine['cpu']}, {machine['cores']} cores; jax "
        f"{machine['versions']['jax']}; {time.strftime('%Y-%m-%d')}; "
        f"{(time.perf_counter() - started) / 60:.1f} min. `{EXPERIMENT}`, batch 32, no "
        f"validation; {args.repeats} run(s) per system and size, interleaved; milliseconds an "
        f"epoch, median (fastest) of the steady epochs; the fit over the sizes' medians.\n")
  print(markdown(steps, times), end="")
  if any(parts.values()):
    print(f"\nParts of a 1-step epoch ({args.breakdown_repeats} run(s) of {epochs[0]} epochs "
          f"each; medians per epoch, so the parts need not add up to the whole):\n")
    print(parts_markdown(parts), end="")
  return 0


if __name__ == "__main__":
  cli.start(main)
