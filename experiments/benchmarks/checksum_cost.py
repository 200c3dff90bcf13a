"""What checkpoint checksums cost: the SHA-256 of a checkpoint's files, and an epoch's time with
and without it.

    python -m experiments.benchmarks.checksum_cost            # best_mlp and adversarial_maxout
    python -m experiments.benchmarks.checksum_cost --configs=best_mlp --epochs=6

For each config (all its seeds, vmapped, as the config trains them): builds the training state,
with noise in every array as training leaves it, saves it through `checkpoints.Checkpointer`
(orbax's files, as a run writes them) and times `checkpoints._digests` over them, which a run does
in a background thread after each save. Then, for the first config, trains `--epochs` epochs on
`--train_subset` images with a checkpoint after every epoch, twice, interleaved by epoch: once as
the loop does it (hashing in the background while the next epoch trains), once with the hashing
switched off. It prints the median and fastest epoch of each; the difference is what the
checksums cost an epoch.
"""

import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import flags

from mnist_jax import checkpoints, cli, replicas, trainer
from mnist_jax import config as config_lib

flags.DEFINE_list("configs", ["best_mlp", "adversarial_maxout"], "Experiments to measure.")
flags.DEFINE_integer("epochs", 8, "Epochs of each arm of the epoch comparison.")
flags.DEFINE_integer("train_subset", 6000, "Training images of the epoch comparison.")
FLAGS = flags.FLAGS


def hash_time(name: str, directory: pathlib.Path) -> dict:
  """Size of the config's checkpoint and the seconds its checksums take (fastest of 3)."""
  config = config_lib.load(name)
  state = replicas.create_replica_states(config, steps_per_epoch=600)  # any: the sizes count
  # Noise in every float array, as training leaves it: orbax compresses the zeros of an untrained
  # optimizer state, which would make the checkpoint smaller than a real one.
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  state = jax.tree.unflatten(tree, [
      x + 1e-3 * jax.random.normal(k, x.shape, x.dtype)
      if jnp.issubdtype(x.dtype, jnp.floating) else x for x, k in zip(leaves, keys)])
  saver = checkpoints.Checkpointer(directory / name, keep=1)
  saver.save(1, state)
  saver.close()
  step = directory / name / "1"
  size = sum(p.stat().st_size for p in step.rglob("*") if p.is_file())
  seconds = []
  for _ in range(3):
    started = time.perf_counter()
    checkpoints._digests(step)  # pylint: disable=protected-access
    seconds.append(time.perf_counter() - started)
  return {"config": name, "replicas": config.num_seeds, "megabytes": size / 1e6,
          "seconds": min(seconds)}


def epoch_times(name: str, directory: pathlib.Path) -> dict[str, list[float]]:
  """Seconds of each epoch with a checkpoint after it, hashing on and off, interleaved."""
  config = config_lib.load(name)
  config.data.train_subset, config.data.source = FLAGS.train_subset, "idx"
  run = trainer.Trainer.create(config)
  arms = {"with checksums": checkpoints.Checkpointer(directory / "on", keep=2),
          "without": checkpoints.Checkpointer(directory / "off", keep=2)}
  write_manifest = checkpoints.Checkpointer._write_manifest  # pylint: disable=protected-access
  states = {arm: jax.tree.map(jnp.array, run.state) for arm in arms}  # copies: epochs donate
  times = {arm: [] for arm in arms}
  for epoch in range(1, FLAGS.epochs + 1):
    for arm, saver in arms.items():
      checkpoints.Checkpointer._write_manifest = (  # pylint: disable=protected-access
          write_manifest if arm == "with checksums"
          else lambda self, epoch: self._manager.wait_until_finished())  # pylint: disable=protected-access
      started = time.perf_counter()
      states[arm], _, _ = run.train_epoch(states[arm], epoch)
      jax.block_until_ready(states[arm])
      saver.save(epoch, states[arm])  # hashed in the background during the next epoch
      times[arm].append(time.perf_counter() - started)
  checkpoints.Checkpointer._write_manifest = write_manifest  # pylint: disable=protected-access
  for saver in arms.values():
    saver.close()
  return {arm: seconds[1:] for arm, seconds in times.items()}  # the first compiles


def main(args) -> int:
  del args
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    print("| config | replicas | checkpoint | SHA-256 of its files | rate |")
    print("| --- | --- | --- | --- | --- |")
    for name in FLAGS.configs:
      r = hash_time(name, tmp)
      print(f"| `{name}` | {r['replicas']} | {r['megabytes']:.0f} MB | {r['seconds']:.2f} s | "
            f"{r['megabytes'] / r['seconds']:.0f} MB/s |")
    first = FLAGS.configs[0]
    times = epoch_times(first, tmp / "epochs")
    print(f"\n`{first}` on {FLAGS.train_subset} images, a checkpoint after every epoch, "
          f"{FLAGS.epochs - 1} epochs after the compiling one, interleaved:\n")
    print("| arm | median seconds an epoch | fastest |")
    print("| --- | --- | --- |")
    for arm, seconds in times.items():
      print(f"| {arm} | {statistics.median(seconds):.3f} | {min(seconds):.3f} |")
  return 0


if __name__ == "__main__":
  cli.start(main)
