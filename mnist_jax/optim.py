"""The optimizer from `config.optimizer`: optax transforms with Keras's conventions, and their helpers.

`OPTIMIZERS` and `SCHEDULES` are the registries config validation reads: adding an optimizer is one
entry here. Every optimizer's learning rate is injected (`optax.inject_hyperparams`), so it is part
of the optimizer state and logged per epoch; a sweep's fields are injected too, so a vector of
values can be vmapped (`make_optimizer(..., swept)`, `with_hyperparams`).
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


def _momentum_args(momentum):
  """(momentum for optax, static_args): a Python number is compiled in (0: no momentum buffer at
  all); a schedule, or an array (a swept momentum, 0 included), is injected into the state."""
  if isinstance(momentum, (int, float)):
    return momentum or None, ("momentum",)
  return momentum, ()


def _rmsprop(c, learning_rate, momentum):
  # Keras: v = rho v + (1-rho) g^2; w -= lr g / sqrt(v + eps), v starting at 0.
  momentum, static = _momentum_args(momentum)
  return optax.inject_hyperparams(optax.rmsprop, static_args=("eps_in_sqrt", *static))(
      learning_rate, decay=c.rho, eps=c.eps, eps_in_sqrt=True, momentum=momentum)


def _sgd(c, learning_rate, momentum):
  momentum, static = _momentum_args(momentum)
  return optax.inject_hyperparams(optax.sgd, static_args=("nesterov", *static))(
      learning_rate, momentum=momentum, nesterov=c.nesterov)


# config.optimizer.name -> factory(optimizer config, learning rate or schedule, momentum: a
# number, a schedule, or None for none).
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop, "sgd": _sgd}

# A config.optimizer field's name among the injected hyperparameters, where it differs.
_INJECTED_NAMES = {"rho": "decay"}


def _linear_tail(c, total: int, steps_per_epoch: int):
  """Constant, then linearly to 0 over the last `decay_epochs` (the Ladder networks' schedule)."""
  decay = int(c.decay_epochs * steps_per_epoch)
  return optax.join_schedules([optax.constant_schedule(c.learning_rate),
                               optax.linear_schedule(c.learning_rate, 0.0, decay)],
                              [total - decay])


# config.optimizer.schedule -> the learning rate at each step, from (config, total steps, steps per
# epoch); "constant" is the plain number, injected, so a sweep replaces it in the state.
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
                   epochs: Optional[int] = None, swept=()) -> optax.GradientTransformation:
  """The optax optimizer of `config.optimizer`; schedules need the run's length in steps.

  `swept` names the fields a sweep varies (e.g. ("learning_rate", "momentum")): each becomes a
  hyperparameter in the optimizer state, which `with_hyperparams` sets per replica. A swept
  learning rate under a schedule is the schedule's peak: the schedule runs with peak 1 and the
  update is scaled by the injected peak (every schedule here is linear in its peak).
  """
  if (opt_config.schedule != "constant" or opt_config.momentum_ramp_epochs) and not (
      steps_per_epoch and epochs):
    raise ConfigError(f"schedule {opt_config.schedule!r} and momentum_ramp_epochs need "
                      f"steps_per_epoch and epochs.")
  total = (steps_per_epoch or 0) * (epochs or 0)
  scaled_peak = "learning_rate" in swept and opt_config.schedule != "constant"
  schedule_config = opt_config
  if scaled_peak:
    schedule_config = opt_config.copy_and_resolve_references()
    schedule_config.unlock().learning_rate = 1.0
  learning_rate = SCHEDULES[opt_config.schedule](schedule_config, total, steps_per_epoch)
  momentum = momentum_schedule(opt_config, steps_per_epoch)
  if "momentum" in swept and not callable(momentum):
    momentum = jnp.asarray(momentum, jnp.float32)  # an array is injected, also where it is 0
  tx = OPTIMIZERS[opt_config.name](opt_config, learning_rate, momentum)
  if scaled_peak:
    tx = optax.chain(tx, optax.inject_hyperparams(_scale_by_peak)(opt_config.learning_rate))
  if "grad_clip_norm" in swept:
    tx = optax.chain(optax.inject_hyperparams(clip_by_global_norm)(opt_config.grad_clip_norm), tx)
  elif opt_config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  if "max_norm" in swept:
    tx = optax.chain(tx, optax.inject_hyperparams(max_norm_projection, static_args=("logits",))(
        opt_config.max_norm, logits=opt_config.max_norm_logits))
  elif opt_config.max_norm:
    tx = optax.chain(tx, max_norm_projection(opt_config.max_norm, opt_config.max_norm_logits))
  return tx


def _scale_by_peak(peak_learning_rate) -> optax.GradientTransformation:
  return optax.scale(peak_learning_rate)


def clip_by_global_norm(grad_clip_norm) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm`, off where `grad_clip_norm` is 0 (a swept value may be)."""
  clip = optax.clip_by_global_norm(grad_clip_norm)

  def update_fn(updates, state, params=None):
    clipped, state = clip.update(updates, state, params)
    return jax.tree.map(lambda c, u: jnp.where(grad_clip_norm > 0, c, u), clipped, updates), state

  return optax.GradientTransformation(clip.init, update_fn)


def max_norm_projection(max_norm: float, logits: bool = False) -> optax.GradientTransformation:
  """After the step, scale each hidden unit's incoming weights (a column of a hidden kernel) back
  to L2 norm `max_norm` if larger (Srivastava et al. 2014): dropout nets can then take large
  steps without their weights growing without bound. The logits layer is left free unless
  `logits` (pylearn2's max_col_norm on the softmax layer, as in the maxout networks). 0 = off.
  """
  def project(path, update, param):
    if not (layers.is_hidden_kernel(path) or (logits and layers.is_logits_kernel(path))):
      return update
    new = param + update
    norms = jnp.sqrt(jnp.sum(new * new, axis=0, keepdims=True))
    scale = jnp.where(max_norm > 0, jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12)), 1.0)
    return new * scale - param

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


def _injected(opt_state) -> dict:
  """Every injected hyperparameter in opt_state, by name."""
  found = {}
  _map_injected(lambda s: found.update(s.hyperparams) or s, opt_state)
  return found


def learning_rate(opt_state) -> jax.Array:
  """The learning rate of the most recent step (a swept schedule's value times its peak)."""
  found = _injected(opt_state)
  if "peak_learning_rate" not in found:  # no multiplication: an eager op every epoch otherwise
    return found["learning_rate"]
  return found["learning_rate"] * found["peak_learning_rate"]


def sweepable_fields(opt_config, fields, epochs: int = 1) -> set:
  """Which of the config.optimizer `fields` this optimizer reads as injected hyperparameters, so
  a sweep can set them (adam has no momentum, sgd no b1): read off the state it would make."""
  tx = make_optimizer(opt_config, steps_per_epoch=1, epochs=epochs, swept=tuple(fields))
  injected = _injected(jax.eval_shape(tx.init, {"w": jnp.zeros(1)}))
  names = {_INJECTED_NAMES.get(f, f): f for f in fields}
  return {names[n] for n in injected if n in names} | (
      {"learning_rate"} if "peak_learning_rate" in injected else set())


def with_hyperparams(opt_state, values: dict):
  """opt_state with injected hyperparameters set: {config.optimizer field: value}, a sweep's
  point (the optimizer made with those fields in `swept`)."""
  injected = _injected(opt_state)
  names = {field: ("peak_learning_rate" if field == "learning_rate"
                   and "peak_learning_rate" in injected else _INJECTED_NAMES.get(field, field))
           for field in values}
  missing = [field for field, name in names.items() if name not in injected]
  if missing:
    raise ValueError(f"The optimizer state has no injected {missing}: make the optimizer with "
                     f"swept={tuple(values)}.")

  by_name = {name: values[field] for field, name in names.items()}
  return _map_injected(lambda s: s._replace(hyperparams={
      name: jnp.asarray(by_name[name], value.dtype) if name in by_name else value
      for name, value in s.hyperparams.items()}), opt_state)
