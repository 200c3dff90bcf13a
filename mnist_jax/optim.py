"""The optimizer from `config.optimizer`: optax transforms with Keras's conventions, and their helpers.

`OPTIMIZERS` and `SCHEDULES` are the registries config validation reads: adding an optimizer is one
entry here. Every optimizer's learning rate is injected (`optax.inject_hyperparams`), so it is part
of the optimizer state: logged per epoch, and a vector of rates can be vmapped for a sweep.
Also here: max-norm weight constraints and the moving average of the weights.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from mnist_jax import layers
from mnist_jax.errors import ConfigError


def _adam(c, learning_rate, momentum):
  del momentum  # Adam's first moment is b1
  # Keras adds epsilon to sqrt(v) before bias correction; the difference at eps=1e-7 is < 1e-6.
  return optax.inject_hyperparams(optax.adam)(learning_rate, b1=c.b1, b2=c.b2, eps=c.eps)


def _adamw(c, learning_rate, momentum):
  del momentum
  return optax.inject_hyperparams(optax.adamw)(learning_rate, b1=c.b1, b2=c.b2, eps=c.eps,
                                               weight_decay=c.weight_decay)


def _rmsprop(c, learning_rate, momentum):
  # Keras: v = rho v + (1-rho) g^2; w -= lr g / sqrt(v + eps), v starting at 0.
  return optax.inject_hyperparams(optax.rmsprop, static_args=("eps_in_sqrt", "momentum"))(
      learning_rate, decay=c.rho, eps=c.eps, eps_in_sqrt=True, momentum=momentum or None)


def _sgd(c, learning_rate, momentum):
  if callable(momentum):  # a schedule: injected too, so it is part of the state
    return optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
        learning_rate, momentum=momentum, nesterov=c.nesterov)
  return optax.inject_hyperparams(optax.sgd, static_args=("momentum", "nesterov"))(
      learning_rate, momentum=momentum or None, nesterov=c.nesterov)


# config.optimizer.name -> factory(optimizer config, learning rate or schedule, momentum or
# schedule).
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop, "sgd": _sgd}


def _linear_tail(c, total: int, steps_per_epoch: int):
  """Constant, then linearly to 0 over the last `decay_epochs` (the Ladder networks' schedule)."""
  decay = int(c.decay_epochs * steps_per_epoch)
  return optax.join_schedules([optax.constant_schedule(c.learning_rate),
                               optax.linear_schedule(c.learning_rate, 0.0, decay)],
                              [total - decay])


# config.optimizer.schedule -> the learning rate at each step, from (config, total steps, steps per
# epoch); "constant" is the plain number, so a sweep can replace it in the optimizer state.
SCHEDULES: dict[str, Callable] = {
    "constant": lambda c, total, steps_per_epoch: c.learning_rate,
    "cosine": lambda c, total, steps_per_epoch: optax.cosine_decay_schedule(c.learning_rate, total),
    "warmup_cosine": lambda c, total, steps_per_epoch: optax.warmup_cosine_decay_schedule(
        0.0, c.learning_rate, int(c.warmup_epochs * steps_per_epoch), total),
    "linear_tail": _linear_tail,
    # Miyato et al.'s VAT runs: the rate times decay_rate after every epoch.
    "exponential": lambda c, total, steps_per_epoch: optax.exponential_decay(
        c.learning_rate, steps_per_epoch, c.decay_rate, staircase=True),
}


def momentum_schedule(c, steps_per_epoch: Optional[int]):
  """The momentum, or with `momentum_ramp_epochs` a linear ramp from `momentum` to
  `momentum_final` over those epochs, then constant: pylearn2's MomentumAdjustor, with which
  Goodfellow et al.'s maxout networks were trained."""
  if not c.momentum_ramp_epochs:
    return c.momentum
  return optax.linear_schedule(c.momentum, c.momentum_final,
                               int(c.momentum_ramp_epochs * steps_per_epoch))


def make_optimizer(opt_config, steps_per_epoch: Optional[int] = None,
                   epochs: Optional[int] = None) -> optax.GradientTransformation:
  """The optax optimizer of `config.optimizer`; schedules need the run's length in steps."""
  if (opt_config.schedule != "constant" or opt_config.momentum_ramp_epochs) and not (
      steps_per_epoch and epochs):
    raise ConfigError(f"schedule {opt_config.schedule!r} and momentum_ramp_epochs need "
                      f"steps_per_epoch and epochs.")
  total = (steps_per_epoch or 0) * (epochs or 0)
  learning_rate = SCHEDULES[opt_config.schedule](opt_config, total, steps_per_epoch)
  tx = OPTIMIZERS[opt_config.name](opt_config, learning_rate,
                                   momentum_schedule(opt_config, steps_per_epoch))
  if opt_config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  if opt_config.max_norm:
    tx = optax.chain(tx, max_norm_projection(opt_config.max_norm, opt_config.max_norm_logits))
  return tx


def max_norm_projection(max_norm: float, logits: bool = False) -> optax.GradientTransformation:
  """After the step, scale each hidden unit's incoming weights (a column of a hidden kernel) back
  to L2 norm `max_norm` if larger (Srivastava et al. 2014): dropout nets can then take large
  steps without their weights growing without bound. The logits layer is left free unless
  `logits` (pylearn2's max_col_norm on the softmax layer, as in the maxout networks).
  """
  def project(path, update, param):
    if not (layers.is_hidden_kernel(path) or (logits and layers.is_logits_kernel(path))):
      return update
    new = param + update
    norms = jnp.sqrt(jnp.sum(new * new, axis=0, keepdims=True))
    return new * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12)) - param

  def update_fn(updates, state, params):
    return jax.tree_util.tree_map_with_path(project, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def ema_update(ema, params, decay: float, step):
  """ema <- d ema + (1 - d) params, with d = min(decay, (1 + step) / (10 + step)) (TensorFlow's
  ExponentialMovingAverage with num_updates): early steps forget the random initial weights fast.
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  return jax.tree.map(lambda e, p: e + (1.0 - d) * (p - e), ema, params)


# ---------------------------------------------------------------------------------------------
# The injected hyperparameters inside an optimizer state


def _is_injected(x) -> bool:
  return hasattr(x, "hyperparams")


def _map_injected(fn, opt_state):
  """opt_state with `fn` applied to each `inject_hyperparams` state in it (however chained)."""
  return jax.tree.map(lambda s: fn(s) if _is_injected(s) else s, opt_state, is_leaf=_is_injected)


def learning_rate(opt_state) -> jax.Array:
  """The learning rate of the most recent step."""
  found = []
  _map_injected(lambda s: found.append(s.hyperparams["learning_rate"]) or s, opt_state)
  return found[0]


def with_learning_rate(opt_state, value):
  """opt_state with its injected (constant) learning rate replaced, e.g. for a sweep."""
  def replace(s):
    current = s.hyperparams["learning_rate"]
    return s._replace(hyperparams={**s.hyperparams,
                                   "learning_rate": jnp.asarray(value, current.dtype)})
  return _map_injected(replace, opt_state)
