"""The pure core of training: state, the jitted steps, whole epochs as one compiled scan, run keys.

Notebooks use these pieces directly:

    state = create_train_state(key, config)
    state, metrics = train_step(state, batch, key)     # batch = {"image", "label"[, "mask"]}
    metrics = eval_step(state, batch)

Metrics are SUMS over the batch (`loss`, `correct`, `count`), so they add up exactly across
batches, and padded examples (mask 0) count for nothing; `summarize` turns them into means.

Keys are derived, never threaded: the epoch's key is `fold_in(run_key, epoch)`, a step's dropout key
`fold_in(dropout_key, step)`. A run resumed at epoch k therefore draws exactly what an
uninterrupted run would have drawn. The loop around these functions is `loop.train_and_evaluate`;
many seeds at once are `replicas`; several devices are `parallel`.
"""

import dataclasses
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from mnist_jax import adversarial, cpu_tuning, models, optim, parallel
from mnist_jax.hyperparams import active, in_group


class TrainState(train_state.TrainState):
  """Step, parameters, optimizer state, BatchNorm statistics and the weights' moving average:
  everything a resumed run needs."""
  batch_stats: Any = flax.struct.field(default_factory=dict)
  # Exponential moving average of `params` (config.train.ema_decay), updated by every train_step
  # and used by evaluation and prediction; {} = off.
  ema_params: Any = flax.struct.field(default_factory=dict)
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)


def create_train_state(key: jax.Array, config, input_dim: int = 784,
                       steps_per_epoch: Optional[int] = None,
                       hyperparams: Optional[dict] = None) -> TrainState:
  """A fresh TrainState: parameters initialised from `key`, optimizer from `config.optimizer`.

  `hyperparams` ({"group.field": value}, hyperparams.SWEEPABLE) are a sweep's point, to be passed
  to every `train_step` too: the swept optimizer fields go into the optimizer state, and the
  model is initialised with its swept fields, so it has every part they switch on.
  Built by one compiled call rather than a dozen small eager ones (each a compilation, or a
  cache lookup, at start-up).
  """
  values = hyperparams or {}
  model = models.build(config.model)
  optimizer_values = in_group(values, "optimizer")
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch, config.train.epochs,
                            swept=tuple(optimizer_values))
  ema_decay = float(config.train.ema_decay)
  with_ema = active(values.get("train.ema_decay", ema_decay))

  @jax.jit
  def create(key, values):
    init_model = models.with_values(model, in_group(values, "model"))
    variables = init_model.init({"params": key}, jnp.zeros((1, input_dim), jnp.float32),
                                train=False)
    params = variables["params"]
    state = TrainState.create(apply_fn=model.apply, params=params,
                              batch_stats=variables.get("batch_stats", {}), tx=tx,
                              ema_params=jax.tree.map(jnp.copy, params) if with_ema else {},
                              ema_decay=ema_decay)
    if optimizer_values:
      state = state.replace(opt_state=optim.with_hyperparams(
          state.opt_state, in_group(values, "optimizer")))
    return state

  return create(key, values)


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


@dataclasses.dataclass(frozen=True)
class Objective:
  """What train_step minimises, besides any cost the model sows: static, so each is compiled in.

  From `config.train` by `Objective.from_config`; the defaults are plain cross-entropy.
  """
  label_smoothing: float = 0.0
  # Virtual adversarial training (Miyato et al.): + vat_weight * KL(p(x) || p(x + r_vadv)).
  vat_epsilon: float = 0.0  # the perturbation's L2 norm per example; 0 = off
  vat_xi: float = 1e-6  # the power iteration's finite-difference step
  vat_iterations: int = 1
  vat_weight: float = 1.0
  # Adversarial training (Goodfellow et al.): alpha J(x) + (1 - alpha) J(x + eps sign(grad_x J)).
  adversarial_epsilon: float = 0.0  # 0 = off
  adversarial_alpha: float = 0.5

  @classmethod
  def from_config(cls, train_config) -> "Objective":
    return cls(**{f.name: train_config[f.name] for f in dataclasses.fields(cls)})


@functools.partial(jax.jit, static_argnames=("objective",))
def train_step(state: TrainState, batch: dict, rng: jax.Array,
               objective: Objective = Objective(), hyperparams: Optional[dict] = None):
  """One optimizer step: returns the new state and the batch's metric sums.

  The loss is the mean cross-entropy over the real (mask 1) examples, so a padded tail batch
  takes the same step Keras takes on its short last batch, plus any cost the model adds to its
  "losses" collection (`self.sow`; e.g. a Ladder network's denoising cost) and the adversarial
  terms `objective` asks for. The metrics are the plain cross-entropy's. `hyperparams`, a sweep's
  point as in `create_train_state`, replace the model's and the objective's fields by data.
  """
  mask = _mask(batch)
  labels, images = batch["label"], batch["image"]
  values = hyperparams or {}
  model_values = in_group(values, "model")
  apply_fn = (models.with_values(state.apply_fn.__self__, model_values).apply if model_values
              else state.apply_fn)
  objective = dataclasses.replace(objective, **{
      k: v for k, v in in_group(values, "train").items() if k in Objective.__dataclass_fields__})

  def loss_fn(params):
    def forward(x):  # a training pass with this step's noise; its statistic updates are kept
      return apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                      mask=mask, rngs={"dropout": rng}, mutable=["batch_stats", "losses"])

    def mean_loss(logits):
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                    objective.label_smoothing)
      losses = optax.softmax_cross_entropy(logits, targets)
      return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0), losses

    logits, updates = forward(images)
    loss, losses = mean_loss(logits)
    if active(objective.adversarial_epsilon):
      adversarial_loss = adversarial.adversarial_training_loss(
          lambda x: mean_loss(forward(x)[0])[0], images, epsilon=objective.adversarial_epsilon)
      loss = (objective.adversarial_alpha * loss
              + (1.0 - objective.adversarial_alpha) * adversarial_loss)
    if active(objective.vat_epsilon):
      loss = loss + objective.vat_weight * adversarial.virtual_adversarial_loss(
          lambda x: forward(x)[0], images, logits, jax.random.fold_in(rng, 1),
          epsilon=objective.vat_epsilon, xi=objective.vat_xi,
          num_iterations=objective.vat_iterations, mask=mask)
    extra = jax.tree.leaves(updates.get("losses", {}))
    if extra:
      loss = loss + sum(extra)
    return loss, (logits, losses, updates)

  grads, (logits, losses, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
  if state.ema_params:
    decay = values.get("train.ema_decay", state.ema_decay)
    state = state.replace(ema_params=optim.ema_update(state.ema_params, state.params, decay,
                                                      state.step))
  return state, _batch_metrics(logits, labels, mask, losses)


@functools.partial(jax.jit, static_argnames=("adversarial_epsilon",))
def eval_step(state: TrainState, batch: dict, adversarial_epsilon: float = 0.0):
  """Metric sums of the model in inference mode (dropout off, BatchNorm running statistics).

  With `adversarial_epsilon`, also how many of the batch's fast-gradient-sign adversarial images
  (Goodfellow et al.'s attack, made against this inference-mode model) it still classifies
  correctly: the robustness their adversarial training is selected by.
  """
  images, labels, mask = batch["image"], batch["label"], _mask(batch)
  logits = predict_logits(state, images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  metrics = _batch_metrics(logits, labels, mask, losses)
  if active(adversarial_epsilon):
    loss_of_images = lambda x: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        predict_logits(state, x), labels) * mask)
    attacked = predict_logits(state, images + adversarial.fgsm_perturbation(
        loss_of_images, images, epsilon=adversarial_epsilon))
    metrics["adversarial_correct"] = jnp.sum((jnp.argmax(attacked, -1) == labels) * mask)
  return metrics


def predict_logits(state: TrainState, images: jax.Array) -> jax.Array:
  """Inference-mode logits, from the moving average of the weights when the state keeps one."""
  params = state.ema_params or state.params
  return state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                        train=False)


def summarize(sums: dict) -> dict:
  """Metric sums -> {'loss': mean loss, 'accuracy': fraction correct}.

  Python floats; lists of floats for replicas (sums with a leading axis).
  """
  sums = parallel.to_host(sums)
  count = np.maximum(sums["count"], 1.0)
  metrics = {"loss": (sums["loss"] / count).tolist(),
             "accuracy": (sums["correct"] / count).tolist()}
  if "adversarial_correct" in sums:  # evaluate(..., adversarial_epsilon)
    metrics["adversarial_accuracy"] = (sums["adversarial_correct"] / count).tolist()
  return metrics


# ---------------------------------------------------------------------------------------------
# Whole epochs and whole splits, each one compiled call


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Batches in an epoch: every example once, the last batch partial (padded and masked)."""
  return -(-num_examples // batch_size)


def _batched_indices(order: jax.Array, batch_size: int):
  """(num_batches, batch_size) indices and mask; the tail batch is padded with masked zeros."""
  n = order.shape[0]
  num_batches = steps_per_epoch(n, batch_size)
  pad = num_batches * batch_size - n
  indices = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)]).reshape(num_batches, -1)
  mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32).reshape(num_batches, -1)
  return indices, mask


@functools.partial(cpu_tuning.jit, static_argnames=("batch_size", "objective", "mesh"),
                   donate_argnames=("state",))
def train_epoch(state: TrainState, images: jax.Array, labels: jax.Array, key: jax.Array,
                batch_size: int, objective: Objective = Objective(),
                mesh: Optional[jax.sharding.Mesh] = None, hyperparams: Optional[dict] = None):
  """One pass over (images, labels) in a fresh random order: `lax.scan` over `train_step`.

  Every example is used exactly once, the last partial batch included (padded and masked, so
  there is one compiled shape). With a `mesh`, each batch is sharded over its "data" axis.
  Returns the new state, the epoch's metric sums, and the index of the first step whose loss
  was not finite; if every loss was, the number of steps when the last update left a parameter
  that is not, else -1 (checked here, so the loop never copies the parameters to the host for it).
  `hyperparams`: a sweep's point, as for `train_step`.
  """
  perm_key, dropout_key = jax.random.split(key)
  indices, mask = _batched_indices(jax.random.permutation(perm_key, images.shape[0]), batch_size)

  def step(state, inputs):
    i, idx, m = inputs
    batch = parallel.shard_batch({"image": images[idx], "label": labels[idx], "mask": m}, mesh)
    return train_step(state, batch, jax.random.fold_in(dropout_key, i), objective, hyperparams)

  state, per_step = jax.lax.scan(step, state, (jnp.arange(indices.shape[0]), indices, mask))
  sums = jax.tree.map(jnp.sum, per_step)
  bad = ~jnp.isfinite(per_step["loss"])
  params_finite = jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(state.params)]))
  first_bad = jnp.where(jnp.any(bad), jnp.argmax(bad), jnp.where(params_finite, -1, bad.shape[0]))
  return state, sums, first_bad


@functools.partial(cpu_tuning.jit, static_argnames=("batch_size", "mesh", "adversarial_epsilon"))
def evaluate(state: TrainState, images: jax.Array, labels: jax.Array, batch_size: int = 2000,
             mesh: Optional[jax.sharding.Mesh] = None, adversarial_epsilon: float = 0.0):
  """Metric sums over a whole split, in one compiled call (`eval_step`'s, batch by batch)."""
  batch_size = min(batch_size, images.shape[0])
  indices, mask = _batched_indices(jnp.arange(images.shape[0]), batch_size)

  def step(sums, inputs):
    idx, m = inputs
    batch = parallel.shard_batch({"image": images[idx], "label": labels[idx], "mask": m}, mesh)
    # eval_step's own jit would need a static epsilon; a sweep's is traced (replicas).
    step_sums = eval_step.__wrapped__(state, batch, adversarial_epsilon)
    return jax.tree.map(jnp.add, sums, step_sums), None

  zeros = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  if active(adversarial_epsilon):
    zeros["adversarial_correct"] = 0.0
  sums, _ = jax.lax.scan(step, jax.tree.map(jnp.float32, zeros), (indices, mask))
  return sums


BATCHNORM_STATISTICS = ("running", "recomputed")  # config.train.batchnorm_statistics


@functools.partial(cpu_tuning.jit, static_argnames=("batch_size",))
def population_batch_stats(state: TrainState, images: jax.Array, batch_size: int):
  """BatchNorm's test-time statistics recomputed over `images` with the state's parameters, as
  Rasmus et al.'s reported errors use them (github.com/CuriousAI/ladder, run.py's final pass
  over the training set): per layer, the mean over the batches of each batch's mean and unbiased
  variance, from a training-mode pass without noise (`models.measuring`), batches weighted by
  their size. Returns a tree shaped like `state.batch_stats`.
  """
  model = models.measuring(state.apply_fn.__self__)
  variables = {"params": state.ema_params or state.params}
  indices, mask = _batched_indices(jnp.arange(images.shape[0]), batch_size)

  def step(sums, inputs):
    idx, m = inputs
    _, updates = model.apply({**variables, "batch_stats": state.batch_stats}, images[idx],
                             train=True, mask=m, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(0)})  # drawn, with noise 0
    n = jnp.sum(m)
    unbiased = n / jnp.maximum(n - 1.0, 1.0)
    weighted = jax.tree_util.tree_map_with_path(
        lambda path, x: n * x * (unbiased if str(path[-1].key) == "var" else 1.0),
        updates["batch_stats"])
    return jax.tree.map(jnp.add, sums, weighted), None

  zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)
  sums, _ = jax.lax.scan(step, zeros, (indices, mask))
  return jax.tree.map(lambda s: s / images.shape[0], sums)


@functools.partial(cpu_tuning.jit, static_argnames=("batch_size",))
def predict_probabilities(state: TrainState, images: jax.Array, batch_size: int = 2000):
  """Softmax probabilities (N, classes) for a whole split, in one compiled call."""
  batch_size = min(batch_size, images.shape[0])
  indices, _ = _batched_indices(jnp.arange(images.shape[0]), batch_size)
  probs = jax.lax.map(lambda idx: jax.nn.softmax(predict_logits(state, images[idx])), indices)
  return probs.reshape(-1, probs.shape[-1])[:images.shape[0]]


# ---------------------------------------------------------------------------------------------
# Keys and precision

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


MATMUL_PRECISIONS = ("default", "high", "highest")  # config.matmul_precision


def matmul_precision(config):
  """The config's float32 matmul precision, for everything traced inside the `with` block."""
  return jax.default_matmul_precision(config.matmul_precision)
