"""Training and evaluation: pure jitted steps, a whole epoch as one compiled scan, and the run loop.

Notebooks use the pure pieces directly:

    state = create_train_state(key, config)
    state, metrics = train_step(state, batch, key)     # batch = {"image", "label"[, "mask"]}
    metrics = eval_step(state, batch)

Metrics are SUMS over the batch (`loss`, `correct`, `count`), so they add up exactly across
batches and padded examples (mask 0) count for nothing; `summarize` turns them into means.

Keys are derived, never threaded: the epoch's key is `fold_in(run_key, epoch)`, a step's dropout key
`fold_in(dropout_key, step)`. A run resumed at epoch k therefore draws exactly what an
uninterrupted run would have drawn.
"""

import dataclasses
import functools
import json
import logging
import math
import pathlib
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


class TrainState(train_state.TrainState):
  """Step, parameters, optimizer state and BatchNorm statistics: everything a resumed run needs."""
  batch_stats: Any = flax.struct.field(default_factory=dict)


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
  return tx


def create_train_state(key: jax.Array, config, input_dim: int = 784,
                       steps_per_epoch: Optional[int] = None) -> TrainState:
  """A fresh TrainState: parameters initialised from `key`, optimizer from `config.optimizer`."""
  model = models.MLP.from_config(config.model)
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init({"params": key}, jnp.zeros((1, input_dim), jnp.float32))
  tx = make_optimizer(config.optimizer, steps_per_epoch, config.train.epochs)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}), tx=tx)


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
  return state, _batch_metrics(logits, labels, mask, losses)


@jax.jit
def eval_step(state: TrainState, batch: dict):
  """Metric sums of the model in inference mode (dropout off, BatchNorm running statistics)."""
  logits = predict_logits(state, batch["image"])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return _batch_metrics(logits, batch["label"], _mask(batch), losses)


def predict_logits(state: TrainState, images: jax.Array) -> jax.Array:
  return state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                        train=False)


def summarize(sums: dict) -> dict:
  """Metric sums -> {'loss': mean loss, 'accuracy': fraction correct} as Python floats."""
  sums = jax.device_get(sums)
  count = max(float(sums["count"]), 1.0)
  return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}


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


def _shard_batch(batch: dict, mesh: Optional[jax.sharding.Mesh]) -> dict:
  """Split the batch axis over the mesh; parameters stay replicated, XLA adds the all-reduce."""
  if mesh is None or mesh.size == 1:
    return batch
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.lax.with_sharding_constraint(batch, sharding)


@functools.partial(jax.jit, static_argnames=("batch_size", "label_smoothing", "mesh"),
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


@functools.partial(jax.jit, static_argnames=("batch_size", "mesh"))
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


@functools.partial(jax.jit, static_argnames=("batch_size", "label_smoothing", "mesh"),
                   donate_argnames=("states",))
def train_epoch_replicas(states: TrainState, images: jax.Array, labels: jax.Array,
                         keys: jax.Array, batch_size: int, label_smoothing: float = 0.0,
                         mesh: Optional[jax.sharding.Mesh] = None):
  """`train_epoch` for R independent replicas: `states` and `keys` have a leading axis R.

  One vmapped program: the R models' matrix multiplies become one batched multiply, so R seeds
  cost far less than R runs when a single small model leaves the machine idle.
  """
  one = lambda state, key: train_epoch(state, images, labels, key, batch_size, label_smoothing, mesh)
  return jax.vmap(one)(states, keys)


@functools.partial(jax.jit, static_argnames=("batch_size", "mesh"))
def evaluate_replicas(states: TrainState, images: jax.Array, labels: jax.Array,
                      batch_size: int = 2000, mesh: Optional[jax.sharding.Mesh] = None):
  """`evaluate` for R replicas: metric sums with a leading axis R."""
  return jax.vmap(lambda state: evaluate(state, images, labels, batch_size, mesh))(states)


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
    state = create_train_state(run_keys(seed)["init"], config, input_dim, steps_per_epoch)
    return with_learning_rate(state, rate)

  return jax.vmap(one)(seeds, rates)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def predict_probabilities(state: TrainState, images: jax.Array, batch_size: int = 2000):
  """Softmax probabilities (N, classes) for a whole split, in one compiled call."""
  batch_size = min(batch_size, images.shape[0])
  indices, _ = _batched_indices(jnp.arange(images.shape[0]), batch_size)
  probs = jax.lax.map(lambda idx: jax.nn.softmax(predict_logits(state, images[idx])), indices)
  return probs.reshape(-1, probs.shape[-1])[:images.shape[0]]


# ---------------------------------------------------------------------------------------------
# Keys


def run_keys(seed: int) -> dict[str, jax.Array]:
  """Independent keys for init and for the epochs, derived from the config's seed."""
  root = jax.random.key(seed)
  return {"init": jax.random.fold_in(root, 0), "epochs": jax.random.fold_in(root, 1)}


def epoch_key(epochs_key: jax.Array, epoch: int) -> jax.Array:
  return jax.random.fold_in(epochs_key, epoch)


# ---------------------------------------------------------------------------------------------
# Model summary


def model_summary(state: TrainState, config) -> str:
  """A Keras-like table: layer, output shape, parameter counts."""
  rows = [("Layer", "Output shape", "Params")]
  trainable = non_trainable = 0
  for name, params in state.params.items():
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    stats = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.batch_stats.get(name, {})))
    trainable += count
    non_trainable += stats
    width = params["bias"].shape[0]
    kind = "Dense" if "kernel" in params else "BatchNorm"
    if name.startswith("dense_"):
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
    sharding = None if mesh is None else _replicated(mesh)
    return cls(jax.device_put(data.preprocess(split.images, preprocess), sharding),
               jax.device_put(split.labels, sharding))

  def __len__(self):
    return self.labels.shape[0]


def _config_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


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
  _check_workdir(workdir, config, overwrite)
  if overwrite and workdir.exists():
    import shutil  # pylint: disable=import-outside-toplevel
    for name in ("checkpoints", "metrics.jsonl", "summary.json", "config.json"):
      target = workdir / name
      if target.is_dir():
        shutil.rmtree(target)
      elif target.exists():
        target.unlink()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(_config_json(config))
  except OSError as e:
    raise ConfigError(f"Cannot write to workdir {workdir} ({e.strerror}). "
                      f"Choose a writable --workdir.") from None


def _read_history(workdir: pathlib.Path, up_to_epoch: int) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  records = [r for r in records if r["epoch"] <= up_to_epoch]
  # Epochs after the checkpoint will be trained again: drop their records.
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return records


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


def train_and_evaluate(config, workdir: str | pathlib.Path, overwrite: bool = False):
  """Train `config` in `workdir`, resuming from its last checkpoint if it has one.

  Writes config.json, metrics.jsonl (one record per epoch), checkpoints/ and summary.json.
  Returns the final state and the history (dict of per-epoch lists, like Keras's History).
  """
  workdir = pathlib.Path(workdir)
  _prepare_workdir(workdir, config, overwrite)

  splits = data.load(config.data)
  log.info("Data: %s; train %s, val %s, test %s", splits.source, splits.train.images.shape,
           None if splits.val is None else splits.val.images.shape, splits.test.images.shape)
  batch_size = config.train.batch_size
  if batch_size > len(splits.train):
    raise ConfigError(f"config.train.batch_size={batch_size} is larger than the training set "
                      f"({len(splits.train)} examples). Use a smaller batch size.")
  mesh = make_mesh(config.mesh.num_devices)
  if mesh.size > 1:
    log.info("Data parallel over %d devices: each batch of %d is split %s.", mesh.size,
             batch_size, "evenly" if batch_size % mesh.size == 0 else "unevenly (XLA pads it)")
  train = DeviceData.put(splits.train, config.data.preprocess, mesh)
  val = None if splits.val is None else DeviceData.put(splits.val, config.data.preprocess, mesh)
  test = DeviceData.put(splits.test, config.data.preprocess, mesh)
  steps_per_epoch = math.ceil(len(train) / batch_size)

  keys = run_keys(config.seed)
  state = jax.device_put(
      create_train_state(keys["init"], config, train.images.shape[1], steps_per_epoch),
      _replicated(mesh))
  log.info("Model summary:\n%s", model_summary(state, config))

  checkpointer = checkpoints.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
  start_epoch, history = 0, []
  restored = checkpointer.restore(state)
  if restored is not None:
    state, start_epoch = restored
    history = _read_history(workdir, start_epoch)
    log.info("Resuming from the checkpoint after epoch %d in %s.", start_epoch, checkpointer.directory)
  elif (workdir / "metrics.jsonl").exists():
    (workdir / "metrics.jsonl").unlink()  # records of a run that never checkpointed

  epochs = config.train.epochs
  with _StopSignals() as signals:
    for epoch in range(start_epoch + 1, epochs + 1):
      started = time.perf_counter()
      state, sums, first_bad = train_epoch(state, train.images, train.labels,
                                           epoch_key(keys["epochs"], epoch), batch_size,
                                           config.train.label_smoothing, mesh)
      metrics = summarize(sums)
      lr = float(learning_rate(state))
      if int(first_bad) >= 0:
        good = checkpointer.epochs()
        raise TrainingDiverged(
            f"The training loss became {metrics['loss']} at epoch {epoch}, step "
            f"{int(first_bad) + 1} of {steps_per_epoch} (learning rate {lr:g}). This usually "
            f"means the learning rate is too high: try --config.optimizer.learning_rate="
            f"{lr / 10:g}. " + (f"The last good checkpoint (epoch {good[-1]}) is in "
                                f"{checkpointer.directory}." if good else "No checkpoint was saved."))
      record = {"epoch": epoch, "step": int(state.step), "learning_rate": lr,
                "train_loss": metrics["loss"], "train_accuracy": metrics["accuracy"]}
      if val is not None:
        val_metrics = summarize(evaluate(state, val.images, val.labels, config.train.eval_batch_size, mesh))
        record.update(val_loss=val_metrics["loss"], val_accuracy=val_metrics["accuracy"])
      record["seconds"] = time.perf_counter() - started
      history.append(record)
      with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
      log.info(_progress_line(record, epochs))
      if epoch % config.train.checkpoint_every == 0 or epoch == epochs or signals.received:
        checkpointer.save(epoch, state)
      if signals.received and epoch < epochs:
        checkpointer.close()
        raise RunInterrupted(
            f"Stopped by {signals.received} after epoch {epoch}; checkpoint saved in "
            f"{checkpointer.directory}. Run the same command again to resume.")
  checkpointer.close()

  test_metrics = summarize(evaluate(state, test.images, test.labels, config.train.eval_batch_size, mesh))
  summary = {"test_loss": test_metrics["loss"], "test_accuracy": test_metrics["accuracy"],
             "epochs": epochs, "steps": int(state.step), "data_source": splits.source,
             "train_seconds": sum(r["seconds"] for r in history)}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  log.info("Test loss: %.4f - test accuracy: %.4f", test_metrics["loss"], test_metrics["accuracy"])
  keys_ = history[0].keys() if history else ()
  return state, {k: [r[k] for r in history] for k in keys_ if k != "epoch"}
