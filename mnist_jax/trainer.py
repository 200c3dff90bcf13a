"""What a run builds before its first epoch, and how it runs an epoch: `Trainer`.

The splits are loaded, checked against the config and placed on the device mesh once; the state
and the compiled functions come from `replicas.init_run` (one model, or a vmapped grid of them).
The training loop and the benchmarks both train through `Trainer.train_epoch`.
"""

import contextlib
import dataclasses
import logging
import math
import os
import pathlib
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mnist_jax import data, hyperparams, models, parallel, replicas, train
from mnist_jax.errors import ConfigError

log = logging.getLogger("mnist_jax")

class EpochProfile(NamedTuple):
  """A jax.profiler trace of epoch `epoch` (from 1), written under `directory`."""
  epoch: int
  directory: pathlib.Path


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A run's splits on the devices, its mesh, initial state and compiled functions."""
  config: object  # the run's ConfigDict
  splits: data.Splits
  mesh: jax.sharding.Mesh
  train: parallel.DeviceData
  val: Optional[parallel.DeviceData]
  test: Optional[parallel.DeviceData]  # None with config.data.use_test=False
  functions: replicas.RunFunctions
  state: object  # functions.state, placed on the mesh
  profile: Optional[EpochProfile] = None

  @classmethod
  def create(cls, config, profile: Optional[EpochProfile] = None) -> "Trainer":
    """Load the splits, place them on the mesh, build the run's state and functions."""
    splits = _load_splits(config)
    _check_fits_in_memory(config, math.prod(splits.train.images.shape[1:]))
    mesh = parallel.make_mesh(config.mesh.num_devices)
    if mesh.size > 1:
      log.info("Data parallel over %d devices: each batch of %d is split %s.", mesh.size,
               config.train.batch_size,
               "evenly" if config.train.batch_size % mesh.size == 0 else "unevenly (XLA pads it)")
    put = lambda split: (None if split is None else
                         parallel.DeviceData.put(split, config.data.preprocess, mesh))
    functions = replicas.init_run(config, splits.train)
    return cls(config, splits, mesh, put(splits.train), put(splits.val), put(splits.test),
               functions, parallel.put_replicated(functions.state, mesh), profile)

  @property
  def steps_per_epoch(self) -> int:
    return train.steps_per_epoch(len(self.train), self.config.train.batch_size)

  def train_epoch(self, state, epoch: int):
    """Epoch `epoch` (from 1) in one compiled call: (state, metric sums, first bad step or -1)."""
    fns = self.functions
    return fns.train_epoch(state, self.train.images, self.train.labels, fns.keys_of_epoch(epoch),
                           self.config.train.batch_size,
                           train.Objective.from_config(self.config.train), self.mesh)

  @contextlib.contextmanager
  def profiling(self, epoch: int):
    """Around all of epoch `epoch`'s work, up to its fetched results: a jax.profiler trace if it
    is the profiled epoch. Also perfetto_trace.json.gz, which ui.perfetto.dev opens as it is."""
    if self.profile is None or epoch != self.profile.epoch:
      yield
      return
    log.info("Profiling epoch %d: a jax.profiler trace into %s", epoch, self.profile.directory)
    jax.profiler.start_trace(self.profile.directory, create_perfetto_trace=True)
    try:
      yield
    finally:
      jax.profiler.stop_trace()

  def evaluate(self, state, split: parallel.DeviceData) -> dict:
    """Metric sums over a whole split (with a leading replica axis for replicas)."""
    return self.functions.evaluate(state, split.images, split.labels,
                                   self.config.train.eval_batch_size, self.mesh,
                                   self.config.train.adversarial_epsilon)

  def with_population_batch_stats(self, state):
    """`state` with BatchNorm statistics recomputed over the training set
    (`train.population_batch_stats`, config.train.batchnorm_statistics="recomputed")."""
    stats = self.functions.population_batch_stats(state, self.train.images,
                                                  self.config.train.batch_size)
    return state.replace(batch_stats=stats)

  def log_model(self) -> None:
    fns = self.functions
    one = fns.one_model(fns.state)
    summary = models.summary(one.params, one.batch_stats, self.config.model)
    if fns.num_replicas == 1:
      log.info("Model summary:\n%s", summary)
      return
    log.info("Model summary (each replica):\n%s", summary)
    grid = [f"{self.config.num_seeds} seed(s)"] + [
        f"{name} ({', '.join(f'{v:g}' for v in values)})"
        for name, values in hyperparams.swept(self.config).items()]
    log.info("Training %d replicas in one vmapped program: %s.", fns.num_replicas,
             " x ".join(grid))


def _load_splits(config) -> data.Splits:
  splits = data.load(config.data)
  shape = lambda split: None if split is None else split.images.shape
  log.info("Data: %s; train %s, val %s, test %s", splits.source, shape(splits.train),
           shape(splits.val), shape(splits.test) or "kept out (config.data.use_test=False)")
  labels = max(int(split.labels.max()) for split in (splits.train, splits.val, splits.test)
               if split is not None and len(split))
  if labels >= config.model.num_classes:
    raise ConfigError(f"config.model.num_classes={config.model.num_classes}, but the data has "
                      f"labels up to {labels}. Set it to {labels + 1} (or more).")
  if config.train.batch_size > len(splits.train):
    raise ConfigError(f"config.train.batch_size={config.train.batch_size} is larger than the "
                      f"training set ({len(splits.train)} examples). Use a smaller batch size.")
  return splits


def _check_fits_in_memory(config, input_dim: int) -> None:
  """Refuse a model whose training state cannot fit (a typo such as hidden_sizes=1000000, or
  num_seeds=100000) with one paragraph, before allocating it: the parameters of every replica,
  counted abstractly, times 5 (gradients, two optimizer moments, a moving average), against half
  of the first device's memory (the host's on CPU)."""
  shapes = jax.eval_shape(lambda: models.build(config.model).init(
      {"params": jax.random.key(0)}, jnp.zeros((1, input_dim)), train=False))
  num_replicas = len(replicas.replica_settings(config))
  need = 5 * 4 * sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) * num_replicas
  try:  # this process's first device; CPUs report nothing, and then the host's memory counts
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # a backend without memory statistics
    stats = {}
  have = stats.get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if need > have / 2:
    raise ConfigError(
        f"This config's training state needs about {need / 2**30:.1f} GiB ({config.model.name} "
        f"{tuple(config.model.hidden_sizes)}, {num_replicas} replica(s)), more than half of the "
        f"{have / 2**30:.1f} GiB the device has. Use smaller "
        f"config.model.hidden_sizes or fewer replicas (config.num_seeds, config.sweep).")
