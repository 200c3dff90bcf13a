"""Whether the order of the training images moves the recomputed BatchNorm statistics, and with
them a run's test error.

    python -m experiments.benchmarks.recompute_order runs/best_ladder-idx-seed5 runs/best_ladder-seed6
    python -m experiments.benchmarks.recompute_order --orders=5 RUN...

With `config.train.batchnorm_statistics=recomputed` the tested statistics are the mean of each
batch's mean and variance over one pass of the training images in their stored order
(`train.population_batch_stats`), and the two sources store the same images in different orders.
Where neighbouring images are more alike than random ones, a batch's variance is smaller than
the population's, so the statistics depend on the order. The program prints, for each source,
the mean per-pixel variance of the training set's consecutive batches against that of random
batches; then, for each finished run (its workdir with checkpoints), the test errors with the
checkpoint's statistics, with them recomputed in the stored order (the same, if the pass is
exact), and recomputed in `--orders` random orders of the same images.
"""

import dataclasses

import numpy as np
from absl import flags

from mnist_jax import cli, data, report, train
from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError

_ORDERS = flags.DEFINE_integer("orders", 3, "Random orders of the training images to try a run in.")


def batch_variance(images: np.ndarray, order: np.ndarray, batch: int) -> float:
  """Mean over pixels and over the batches of `order` of each batch's unbiased pixel variance."""
  x = images.reshape(images.shape[0], -1)[order].astype(np.float64)
  usable = x.shape[0] // batch * batch
  return float(x[:usable].reshape(-1, batch, x.shape[1]).var(axis=1, ddof=1).mean())


def source_table() -> None:
  config = config_lib.load("best_ladder")
  batch = config.train.batch_size
  print(f"| source | consecutive batches of {batch} | random batches of {batch} | ratio |")
  print("| --- | --- | --- | --- |")
  for source in data.SOURCES:
    if source == "auto":
      continue
    config.data.source = source
    images = data.load(config.data).train.images
    stored = batch_variance(images, np.arange(images.shape[0]), batch)
    shuffled = batch_variance(images, np.random.default_rng(0).permutation(images.shape[0]), batch)
    print(f"| `{source}` | {stored:.1f} | {shuffled:.1f} | {stored / shuffled:.4f} |")


def run_errors(run: workdir_lib.Run, orders: int) -> list[int]:
  """Test errors (images) of the run: its checkpoint, recomputed in the stored order, then in
  `orders` random orders (keys 0, 1, ...)."""
  config, test = run.config, run.splits.test
  if config.train.batchnorm_statistics != "recomputed" or test is None:
    raise ConfigError(f"{run.workdir} neither recomputes its BatchNorm statistics nor tests: "
                      f"give a finished run of a config with batchnorm_statistics=recomputed.")
  images = data.preprocess(run.splits.train.images, config.data.preprocess)

  def errors(state) -> int:
    probs = report.probabilities(dataclasses.replace(run, state=state), test.images)
    return int(np.sum(probs.argmax(axis=1) != np.asarray(test.labels)))

  permutations = [np.arange(images.shape[0])] + [
      np.random.default_rng(key).permutation(images.shape[0]) for key in range(orders)]
  with train.matmul_precision(config):
    recomputed = [train.population_batch_stats(run.state, images[p], config.train.batch_size)
                  for p in permutations]
  return [errors(run.state)] + [errors(run.state.replace(batch_stats=s)) for s in recomputed]


def main(workdirs: list[str]) -> int:
  source_table()
  if not workdirs:
    return 0
  randoms = [f"random order {key}" for key in range(_ORDERS.value)]
  print(f"\n| run | source | checkpoint | stored order | {' | '.join(randoms)} |")
  print("| --- " * (4 + len(randoms)) + "|")
  for workdir in workdirs:
    run = workdir_lib.load_run(workdir)
    counts = run_errors(run, _ORDERS.value)
    print(f"| {workdir} | `{run.config.data.source}` | " + " | ".join(map(str, counts)) + " |")
  return 0


if __name__ == "__main__":
  cli.start(main)
