import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import data, train


def _device_data(config):
  splits = data.load(config.data)
  return train.DeviceData.put(splits.train, config.data.preprocess)


def _batch(dd, start, size):
  return {"image": dd.images[start:start + size], "label": dd.labels[start:start + size]}


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_train_step_is_deterministic_and_key_dependent(tiny_config):
  tiny_config.model.hidden_sizes = (64, 32)
  tiny_config.model.dropout = (0.3, 0.3)
  dd = _device_data(tiny_config)
  batch = _batch(dd, 0, 64)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  s1, m1 = train.train_step(state, batch, jax.random.key(7))
  s2, m2 = train.train_step(state, batch, jax.random.key(7))
  s3, _ = train.train_step(state, batch, jax.random.key(8))
  assert _leaves_equal(s1.params, s2.params) and float(m1["loss"]) == float(m2["loss"])
  assert not _leaves_equal(s1.params, s3.params)  # the dropout mask depends on the key
  assert int(s1.step) == 1 and float(m1["count"]) == 64


def test_loss_decreases_on_a_subset(tiny_config):
  dd = _device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  before = train.summarize(train.evaluate(state, dd.images, dd.labels))
  for epoch in range(5):
    state, sums, first_bad = train.train_epoch(state, dd.images, dd.labels,
                                               jax.random.key(epoch), 64)
    assert int(first_bad) == -1
  after = train.summarize(train.evaluate(state, dd.images, dd.labels))
  assert after["loss"] < 0.5 * before["loss"]
  assert after["accuracy"] > 0.85


def test_scanned_epoch_equals_python_loop_of_train_step(tiny_config):
  """The compiled epoch is exactly `train_step` applied batch by batch, tail batch included."""
  tiny_config.data.train_subset = 300  # 300 = 4 * 64 + 44: a partial tail batch
  tiny_config.model.hidden_sizes = (32,)
  tiny_config.model.dropout = (0.2,)
  dd = _device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  key = jax.random.key(3)

  perm_key, dropout_key = jax.random.split(key)
  order = np.asarray(jax.random.permutation(perm_key, len(dd)))
  looped = state
  for i, start in enumerate(range(0, len(dd), 64)):
    idx = order[start:start + 64]  # Keras-style short last batch, no padding
    looped, _ = train.train_step(looped, {"image": dd.images[idx], "label": dd.labels[idx]},
                                 jax.random.fold_in(dropout_key, i))

  scanned, sums, _ = train.train_epoch(state, dd.images, dd.labels, key, 64)
  assert int(scanned.step) == int(looped.step) == 5
  assert float(sums["count"]) == 300  # every example once, none of the padding
  for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(looped.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padding_does_not_enter_batchnorm_statistics(tiny_config):
  tiny_config.model.input_batchnorm = True
  dd = _device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  batch = _batch(dd, 0, 8)
  padded = {"image": jnp.concatenate([batch["image"], 1e3 * jnp.ones((8, 784))]),
            "label": jnp.concatenate([batch["label"], jnp.zeros(8, jnp.int32)]),
            "mask": jnp.concatenate([jnp.ones(8), jnp.zeros(8)])}
  a, ma = train.train_step(state, batch, jax.random.key(0))
  b, mb = train.train_step(state, padded, jax.random.key(0))
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)


def test_evaluate_counts_every_example_once(tiny_config):
  dd = _device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  sums = train.evaluate(state, dd.images, dd.labels, batch_size=100)  # 512 = 5 * 100 + 12
  assert float(sums["count"]) == 512
  probs = train.predict_probabilities(state, dd.images, batch_size=100)
  assert probs.shape == (512, 10)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
  correct = (np.argmax(probs, -1) == np.asarray(dd.labels)).sum()
  assert correct == float(sums["correct"])


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd"])
def test_each_optimizer_trains(tiny_config, name):
  tiny_config.optimizer.name = name
  tiny_config.optimizer.momentum = 0.9 if name == "sgd" else 0.0
  tiny_config.optimizer.learning_rate = 0.05 if name == "sgd" else 1e-3
  dd = _device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  before = train.summarize(train.evaluate(state, dd.images, dd.labels))["loss"]
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 32)
  assert train.summarize(train.evaluate(state, dd.images, dd.labels))["loss"] < before
  assert float(train.learning_rate(state)) == pytest.approx(tiny_config.optimizer.learning_rate)


def test_rmsprop_matches_keras_update_rule(tiny_config):
  """One Keras RMSprop step: v = (1-rho) g^2; w -= lr g / sqrt(v + eps)."""
  tiny_config.optimizer.name = "rmsprop"
  tx = train.make_optimizer(tiny_config.optimizer)
  g = jnp.array([0.5, -2.0, 1e-4])
  updates, _ = tx.update(g, tx.init(jnp.zeros(3)))
  expected = -1e-3 * g / np.sqrt(0.1 * g**2 + 1e-7)
  np.testing.assert_allclose(updates, expected, rtol=1e-5)


def test_warmup_cosine_schedule(tiny_config):
  tiny_config.optimizer.schedule = "warmup_cosine"
  tiny_config.optimizer.warmup_epochs = 1
  state = train.create_train_state(jax.random.key(0), tiny_config, steps_per_epoch=8)
  assert float(train.learning_rate(state)) == 0.0
  dd = _device_data(tiny_config)
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(0), 64)
  assert float(train.learning_rate(state)) == pytest.approx(7 / 8 * 1e-3)  # step 8 of 8 warmup
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 64)
  assert 0 < float(train.learning_rate(state)) < 1e-3  # decaying


def test_ema_follows_the_weights_and_is_what_evaluation_uses(tiny_config):
  tiny_config.train.ema_decay = 0.9
  dd = _device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  assert _leaves_equal(state.ema_params, state.params)  # starts at the initial weights
  new, _ = train.train_step(state, _batch(dd, 0, 64), jax.random.key(1))
  d = min(0.9, 2 / 11)  # step 1: the warm-up (1 + step) / (10 + step) is below the decay
  for e, p0, p1 in zip(*(jax.tree.leaves(t) for t in (new.ema_params, state.params, new.params))):
    np.testing.assert_allclose(e, d * p0 + (1 - d) * p1, rtol=1e-5, atol=1e-7)
  assert not _leaves_equal(new.ema_params, new.params)
  x = dd.images[:16]
  np.testing.assert_array_equal(train.predict_logits(new, x),
                                new.apply_fn({"params": new.ema_params}, x))
  raw = new.replace(ema_params={})  # off: evaluation uses the raw weights
  np.testing.assert_array_equal(train.predict_logits(raw, x), new.apply_fn({"params": new.params}, x))
  tiny_config.train.ema_decay = 0.0
  off = train.create_train_state(jax.random.key(0), tiny_config)
  assert off.ema_params == {} and off.ema_decay == 0.0


def test_max_norm_bounds_hidden_kernel_columns_only(tiny_config):
  tiny_config.model.hidden_sizes = (32, 32)
  tiny_config.optimizer.learning_rate = 0.05  # large steps, so the constraint binds
  tiny_config.optimizer.max_norm = 0.5
  dd = _device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 64)
  for name in ("dense_0", "dense_1"):
    norms = np.linalg.norm(np.asarray(state.params[name]["kernel"]), axis=0)
    assert norms.max() <= 0.5 * (1 + 1e-5) and norms.max() > 0.45  # binding, and respected
  assert np.linalg.norm(np.asarray(state.params["logits"]["kernel"]), axis=0).max() > 0.5


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_rng_impl_makes_keys_of_that_generator_and_epochs_stay_deterministic(tiny_config, impl):
  tiny_config.model.dropout = (0.5,)
  keys = train.run_keys(0, impl)
  assert str(jax.random.key_impl(keys["epochs"])) == impl
  dd = _device_data(tiny_config)
  key = train.epoch_key(keys["epochs"], 1)
  runs = [train.train_epoch(train.create_train_state(keys["init"], tiny_config), dd.images,
                            dd.labels, key, 64)[0] for _ in range(2)]
  assert _leaves_equal(runs[0].params, runs[1].params)  # the same key, the same bits
  state = train.create_train_state(keys["init"], tiny_config)
  threefry = train.create_train_state(train.run_keys(0)["init"], tiny_config)
  assert not _leaves_equal(state.params, threefry.params)


@pytest.mark.parametrize("field,value,message", [
    ("train.ema_decay", 1.0, r"ema_decay=1.0 must be in \[0, 1\)"),
    ("optimizer.max_norm", -1.0, "max_norm=-1.0 must be >= 0"),
    ("rng_impl", "philox", "rng_impl='philox' is not one of threefry, rbg, unsafe_rbg"),
])
def test_new_options_are_validated(field, value, message):
  from mnist_jax import config as config_lib
  config = config_lib.load("adam_mlp")
  *group, key = field.split(".")
  (config[group[0]] if group else config)[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)
