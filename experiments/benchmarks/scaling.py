"""What many seeds and several devices cost: vmapped replicas vs one run, sharded vs one device.

    python -m experiments.benchmarks.scaling                # adam_mlp, 8 seeds, 4 forced CPU devices
    python -m experiments.benchmarks.scaling --config=rmsprop_mlp --seeds=4 --devices=2 --epochs=5
    python -m experiments.benchmarks.scaling --config=ladder --seeds=3 --devices=1 \
        --train_subset=6000                                 # one device, a tenth of the data

Rows (each timed with the trainer's own compiled epochs, `workers.time_epochs`, on the full
training set):
  * 1 seed: s/epoch of one model.
  * N seeds vmapped: s/epoch of N replicas in one program, and its ratio to 1 seed; N sequential
    runs would cost N times the 1-seed figure.
  * sharded: s/epoch with each batch split over D devices (on a CPU host: D devices forced with
    XLA_FLAGS=--xla_force_host_platform_device_count=D, sharing the same cores) vs a mesh of 1 in
    the same process; not measured with --devices=1.
With --train_subset=N the epochs are of the first N training images (a long model's cost per
epoch in minutes: scale by the training set's size over N).
Epoch times are medians over the epochs after the first (which compiles); the first is reported too.
Writes scaling.json and scaling.md to --out.
"""

import json
import os
import pathlib
import statistics

from absl import flags

from experiments.benchmarks.workers import emit, flag_args, quiet_env, run_worker
from mnist_jax import cli, errors

PROGRAM = "experiments.benchmarks.scaling"


def worker(args) -> None:
  """In a process whose device count is fixed: emit one record per measurement asked for."""
  import jax  # pylint: disable=import-outside-toplevel

  from experiments.benchmarks.workers import time_epochs  # pylint: disable=import-outside-toplevel
  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  for seeds, devices in json.loads(args.measure):
    config = config_lib.load(args.config)
    config.num_seeds, config.mesh.num_devices = seeds, devices
    if args.train_subset:
      config.data.train_subset = args.train_subset
    timed = time_epochs(config, args.epochs)
    seconds = timed["epoch_seconds"]
    emit({"seeds": seeds, "devices": timed["devices"], "first_epoch": seconds[0],
          "median": statistics.median(seconds[1:]), "min": min(seconds[1:]),
          "epoch_seconds": seconds, "platform": jax.devices()[0].platform})


def run(args, measure, device_count: int = 0) -> list[dict]:
  env = quiet_env()
  if device_count:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={device_count}").strip()
  records, error = run_worker(PROGRAM, "scaling", [f"--config={args.config}",
                                                   f"--epochs={args.epochs}",
                                                   f"--train_subset={args.train_subset}",
                                                   f"--measure={json.dumps(measure)}"],
                              timeout=3600, env=env)
  if error:
    raise errors.Error(f"A scaling worker failed: {error}")
  return records


flags.DEFINE_string("config", "adam_mlp", "Experiment name or config file.")
flags.DEFINE_integer("seeds", 8, "Replicas of the vmapped row.")
flags.DEFINE_integer("devices", 4, "Devices of the sharded row (1: no sharded rows).")
flags.DEFINE_integer("epochs", 4, "Timed epochs per row (the first compiles).")
flags.DEFINE_integer("train_subset", 0, "Time epochs of the first N training images (0: the "
                     "config's).")
flags.DEFINE_string("out", "runs/scaling", "Directory for scaling.json and scaling.md.")
flags.DEFINE_string("worker", None, "(internal) run one worker: scaling.")
flags.DEFINE_string("measure", None, "(internal) the worker's [[seeds, devices], ...] (JSON).")

ARGS = ("config", "seeds", "devices", "epochs", "train_subset", "out")  # recorded in scaling.json


def main(argv: list[str]) -> int:
  del argv
  args = flag_args()
  if args.worker:
    worker(args)
    return 0

  one, many = run(args, [[1, 1], [args.seeds, 1]])
  rows = [("1 seed, 1 device", one, 1.0),
          (f"{args.seeds} seeds vmapped, 1 device", many, many["median"] / one["median"])]
  if args.devices > 1:
    sharded_one, sharded = run(args, [[1, 1], [1, args.devices]], device_count=args.devices)
    rows += [(f"1 seed, mesh of 1 (of {args.devices} forced devices)", sharded_one, 1.0),
             (f"1 seed, batch sharded over {args.devices} devices", sharded,
              sharded["median"] / sharded_one["median"])]
  lines = [f"`python -m {PROGRAM} --config={args.config} --seeds={args.seeds} "
           f"--devices={args.devices} --epochs={args.epochs} "
           f"--train_subset={args.train_subset}` on {one['platform'].upper()}, "
           f"{os.cpu_count()} cores", "",
           "| run | first epoch s | steady s/epoch (median) | min | ratio |",
           "| --- | --- | --- | --- | --- |"]
  lines += [f"| {name} | {r['first_epoch']:.2f} | {r['median']:.3f} | {r['min']:.3f} | {ratio:.2f}x |"
            for name, r, ratio in rows]
  lines += ["", f"{args.seeds} sequential runs would take {args.seeds} x "
            f"{one['median']:.3f} = {args.seeds * one['median']:.2f} s/epoch; the vmapped program "
            f"takes {many['median']:.2f}, {many['median'] / (args.seeds * one['median']):.2f}x "
            f"that."]
  table = "\n".join(lines)
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "scaling.md").write_text(table + "\n")
  (out / "scaling.json").write_text(json.dumps(
      {"args": {name: getattr(args, name) for name in ARGS},
       "rows": [{"name": n, **r, "ratio": x} for n, r, x in rows]}, indent=2))
  return 0


if __name__ == "__main__":
  cli.start(main)
