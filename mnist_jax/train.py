"""Training and evaluation: pure jitted steps, a whole epoch as one compiled scan, and the run loop.

Notebooks use the pure pieces directly:

    state = create_train_state(key, config)
    state, metrics = train_step(state, batch, key)     # batch = {"image", "label"[, "mask"]}
    metrics = eval_step(state, batch)

Metrics are SUMS over the batch (`loss`, `correct`, `count`), so they add up exactly across
batches and padded examples (mask 0) count for nothing; `summarize` turns them into means.

The whole-epoch and whole-split functions (train_epoch, evaluate, their _replicas forms) are
compiled with COMPILER_OPTIONS, which jax accepts only on an outermost jit: to call one inside your
own jit, call its `__wrapped__` function.

Keys are derived, never threaded: the epoch's key is `fold_in(run_key, epoch)`, a step's dropout key
`fold_in(dropout_key, step)`. A run resumed at epoch k therefore draws exactly what an
uninterrupted run would have drawn.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from mnist_jax import checkpoints, data, models
from mnist_jax.config import ConfigError

log = logging.getLogger("mnist_jax")


def _compiler_options() -> dict:
  """XLA options for the whole-epoch and whole-split functions below.

  jaxlib 0.10's XLA:CPU hands matrix products to YNNPACK by default; for this repo's small batches
  its Eigen path is faster: one 32x784 @ 784x100 product takes 54 us instead of 110 us, and whole
  epochs (same process, interleaved, 2-core CPU) drop from 0.55 to 0.48 s (adam_mlp) and from 1.06 to
  0.97 s (sigmoid_mlp). Other backends ignore xla_cpu_* options. The option is experimental, so it
  is set only for jaxlib versions it was measured on (elsewhere an unknown option is an error).
  """
  import jaxlib  # pylint: disable=import-outside-toplevel
  major_minor = tuple(int(part) for part in jaxlib.__version__.split(".")[:2])
  return {"xla_cpu_experimental_ynn_fusion_type": ""} if major_minor == (0, 10) else {}


COMPILER_OPTIONS = _compiler_options()
# jax.jit with COMPILER_OPTIONS, for the compiled functions a caller runs directly (whole epochs,
# whole splits); jax allows options only there, not on train_step nested in them.
_jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)


class TrainState(train_state.TrainState):
  """Step, parameters, optimizer state, BatchNorm statistics and the weights' moving average:
  everything a resumed run needs."""
  batch_stats: Any = flax.struct.field(default_factory=dict)
  # Exponential moving average of `params` (config.train.ema_decay), updated by every train_step
  # and used by evaluation and prediction; {} = off.
  ema_params: Any = flax.struct.field(default_factory=dict)
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


class RunInterrupted(RuntimeError):
  """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can be resumed."""


# ---------------------------------------------------------------------------------------------
# State and optimizer


def make_optimizer(opt_config, steps_per_epoch: Optional[int] = None,
                   epochs: Optional[int] = None) -> optax.GradientTransformation:
  """An optax optimizer with Keras's hyperparameter conventions.

  The learning rate is injected (`optax.inject_hyperparams`), so it is part of the optimizer
  state: logged per epoch, and a vector of them can be vmapped for a sweep.
  """
  learning_rate = opt_config.learning_rate
  if opt_config.schedule != "constant":
    if not steps_per_epoch or not epochs:
      raise ConfigError(f"schedule {opt_config.schedule!r} needs steps_per_epoch and epochs.")
    total = steps_per_epoch * epochs
    if opt_config.schedule == "cosine":
      learning_rate = optax.cosine_decay_schedule(opt_config.learning_rate, total)
    else:
      warmup = int(opt_config.warmup_epochs * steps_per_epoch)
      learning_rate = optax.warmup_cosine_decay_schedule(
          0.0, opt_config.learning_rate, warmup, total)
  name = opt_config.name
  if name == "adam":
    # Keras adds epsilon to sqrt(v) before bias correction; the difference at eps=1e-7 is < 1e-6.
    tx = optax.inject_hyperparams(optax.adam)(
        learning_rate, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  elif name == "adamw":
    tx = optax.inject_hyperparams(optax.adamw)(
        learning_rate, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
        weight_decay=opt_config.weight_decay)
  elif name == "rmsprop":
    # Keras: v = rho v + (1-rho) g^2; w -= lr g / sqrt(v + eps), v starting at 0.
    tx = optax.inject_hyperparams(optax.rmsprop, static_args=("eps_in_sqrt", "momentum"))(
        learning_rate, decay=opt_config.rho, eps=opt_config.eps, eps_in_sqrt=True,
        momentum=opt_config.momentum or None)
  elif name == "sgd":
    tx = optax.inject_hyperparams(optax.sgd, static_args=("momentum", "nesterov"))(
        learning_rate, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov)
  else:
    raise ConfigError(f"Unknown optimizer {name!r}: use adam, adamw, rmsprop or sgd.")
  if opt_config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  if opt_config.max_norm:
    tx = optax.chain(tx, max_norm_projection(opt_config.max_norm))
  return tx


def max_norm_projection(max_norm: float) -> optax.GradientTransformation:
  """After the step, scale each hidden unit's incoming weights (a column of a hidden kernel) back
  to L2 norm `max_norm` if larger (Srivastava et al. 2014): dropout nets can then take large
  steps without their weights growing without bound. The logits layer is left free.
  """
  def project(path, update, param):
    names = [getattr(k, "key", None) for k in path]
    if not (names[-1] == "kernel" and str(names[0]).startswith("dense_")):
      return update
    new = param + update
    norms = jnp.sqrt(jnp.sum(new * new, axis=0, keepdims=True))
    return new * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12)) - param

  def update_fn(updates, state, params):
    return jax.tree_util.tree_map_with_path(project, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def create_train_state(key: jax.Array, config, input_dim: int = 784,
                       steps_per_epoch: Optional[int] = None) -> TrainState:
  """A fresh TrainState: parameters initialised from `key`, optimizer from `config.optimizer`.

  Built by one compiled call rather than a dozen small eager ones (each a compilation, or a
  cache lookup, at start-up).
  """
  model = models.MLP.from_config(config.model)
  tx = make_optimizer(config.optimizer, steps_per_epoch, config.train.epochs)
  ema_decay = float(config.train.ema_decay)

  @jax.jit
  def create(key):
    params_and_stats = model.init({"params": key}, jnp.zeros((1, input_dim), jnp.float32),
                                  train=False)
    params = params_and_stats["params"]
    return TrainState.create(apply_fn=model.apply, params=params,
                             batch_stats=params_and_stats.get("batch_stats", {}), tx=tx,
                             ema_params=jax.tree.map(jnp.copy, params) if ema_decay else {},
                             ema_decay=ema_decay)

  return create(key)


def learning_rate(state: TrainState) -> jax.Array:
  """The learning rate of the most recent step (from the injected hyperparameters)."""
  is_injected = lambda x: hasattr(x, "hyperparams")
  injected = [s for s in jax.tree.leaves(state.opt_state, is_leaf=is_injected) if is_injected(s)]
  return injected[0].hyperparams["learning_rate"]


# ---------------------------------------------------------------------------------------------
# Steps


def _batch_metrics(logits, labels, mask, losses):
  return {
      "loss": jnp.sum(losses * mask),
      "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "count": jnp.sum(mask),
  }


def _mask(batch):
  return batch["mask"] if "mask" in batch else jnp.ones(batch["label"].shape, jnp.float32)


@functools.partial(jax.jit, static_argnames=("label_smoothing",))
def train_step(state: TrainState, batch: dict, rng: jax.Array, label_smoothing: float = 0.0):
  """One optimizer step: returns the new state and the batch's metric sums.

  The loss is the mean cross-entropy over the real (mask 1) examples, so a padded tail batch
  takes the same step Keras takes on its short last batch.
  """
  mask = _mask(batch)
  labels = batch["label"]

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
        mask=mask, rngs={"dropout": rng}, mutable=["batch_stats"])
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0), (logits, losses, updates)

  grads, (logits, losses, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
  if state.ema_decay:
    state = state.replace(ema_params=ema_update(state.ema_params, state.params, state.ema_decay,
                                                state.step))
  return state, _batch_metrics(logits, labels, mask, losses)


def ema_update(ema, params, decay: float, step):
  """ema <- d ema + (1 - d) params, with d = min(decay, (1 + step) / (10 + step)) (TensorFlow's
  ExponentialMovingAverage with num_updates): early steps forget the random initial weights fast.
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  return jax.tree.map(lambda e, p: e + (1.0 - d) * (p - e), ema, params)


@jax.jit
def eval_step(state: TrainState, batch: dict):
  """Metric sums of the model in inference mode (dropout off, BatchNorm running statistics)."""
  logits = predict_logits(state, batch["image"])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return _batch_metrics(logits, batch["label"], _mask(batch), losses)


def predict_logits(state: TrainState, images: jax.Array) -> jax.Array:
  """Inference-mode logits, from the moving average of the weights when the state keeps one."""
  params = state.ema_params or state.params
  return state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                        train=False)


def to_host(tree):
  """numpy copies of (replicated) arrays, also of arrays that span the devices of several hosts."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x),
                      tree)


def summarize(sums: dict) -> dict:
  """Metric sums -> {'loss': mean loss, 'accuracy': fraction correct}.

  Python floats; lists of floats for replicas (sums with a leading axis).
  """
  sums = to_host(sums)
  count = np.maximum(sums["count"], 1.0)
  return {"loss": (sums["loss"] / count).tolist(), "accuracy": (sums["correct"] / count).tolist()}


# ---------------------------------------------------------------------------------------------
# Whole epochs and whole splits, each one compiled call


def _batched_indices(order: jax.Array, batch_size: int):
  """(num_batches, batch_size) indices and mask; the tail batch is padded with masked zeros."""
  n = order.shape[0]
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  indices = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)]).reshape(num_batches, -1)
  mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32).reshape(num_batches, -1)
  return indices, mask


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh with axis "data" over the first `num_devices` devices (0 = all of them).

  Across hosts `jax.devices()` lists every process's devices, so the same call spans a pod.
  """
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"config.mesh.num_devices={num_devices}, but only {len(devices)} "
                        f"devices are visible ({devices[0].platform}).")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def _replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def put_replicated(tree, mesh: jax.sharding.Mesh):
  """A copy of every array on every device of the mesh, across hosts too (each process holds
  the same values: the same data files, the same seed)."""
  def put(x):
    x = np.asarray(x)
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)  # int64 -> int32, as jnp
    return jax.make_array_from_callback(x.shape, _replicated(mesh), lambda index: x[index])
  return jax.tree.map(put, tree)


def _shard_batch(batch: dict, mesh: Optional[jax.sharding.Mesh]) -> dict:
  """Split the batch axis over the mesh; parameters stay replicated, XLA adds the all-reduce."""
  if mesh is None or mesh.size == 1:
    return batch
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.lax.with_sharding_constraint(batch, sharding)


@functools.partial(_jit, static_argnames=("batch_size", "label_smoothing", "mesh"),
                   donate_argnames=("state",))
def train_epoch(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array,
                batch_size: int, label_smoothing: float = 0.0,
                mesh: Optional[jax.sharding.Mesh] = None):
  """One pass over (images, labels) in a fresh random order: `lax.scan` over `train_step`.

  Every example is used exactly once, the last partial batch included (padded and masked, so
  there is one compiled shape). With a `mesh`, each batch is sharded over its "data" axis.
  Returns the new state, the epoch's metric sums, and the index of the first step whose loss
  was not finite (-1 if none).
  """
  perm_key, dropout_key = jax.random.split(key)
  indices, mask = _batched_indices(jax.random.permutation(perm_key, images.shape[0]), batch_size)

  def step(state, inputs):
    i, idx, m = inputs
    batch = _shard_batch({"image": images[idx], "label": labels[idx], "mask": m}, mesh)
    state, metrics = train_step(state, batch, jax.random.fold_in(dropout_key, i), label_smoothing)
    return state, metrics

  state, per_step = jax.lax.scan(step, state, (jnp.arange(indices.shape[0]), indices, mask))
  sums = jax.tree.map(jnp.sum, per_step)
  bad = ~jnp.isfinite(per_step["loss"])
  first_bad = jnp.where(jnp.any(bad), jnp.argmax(bad), -1)
  return state, sums, first_bad


@functools.partial(_jit, static_argnames=("batch_size", "mesh"))
def evaluate(state: TrainState, images: jax.Array, labels: jax.Array, batch_size: int = 2000,
             mesh: Optional[jax.sharding.Mesh] = None):
  """Metric sums over a whole split, in one compiled call."""
  batch_size = min(batch_size, images.shape[0])
  indices, mask = _batched_indices(jnp.arange(images.shape[0]), batch_size)

  def step(sums, inputs):
    idx, m = inputs
    batch = _shard_batch({"image": images[idx], "label": labels[idx], "mask": m}, mesh)
    metrics = eval_step(state, batch)
    return jax.tree.map(jnp.add, sums, metrics), None

  zeros = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  sums, _ = jax.lax.scan(step, jax.tree.map(jnp.float32, zeros), (indices, mask))
  return sums


# ---------------------------------------------------------------------------------------------
# Many replicas (seeds, learning rates) in one compiled program


@functools.partial(_jit, static_argnames=("batch_size", "label_smoothing", "mesh"),
                   donate_argnames=("states",))
def train_epoch_replicas(states: TrainState, images: jax.Array, labels: jax.Array,
                         keys: jax.Array, batch_size: int, label_smoothing: float = 0.0,
                         mesh: Optional[jax.sharding.Mesh] = None):
  """`train_epoch` for R independent replicas: `states` and `keys` have a leading axis R.

  One vmapped program: the R models' matrix multiplies become one batched multiply, so R seeds
  cost far less than R runs when a single small model leaves the machine idle.
  """
  # train_epoch's function itself: jax takes compiler options only on the outermost jit.
  one = lambda state, key: train_epoch.__wrapped__(state, images, labels, key, batch_size,
                                                   label_smoothing, mesh)
  return jax.vmap(one)(states, keys)


@functools.partial(_jit, static_argnames=("batch_size", "mesh"))
def evaluate_replicas(states: TrainState, images: jax.Array, labels: jax.Array,
                      batch_size: int = 2000, mesh: Optional[jax.sharding.Mesh] = None):
  """`evaluate` for R replicas: metric sums with a leading axis R."""
  return jax.vmap(lambda state: evaluate.__wrapped__(state, images, labels, batch_size, mesh))(
      states)


def with_learning_rate(state: TrainState, value) -> TrainState:
  """The state with its injected (constant) learning rate replaced, e.g. for a sweep."""
  is_injected = lambda x: hasattr(x, "hyperparams")
  def replace(s):
    if not is_injected(s):
      return s
    current = s.hyperparams["learning_rate"]
    return s._replace(hyperparams={**s.hyperparams,
                                   "learning_rate": jnp.asarray(value, current.dtype)})
  return state.replace(opt_state=jax.tree.map(replace, state.opt_state, is_leaf=is_injected))


def replica_settings(config) -> list[dict]:
  """One {'seed', 'learning_rate'} per replica: the grid of config.sweep x config.num_seeds.

  Replica k of an N-seed run uses seed config.seed + k, so it equals a single run with that seed.
  """
  rates = tuple(config.sweep.learning_rate) or (config.optimizer.learning_rate,)
  return [{"seed": config.seed + k, "learning_rate": float(lr)}
          for lr in rates for k in range(config.num_seeds)]


def create_replica_states(config, input_dim: int = 784,
                          steps_per_epoch: Optional[int] = None) -> TrainState:
  """Stacked TrainStates (leading axis R) for `replica_settings(config)`, made by one vmap."""
  settings = replica_settings(config)
  seeds = jnp.array([r["seed"] for r in settings])
  rates = jnp.array([r["learning_rate"] for r in settings], jnp.float32)

  def one(seed, rate):
    state = create_train_state(run_keys(seed, config.rng_impl)["init"], config, input_dim,
                               steps_per_epoch)
    return with_learning_rate(state, rate)

  return jax.jit(jax.vmap(one))(seeds, rates)


def init_run(config, input_dim: int = 784, steps_per_epoch: Optional[int] = None):
  """(state, keys_of_epoch, train_epoch fn, evaluate fn) of a run: one model, or its replicas.

  One model when replica_settings(config) has one entry; else stacked replica states with the
  vmapped functions. `keys_of_epoch(epoch)` is the key (or keys) to pass that epoch.
  """
  replicas = replica_settings(config)
  if len(replicas) == 1:
    keys = jax.jit(run_keys, static_argnums=1)(config.seed, config.rng_impl)
    state = create_train_state(keys["init"], config, input_dim, steps_per_epoch)
    return state, functools.partial(epoch_key, keys["epochs"]), train_epoch, evaluate
  seeds = jnp.array([r["seed"] for r in replicas])
  keys_of_epoch = jax.jit(lambda epoch: jax.vmap(
      lambda s: epoch_key(run_keys(s, config.rng_impl)["epochs"], epoch))(seeds))
  return (create_replica_states(config, input_dim, steps_per_epoch), keys_of_epoch,
          train_epoch_replicas, evaluate_replicas)


@functools.partial(_jit, static_argnames=("batch_size",))
def predict_probabilities(state: TrainState, images: jax.Array, batch_size: int = 2000):
  """Softmax probabilities (N, classes) for a whole split, in one compiled call."""
  batch_size = min(batch_size, images.shape[0])
  indices, _ = _batched_indices(jnp.arange(images.shape[0]), batch_size)
  probs = jax.lax.map(lambda idx: jax.nn.softmax(predict_logits(state, images[idx])), indices)
  return probs.reshape(-1, probs.shape[-1])[:images.shape[0]]


# ---------------------------------------------------------------------------------------------
# Keys

# config.rng_impl -> jax's name. threefry: counter-based, the same bits on every platform and under
# vmap as in a loop; rbg, unsafe_rbg: XLA's RngBitGenerator, cheaper bits (dropout masks) but
# platform-dependent, and vmapped replicas draw their bits from the first replica's key.
RNG_IMPLS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}


def run_keys(seed: int, impl: str = "threefry") -> dict[str, jax.Array]:
  """Independent keys for init and for the epochs, derived from the config's seed.

  `impl` (config.rng_impl) is the generator of every key derived from them: init, shuffling and
  dropout.
  """
  root = jax.random.key(seed, impl=RNG_IMPLS[impl])
  return {"init": jax.random.fold_in(root, 0), "epochs": jax.random.fold_in(root, 1)}


def epoch_key(epochs_key: jax.Array, epoch: int) -> jax.Array:
  return jax.random.fold_in(epochs_key, epoch)


# ---------------------------------------------------------------------------------------------
# Model summary


def model_summary(state: TrainState, config) -> str:
  """A Keras-like table: layer, output shape, parameter counts."""
  rows = [("Layer", "Output shape", "Params")]
  trainable = non_trainable = 0
  activated = "batchnorm_" if config.model.hidden_batchnorm else "dense_"  # then the activation
  for name in sorted(state.params, key=_layer_position):
    params = state.params[name]
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    stats = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.batch_stats.get(name, {})))
    trainable += count
    non_trainable += stats
    width = params["bias"].shape[0]
    kind = "Dense" if "kernel" in params else "BatchNorm"
    if name.startswith(activated):
      kind += f" ({config.model.activation})"
    elif name == "logits":
      kind += " (softmax in loss)"
    rows.append((f"{name}: {kind}", f"(None, {width})",
                 f"{count + stats:,}" + (f" ({stats:,} non-trainable)" if stats else "")))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  lines.append(f"Total params: {trainable + non_trainable:,} "
               f"(trainable {trainable:,}, non-trainable {non_trainable:,})")
  return "\n".join(lines)


def _layer_position(name: str) -> tuple:
  """Order of the layers in the network (parameter dicts come sorted by name)."""
  if name == "input_batchnorm":
    return (-1, 0)
  if name == "logits":
    return (math.inf, 0)
  kind, _, index = name.rpartition("_")
  return (int(index), 0 if kind == "dense" else 1)


# ---------------------------------------------------------------------------------------------
# The run loop


@dataclasses.dataclass
class DeviceData:
  """A split on the device, preprocessed once."""
  images: jax.Array
  labels: jax.Array

  @classmethod
  def put(cls, split: data.Split, preprocess: str,
          mesh: Optional[jax.sharding.Mesh] = None) -> "DeviceData":
    """Preprocess and place the split; with a mesh, replicated on every device of it.

    Each step then gathers its batch rows on the device that computes them, so no host
    pipeline feeds the devices (MNIST is a few hundred MB as float32 on any accelerator).
    """
    images, labels = (split.images, split.labels) if mesh is None else put_replicated(
        (split.images, split.labels), mesh)
    return cls(*_preprocess_split(images, labels, preprocess))

  def __len__(self):
    return self.labels.shape[0]


@functools.partial(jax.jit, static_argnames=("kind",))
def _preprocess_split(images, labels, kind: str):
  return data.preprocess(images, kind), jnp.asarray(labels, jnp.int32)


def _config_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def _is_primary() -> bool:
  """Process 0 writes the run's files; orbax coordinates checkpoint writes across processes."""
  return jax.process_index() == 0


def _write_atomic(path: pathlib.Path, text: str) -> None:
  """Write a temporary file, then rename it: a kill leaves the old file or the new, never half."""
  if not _is_primary():
    return
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


# What a run and its report write in its workdir (and what --overwrite deletes).
_RUN_FILES = ("checkpoints", "checkpoints_best", "metrics.jsonl", "summary.json", "config.json",
              "report.md", "figures", "tensorboard", "classification_report.txt",
              "classification_report.json", "confusion_matrix.csv", "misclassified.json")


def _check_workdir(workdir: pathlib.Path, config, overwrite: bool) -> None:
  """Never overwrite a finished run, or mix two configs in one workdir, by accident."""
  saved = workdir / "config.json"
  if overwrite or not saved.exists():
    return
  if json.loads(saved.read_text()) != json.loads(_config_json(config)):
    raise ConfigError(
        f"{workdir} holds a run with a different config (see {saved}). Use a new --workdir, "
        f"or pass --overwrite to delete that run and start again.")
  if (workdir / "summary.json").exists():
    raise ConfigError(
        f"{workdir} holds a finished run (see {workdir / 'summary.json'}). Use a new "
        f"--workdir, or pass --overwrite to delete it and train again.")


def _prepare_workdir(workdir: pathlib.Path, config, overwrite: bool) -> None:
  """Delete the old run if asked to, then record the config (the mark of whose workdir it is)."""
  try:
    if overwrite and _is_primary():
      for name in _RUN_FILES:
        target = workdir / name
        if target.is_dir():
          shutil.rmtree(target)
        elif target.exists():
          target.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    _write_atomic(workdir / "config.json", _config_json(config))
  except OSError as e:
    raise ConfigError(f"Cannot write to workdir {workdir} ({e.strerror}). "
                      f"Choose a writable --workdir.") from None


def _load_splits(config) -> data.Splits:
  """The data, checked against the config before anything is written."""
  splits = data.load(config.data)
  log.info("Data: %s; train %s, val %s, test %s", splits.source, splits.train.images.shape,
           None if splits.val is None else splits.val.images.shape, splits.test.images.shape)
  if config.train.batch_size > len(splits.train):
    raise ConfigError(f"config.train.batch_size={config.train.batch_size} is larger than the "
                      f"training set ({len(splits.train)} examples). Use a smaller batch size.")
  return splits


def _read_history(workdir: pathlib.Path, up_to_epoch: int) -> list[dict]:
  """The records of epochs 1..up_to_epoch in metrics.jsonl, which is rewritten to hold only them.

  Later epochs are trained again after a resume, so their records go, as does a line cut short
  by a kill.
  """
  path = workdir / "metrics.jsonl"
  records = {}
  for line in path.read_text().splitlines() if path.exists() else ():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and 1 <= record.get("epoch", 0) <= up_to_epoch:
      records[record["epoch"]] = record
  missing = sorted(set(range(1, up_to_epoch + 1)) - set(records))
  if missing:
    log.warning("%s has no record of epochs %s: early stopping and the best checkpoint go by "
                "the records it has.", path, missing)
  history = [records[epoch] for epoch in sorted(records)]
  _write_atomic(path, "".join(json.dumps(r) + "\n" for r in history))
  return history


@dataclasses.dataclass(frozen=True)
class Best:
  """The best epoch so far by the monitored validation metric, and the epochs trained since."""
  epoch: int
  value: float
  waited: int


def best_epoch(history: list[dict], monitor: str) -> Optional[Best]:
  """The best record of `history` by `monitor` (the first of equals); None without validation.

  Derived from the per-epoch records alone, not kept in the checkpoint, so a resumed run
  continues with exactly the patience counter an uninterrupted run has.
  """
  sign = -1.0 if monitor.endswith("loss") else 1.0
  best = None
  for record in history:
    if monitor in record and (best is None or sign * record[monitor] > sign * best[monitor]):
      best = record
  if best is None:
    return None
  return Best(best["epoch"], best[monitor], history[-1]["epoch"] - best["epoch"])


def _patience_exhausted(best: Optional[Best], patience: int) -> bool:
  return patience > 0 and best is not None and best.waited >= patience


def _all_finite(tree) -> bool:
  return all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(to_host(tree)))


def _raise_if_diverged(state: TrainState, first_bad, loss, epoch: int,
                       steps_per_epoch: int, checkpointer: checkpoints.Checkpointer) -> None:
  """Stop at a non-finite loss, or parameters (the epoch's last update overflowed), before
  anything of this epoch is saved: the checkpoints keep the last good epoch.

  With replicas, `first_bad` and `loss` have one entry per replica, and any replica stops all.
  """
  first_bad = to_host(first_bad).reshape(-1)
  if np.any(first_bad >= 0):
    replica = int(np.argmin(np.where(first_bad >= 0, first_bad, np.iinfo(np.int32).max)))
    which = f" in replica {replica}" if first_bad.size > 1 else ""
    what = f"the training loss became {np.ravel(loss)[replica]}{which}"
    step = int(first_bad[replica]) + 1
  elif not _all_finite(state.params):
    what, step = "the parameters became NaN or infinite", steps_per_epoch
  else:
    return
  lr = float(np.max(to_host(learning_rate(state))))
  good = checkpointer.epochs()
  kept = (f"The last good checkpoint (epoch {good[-1]}) is in {checkpointer.directory}."
          if good else "No checkpoint had been saved yet.")
  raise TrainingDiverged(
      f"Training diverged: {what} at epoch {epoch}, step {step} of {steps_per_epoch} (learning "
      f"rate {lr:g}). This usually means the learning rate is too high: try "
      f"--config.optimizer.learning_rate={lr / 10:g} with a new --workdir (or --overwrite). "
      f"{kept}")


def _add_metrics(record: dict, prefix: str, metrics: dict) -> None:
  """Put metrics into a record; replicas' lists go under record["replicas"], their mean on top."""
  for name, value in metrics.items():
    if isinstance(value, list):
      record.setdefault("replicas", {})[prefix + name] = value
      value = float(np.mean(value))
    record[prefix + name] = value


def _progress_line(record: dict, epochs: int) -> str:
  parts = [f"Epoch {record['epoch']}/{epochs}", f"{record['seconds']:.2f}s",
           f"loss: {record['train_loss']:.4f}", f"accuracy: {record['train_accuracy']:.4f}"]
  if "val_loss" in record:
    parts += [f"val_loss: {record['val_loss']:.4f}", f"val_accuracy: {record['val_accuracy']:.4f}"]
  return " - ".join(parts)


class _StopSignals:
  """Turns SIGTERM/SIGINT into a flag checked between epochs, so the run can checkpoint and stop."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook kernels): keep defaults
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    log.warning("%s received: finishing this epoch, then saving a checkpoint.", self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _resume(workdir: pathlib.Path, state: TrainState, checkpointer: checkpoints.Checkpointer,
            best_checkpointer: Optional[checkpoints.Checkpointer]) -> tuple:
  """(state, epoch, history) of the newest usable checkpoint; (state, 0, []) if there is none.

  Checkpoints newer than the one restored are damaged, or were saved just before a kill ended
  the run between its two saves: the epochs after the restored one are trained again, and
  saved again, bit for bit as before.
  """
  restored = checkpointer.restore(state)
  state, start_epoch = restored if restored is not None else (state, 0)
  for each in (checkpointer, best_checkpointer):
    if each is not None:
      each.delete_unfinished_saves()
      each.discard_after(start_epoch)
  if restored is not None:
    log.info("Resuming from the checkpoint after epoch %d in %s.", start_epoch,
             checkpointer.directory)
  return state, start_epoch, _read_history(workdir, start_epoch)


def train_and_evaluate(config, workdir: str | pathlib.Path, overwrite: bool = False):
  """Train `config` in `workdir`, resuming from its last checkpoint if it has one.

  Writes config.json, metrics.jsonl (one record per epoch), checkpoints/ (the last few epochs),
  checkpoints_best/ (with validation: the best epoch by config.train.monitor) and summary.json.
  Returns the final state (with early stopping and restore_best: the best epoch's) and the
  history (dict of per-epoch lists, like Keras's History).
  """
  workdir = pathlib.Path(workdir)
  _check_workdir(workdir, config, overwrite)
  splits = _load_splits(config)
  _prepare_workdir(workdir, config, overwrite)

  batch_size = config.train.batch_size
  mesh = make_mesh(config.mesh.num_devices)
  if mesh.size > 1:
    log.info("Data parallel over %d devices: each batch of %d is split %s.", mesh.size,
             batch_size, "evenly" if batch_size % mesh.size == 0 else "unevenly (XLA pads it)")
  train = DeviceData.put(splits.train, config.data.preprocess, mesh)
  val = None if splits.val is None else DeviceData.put(splits.val, config.data.preprocess, mesh)
  test = DeviceData.put(splits.test, config.data.preprocess, mesh)
  steps_per_epoch = math.ceil(len(train) / batch_size)

  replicas = replica_settings(config)
  state, keys_of_epoch, run_epoch, run_evaluate = init_run(config, train.images.shape[1],
                                                           steps_per_epoch)
  if len(replicas) == 1:
    log.info("Model summary:\n%s", model_summary(state, config))
  else:
    log.info("Model summary (each replica):\n%s",
             model_summary(jax.tree.map(lambda x: x[0], state), config))
    log.info("Training %d replicas in one vmapped program (seed, learning rate): %s",
             len(replicas), ", ".join(f"({r['seed']}, {r['learning_rate']:g})" for r in replicas))
  state = put_replicated(state, mesh)

  checkpointer = checkpoints.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
  best_checkpointer = (None if val is None else
                       checkpoints.Checkpointer(workdir / "checkpoints_best", keep=1))
  try:  # closing waits for the checkpoint being written in the background, also on errors
    state, epoch, history = _resume(workdir, state, checkpointer, best_checkpointer)
    epochs, patience, monitor = (config.train.epochs, config.train.early_stopping_patience,
                                 config.train.monitor)
    best = best_epoch(history, monitor)

    with _StopSignals() as signals:
      while epoch < epochs and not _patience_exhausted(best, patience):
        epoch += 1
        started = time.perf_counter()
        state, sums, first_bad = run_epoch(state, train.images, train.labels,
                                           keys_of_epoch(epoch), batch_size,
                                           config.train.label_smoothing, mesh)
        metrics = summarize(sums)
        _raise_if_diverged(state, first_bad, metrics["loss"], epoch, steps_per_epoch,
                           checkpointer)
        record = {"epoch": epoch, "step": int(np.max(to_host(state.step)))}
        _add_metrics(record, "", {"learning_rate": to_host(learning_rate(state)).tolist()})
        _add_metrics(record, "train_", metrics)
        if val is not None:
          _add_metrics(record, "val_", summarize(run_evaluate(
              state, val.images, val.labels, config.train.eval_batch_size, mesh)))
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if _is_primary():
          with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info(_progress_line(record, epochs))

        best = best_epoch(history, monitor)
        if best is not None and best.epoch == epoch:  # written before the regular save: see _resume
          best_checkpointer.save(epoch, state)
          best_checkpointer.wait()
        finished = epoch == epochs or _patience_exhausted(best, patience)
        if finished or signals.received or epoch % config.train.checkpoint_every == 0:
          checkpointer.save(epoch, state)
        if signals.received and not finished:
          raise RunInterrupted(
              f"Stopped by {signals.received} after epoch {epoch} of {epochs}; checkpoint saved "
              f"in {checkpointer.directory}. Run the same command again to resume.")

    stopped_early = _patience_exhausted(best, patience)
    if stopped_early:
      log.info("Early stopping after epoch %d: %s has not improved for %d epochs (best %.4f, "
               "epoch %d).", epoch, monitor, best.waited, best.value, best.epoch)
    steps, tested_epoch = int(np.max(to_host(state.step))), epoch
    if patience and config.train.restore_best and best is not None and best.epoch != epoch:
      state, tested_epoch = _restore_best(state, best, best_checkpointer, epoch)
    # Evaluated while the last checkpoint is written; the run is marked finished (summary.json)
    # only once it is complete.
    test_metrics = summarize(run_evaluate(state, test.images, test.labels,
                                          config.train.eval_batch_size, mesh))
  finally:
    for each in (checkpointer, best_checkpointer):
      if each is not None:
        each.close()
  summary = {}
  _add_metrics(summary, "test_", test_metrics)
  if len(replicas) > 1:
    summary["test_accuracy_std"] = float(np.std(test_metrics["accuracy"]))
    summary["replicas"] = [
        {**r, "test_loss": loss, "test_accuracy": accuracy}
        for r, loss, accuracy in zip(replicas, test_metrics["loss"], test_metrics["accuracy"])]
    for r in summary["replicas"]:
      log.info("Replica seed %d, learning rate %g: test loss %.4f - test accuracy %.4f",
               r["seed"], r["learning_rate"], r["test_loss"], r["test_accuracy"])
    log.info("Mean over %d replicas: test accuracy %.4f +- %.4f (std)", len(replicas),
             summary["test_accuracy"], summary["test_accuracy_std"])
  summary.update({"epochs": epoch, "tested_epoch": tested_epoch, "stopped_early": stopped_early,
                  "steps": steps, "data_source": splits.source,
                  "train_seconds": sum(r["seconds"] for r in history)})
  if best is not None:
    summary.update({"best_epoch": best.epoch, f"best_{monitor}": best.value})
  _write_atomic(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
  log.info("Test loss: %.4f - test accuracy: %.4f (parameters of epoch %d)",
           summary["test_loss"], summary["test_accuracy"], tested_epoch)
  keys_ = history[0].keys() if history else ()
  return state, {k: [r[k] for r in history] for k in keys_ if k != "epoch"}


def _restore_best(state: TrainState, best: Best, best_checkpointer, last_epoch: int):
  """(state, epoch) of the best epoch's checkpoint; the last epoch's if it cannot be read."""
  restored = best_checkpointer.restore(state, epoch=best.epoch)
  if restored is None:
    log.warning("The best checkpoint (epoch %d) is unreadable: testing the last epoch's "
                "parameters instead.", best.epoch)
    return state, last_epoch
  log.info("Restored the parameters of the best epoch, %d.", best.epoch)
  return restored
