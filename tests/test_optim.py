"""The optimizers, schedules, max-norm and the injected learning rate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import device_data
from mnist_jax import optim, train


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd"])
def test_each_optimizer_trains(tiny_config, name):
  tiny_config.optimizer.name = name
  tiny_config.optimizer.momentum = 0.9 if name == "sgd" else 0.0
  tiny_config.optimizer.learning_rate = 0.05 if name == "sgd" else 1e-3
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  before = train.summarize(train.evaluate(state, dd.images, dd.labels))["loss"]
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 32)
  assert train.summarize(train.evaluate(state, dd.images, dd.labels))["loss"] < before
  assert float(optim.learning_rate(state.opt_state)) == pytest.approx(tiny_config.optimizer.learning_rate)


def test_rmsprop_matches_keras_update_rule(tiny_config):
  """One Keras RMSprop step: v = (1-rho) g^2; w -= lr g / sqrt(v + eps)."""
  tiny_config.optimizer.name = "rmsprop"
  tx = optim.make_optimizer(tiny_config.optimizer)
  g = jnp.array([0.5, -2.0, 1e-4])
  updates, _ = tx.update(g, tx.init(jnp.zeros(3)))
  expected = -1e-3 * g / np.sqrt(0.1 * g**2 + 1e-7)
  np.testing.assert_allclose(updates, expected, rtol=1e-5)


def test_warmup_cosine_schedule(tiny_config):
  tiny_config.optimizer.schedule = "warmup_cosine"
  tiny_config.optimizer.warmup_epochs = 1
  state = train.create_train_state(jax.random.key(0), tiny_config, steps_per_epoch=8)
  assert float(optim.learning_rate(state.opt_state)) == 0.0
  dd = device_data(tiny_config)
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(0), 64)
  assert float(optim.learning_rate(state.opt_state)) == pytest.approx(7 / 8 * 1e-3)  # step 8 of 8 warmup
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 64)
  assert 0 < float(optim.learning_rate(state.opt_state)) < 1e-3  # decaying


def test_linear_tail_schedule_is_constant_then_decays_to_zero(tiny_config):
  """The Ladder networks' schedule: the full rate, then linearly to 0 over the last epochs."""
  tiny_config.optimizer.schedule, tiny_config.optimizer.decay_epochs = "linear_tail", 1.0
  tx = optim.make_optimizer(tiny_config.optimizer, steps_per_epoch=10, epochs=3)
  params = jnp.zeros(3)
  state, rates = tx.init(params), []
  for _ in range(30):  # the state holds the rate of the step just taken
    _, state = tx.update(jnp.ones(3), state, params)
    rates.append(float(optim.learning_rate(state)))
  assert rates[:21] == pytest.approx([1e-3] * 21)  # steps 0-20: epochs 1-2 and the tail's start
  assert rates[21:] == pytest.approx([1e-3 * (1 - k / 10) for k in range(1, 10)])


def test_learning_rate_is_read_and_replaced_through_chains(tiny_config):
  tiny_config.optimizer.grad_clip_norm, tiny_config.optimizer.max_norm = 1.0, 2.0
  tx = optim.make_optimizer(tiny_config.optimizer)
  opt_state = tx.init({"w": jnp.zeros(2)})
  assert float(optim.learning_rate(opt_state)) == pytest.approx(1e-3)
  replaced = optim.with_hyperparams(opt_state, {"learning_rate": 0.5})
  assert float(optim.learning_rate(replaced)) == 0.5
  assert float(optim.learning_rate(opt_state)) == pytest.approx(1e-3)  # a new state


def test_max_norm_bounds_hidden_kernel_columns_only(tiny_config):
  tiny_config.model.hidden_sizes = (32, 32)
  tiny_config.optimizer.learning_rate = 0.05  # large steps, so the constraint binds
  tiny_config.optimizer.max_norm = 0.5
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 64)
  for name in ("dense_0", "dense_1"):
    norms = np.linalg.norm(np.asarray(state.params[name]["kernel"]), axis=0)
    assert norms.max() <= 0.5 * (1 + 1e-5) and norms.max() > 0.45  # binding, and respected
  assert np.linalg.norm(np.asarray(state.params["logits"]["kernel"]), axis=0).max() > 0.5


def test_max_norm_logits_bounds_the_logits_columns_too(tiny_config):
  tiny_config.optimizer.learning_rate, tiny_config.optimizer.max_norm = 0.05, 0.5
  tiny_config.optimizer.max_norm_logits = True
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 64)
  for name in ("dense_0", "logits"):
    norms = np.linalg.norm(np.asarray(state.params[name]["kernel"]), axis=0)
    assert 0.45 < norms.max() <= 0.5 * (1 + 1e-5), name


def test_momentum_ramps_linearly_then_stays(tiny_config):
  """pylearn2's MomentumAdjustor: momentum 0.5 -> 0.7 over 2 epochs of 10 steps, then 0.7; the
  step is SGD with that step's momentum."""
  c = tiny_config.optimizer
  c.name, c.learning_rate, c.momentum, c.momentum_final, c.momentum_ramp_epochs = (
      "sgd", 0.1, 0.5, 0.7, 2.0)
  tx = optim.make_optimizer(c, steps_per_epoch=10, epochs=3)
  params, grad = jnp.zeros(2), jnp.array([1.0, -2.0])
  state, trace, momenta = tx.init(params), jnp.zeros(2), []
  for step in range(30):
    updates, state = tx.update(grad, state, params)
    momenta.append(float(state.hyperparams["momentum"]))
    trace = grad + min(0.5 + 0.2 * step / 20, 0.7) * trace  # optax's trace: g + m t
    np.testing.assert_allclose(updates, -0.1 * trace, rtol=1e-5)
  assert momenta[0] == pytest.approx(0.5) and momenta[10] == pytest.approx(0.6)
  assert momenta[20:] == pytest.approx([0.7] * 10)
