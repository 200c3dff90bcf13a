"""Many models in one program: seeds x a sweep's grid as a leading axis on the state, `jax.vmap`ped.

`config.num_seeds` and `config.sweep` (any field of `hyperparams.SWEEPABLE`) make a grid of
replicas. One vmapped program turns the R models' matrix products into batched products, so R
replicas cost far less than R runs when one small model leaves the machine idle, and a swept
value is data (one per replica), not a recompilation. `init_run` builds what a run needs, for one
model or many, behind the same interface.
"""

import dataclasses
import functools
import itertools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from mnist_jax import cpu_tuning, data, hyperparams, train


def replica_settings(config) -> list[dict]:
  """One {"seed", "group.field": value, ...} per replica: the product of the swept fields' values
  (the last varying fastest), each with config.num_seeds seeds.

  Replica k of a point uses seed config.seed + k: it starts from the single run's parameters and
  draws its keys and batches, and then drifts from it by the rounding of the batched products.
  """
  swept = hyperparams.swept(config)
  return [{"seed": config.seed + k, **dict(zip(swept, point))}
          for point in itertools.product(*swept.values()) for k in range(config.num_seeds)]


def hyperparams_of(settings: list[dict]) -> dict[str, jax.Array]:
  """The swept values of `replica_settings` as data: {"group.field": (R,) float32 array}."""
  names = [name for name in settings[0] if name != "seed"]
  return {name: jnp.array([s[name] for s in settings], jnp.float32) for name in names}


def create_replica_states(config, input_dim: int = 784,
                          steps_per_epoch: Optional[int] = None) -> train.TrainState:
  """Stacked TrainStates (leading axis R) for `replica_settings(config)`, made by one vmap."""
  settings = replica_settings(config)
  seeds = jnp.array([r["seed"] for r in settings])

  def one(seed, values):
    return train.create_train_state(train.run_keys(seed, config.rng_impl)["init"], config,
                                    input_dim, steps_per_epoch, values)

  return jax.jit(jax.vmap(one))(seeds, hyperparams_of(settings))


@functools.partial(cpu_tuning.jit, static_argnames=("batch_size", "objective", "mesh"),
                   donate_argnames=("states",))
def train_epoch_replicas(states: train.TrainState, images: jax.Array, labels: jax.Array,
                         keys: jax.Array, batch_size: int,
                         objective: train.Objective = train.Objective(),
                         mesh: Optional[jax.sharding.Mesh] = None,
                         hyperparams: Optional[dict] = None):
  """`train.train_epoch` for R independent replicas: `states`, `keys` and the `hyperparams`
  values have a leading axis R."""
  one = lambda state, key, values: train.train_epoch.__wrapped__(
      state, images, labels, key, batch_size, objective, mesh, values)
  return jax.vmap(one)(states, keys, hyperparams or {})


@functools.partial(cpu_tuning.jit, static_argnames=("batch_size", "mesh", "adversarial_epsilon"))
def evaluate_replicas(states: train.TrainState, images: jax.Array, labels: jax.Array,
                      batch_size: int = 2000, mesh: Optional[jax.sharding.Mesh] = None,
                      adversarial_epsilon: float = 0.0, hyperparams: Optional[dict] = None):
  """`train.evaluate` for R replicas: metric sums with a leading axis R. A swept
  train.adversarial_epsilon in `hyperparams` attacks each replica with its own."""
  epsilons = (hyperparams or {}).get("train.adversarial_epsilon")
  if epsilons is None:
    return jax.vmap(lambda state: train.evaluate.__wrapped__(
        state, images, labels, batch_size, mesh, adversarial_epsilon))(states)
  return jax.vmap(lambda state, eps: train.evaluate.__wrapped__(
      state, images, labels, batch_size, mesh, eps))(states, epsilons)


@functools.partial(cpu_tuning.jit, static_argnames=("batch_size",))
def population_batch_stats_replicas(states: train.TrainState, images: jax.Array, batch_size: int):
  """`train.population_batch_stats` of each of R replicas: a leading axis R."""
  return jax.vmap(lambda state: train.population_batch_stats.__wrapped__(
      state, images, batch_size))(states)


@dataclasses.dataclass(frozen=True)
class RunFunctions:
  """A run's initial state and the functions that train it, for one model or R replicas alike.

  With replicas, `state` has a leading axis R, `keys_of_epoch(epoch)` returns R keys, and
  `train_epoch` / `evaluate` (which hold the sweep's values) return metric sums with a leading
  axis R.
  """
  state: train.TrainState
  settings: list[dict]  # replica_settings(config): one entry per model
  keys_of_epoch: Callable[[int], jax.Array]
  train_epoch: Callable
  evaluate: Callable
  population_batch_stats: Callable

  @property
  def num_replicas(self) -> int:
    return len(self.settings)

  def one_model(self, state, replica: int = 0) -> train.TrainState:
    """Replica `replica` of a (stacked) state; the state itself for a single model."""
    return select(state, replica) if self.num_replicas > 1 else state


def select(states, replica: int):
  """Replica `replica` of stacked states (or of anything with a leading replica axis)."""
  return jax.tree.map(lambda x: x[replica], states)


def init_run(config, train_split: data.Split) -> RunFunctions:
  """The state, keys and compiled functions of a run of `config` on `train_split` (which gives
  the input size, and the steps per epoch that schedules count in): one model, or its replicas."""
  input_dim = math.prod(train_split.images.shape[1:])
  steps_per_epoch = train.steps_per_epoch(len(train_split), config.train.batch_size)
  settings = replica_settings(config)
  if len(settings) == 1:
    keys = jax.jit(train.run_keys, static_argnums=1)(config.seed, config.rng_impl)
    state = train.create_train_state(keys["init"], config, input_dim, steps_per_epoch)
    return RunFunctions(state, settings, functools.partial(train.epoch_key, keys["epochs"]),
                        train.train_epoch, train.evaluate, train.population_batch_stats)
  seeds = jnp.array([r["seed"] for r in settings])
  keys_of_epoch = jax.jit(lambda epoch: jax.vmap(
      lambda s: train.epoch_key(train.run_keys(s, config.rng_impl)["epochs"], epoch))(seeds))
  values = hyperparams_of(settings)
  return RunFunctions(create_replica_states(config, input_dim, steps_per_epoch), settings,
                      keys_of_epoch,
                      functools.partial(train_epoch_replicas, hyperparams=values),
                      functools.partial(evaluate_replicas, hyperparams=values),
                      population_batch_stats_replicas)
