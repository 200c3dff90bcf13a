"""The MLP: parameter counts as Keras reports them, initialisation, dropout, BatchNorm, noise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import config as config_lib
from mnist_jax import models, train, validation

# Parameter counts as Keras's model.summary() reports them (BatchNorm counts its moving statistics).
KERAS_PARAMS = {
    "adam_mlp": (79_510, 0),  # T0: 784*100+100 + 100*10+10
    "adam_mlp_784": (623_290, 0),  # T1 A
    "adam_mlp_784_dropout": (718_800, 0),  # T1 B
    "rmsprop_mlp": (407_050, 0),  # T2
    "sigmoid_mlp": (535_818, 0),  # T3
    "sgd_bn_mlp": (188_436, 1_568),  # T4: BN 4*784, half non-trainable
}


@pytest.mark.parametrize("name", sorted(KERAS_PARAMS))
def test_tutorial_parameter_counts_and_shapes(name):
  config = config_lib.load(name)
  state = train.create_train_state(jax.random.key(0), config)
  trainable = sum(p.size for p in jax.tree.leaves(state.params))
  non_trainable = sum(p.size for p in jax.tree.leaves(state.batch_stats))
  total, expected_non_trainable = KERAS_PARAMS[name]
  assert (trainable + non_trainable, non_trainable) == (total, expected_non_trainable)
  widths = [state.params[k]["kernel"].shape[1] for k in state.params if k.startswith("dense")]
  assert tuple(widths) == tuple(config.model.hidden_sizes)
  logits = train.predict_logits(state, jnp.zeros((3, 28, 28)))
  assert logits.shape == (3, 10)
  assert f"{total:,}" in models.summary(state.params, state.batch_stats, config.model)


def test_glorot_uniform_init_bounds():
  config = config_lib.load("rmsprop_mlp")
  state = train.create_train_state(jax.random.key(0), config)
  kernel = np.asarray(state.params["dense_0"]["kernel"])
  limit = np.sqrt(6 / (784 + 512))
  assert 0.95 * limit < np.abs(kernel).max() <= limit * (1 + 1e-6)  # float32 rounding
  assert not np.any(state.params["dense_0"]["bias"])  # Keras: zero biases


def test_dropout_is_active_only_in_training():
  config = config_lib.load("adam_mlp_784_dropout")
  state = train.create_train_state(jax.random.key(0), config)
  x = jnp.ones((4, 784))
  variables = {"params": state.params}
  deterministic = [state.apply_fn(variables, x, train=False) for _ in range(2)]
  np.testing.assert_array_equal(deterministic[0], deterministic[1])
  dropped = state.apply_fn(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(dropped, deterministic[0])


def test_hidden_batchnorm_and_gaussian_noise():
  """Noise perturbs training passes only; each hidden layer gets its own BatchNorm."""
  config = config_lib.load("adam_mlp")
  config.model.hidden_sizes = (16, 8)
  config.model.hidden_batchnorm = True
  config.model.gaussian_noise = 0.3
  state = train.create_train_state(jax.random.key(0), config, input_dim=20)
  assert {"batchnorm_0", "batchnorm_1"} <= set(state.batch_stats)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = jax.random.uniform(jax.random.key(1), (6, 20))
  np.testing.assert_array_equal(state.apply_fn(variables, x), state.apply_fn(variables, x))

  def train_pass(key):
    return state.apply_fn(variables, x, train=True, rngs={"dropout": key},
                          mutable=["batch_stats"])
  (a, stats), (b, _) = train_pass(jax.random.key(2)), train_pass(jax.random.key(3))
  assert not np.allclose(a, b)
  assert not np.allclose(stats["batch_stats"]["batchnorm_1"]["mean"], 0.0)  # updated


def test_logits_batchnorm_standardises_the_logits_in_training():
  """With logits_batchnorm, a training pass's logits have each class's batch mean at its bias
  (0 at init) and variance 1; without it they are the Dense layer's, unnormalised."""
  config = config_lib.load("adam_mlp")
  config.model.hidden_sizes = (16,)
  config.model.logits_batchnorm = True
  config.model.batchnorm_epsilon = 1e-10  # so the variance is 1 to float precision
  state = train.create_train_state(jax.random.key(0), config, input_dim=20)
  assert set(state.params["logits_batchnorm"]) == {"scale", "bias"}
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = jax.random.uniform(jax.random.key(1), (64, 20))
  logits, _ = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.mean(logits, axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.var(logits, axis=0), 1.0, rtol=1e-4)
  config.model.logits_batchnorm = False
  plain = train.create_train_state(jax.random.key(0), config, input_dim=20)
  assert "logits_batchnorm" not in plain.params
  assert not np.allclose(np.var(plain.apply_fn({"params": plain.params}, x), axis=0), 1.0,
                         rtol=1e-1)


def test_summary_lists_layers_in_network_order():
  config = config_lib.load("sgd_bn_mlp")
  state = train.create_train_state(jax.random.key(0), config)
  names = [line.split(":")[0] for line in
           models.summary(state.params, state.batch_stats, config.model).splitlines()[2:-1]]
  assert names == ["input_batchnorm", "dense_0", "dense_1", "dense_2", "dense_3", "logits"]


@pytest.mark.slow
def test_the_ladder_model_trains_through_the_trainer(tiny_config):
  """config.model.name="ladder": the trainer builds ladder.LadderMLP, adds its sown denoising cost,
  checkpoints its running averages, and the summary lists the decoder top-down."""
  from conftest import device_data  # pylint: disable=import-outside-toplevel
  tiny_config.model.name, tiny_config.model.hidden_sizes = "ladder", (32, 16)
  tiny_config.model.denoising_weights = (1.0, 1.0, 0.1, 0.1)
  tiny_config.model.batchnorm_epsilon = 1e-10
  validation.validate(tiny_config)
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  before = train.summarize(train.evaluate(state, dd.images, dd.labels))["loss"]
  for epoch in range(3):
    state, _, first_bad = train.train_epoch(state, dd.images, dd.labels, jax.random.key(epoch), 64)
    assert int(first_bad) == -1
  assert train.summarize(train.evaluate(state, dd.images, dd.labels))["loss"] < before
  assert not np.allclose(state.batch_stats["batchnorm_0"]["mean"], 0.0)
  text = models.summary(state.params, state.batch_stats, tiny_config.model)
  assert text.index("logits_batchnorm") < text.index("decoder_2") < text.index("decoder_0")
  tiny_config.model.denoising_weights = (1.0,)  # one weight for 4 layers
  with pytest.raises(config_lib.ConfigError, match="needs 4 values"):
    validation.validate(tiny_config)


def test_maxout_units_are_the_max_of_their_pieces():
  """activation='maxout': the Dense layer has pieces x width outputs, and each unit is the max of
  its `pieces` consecutive ones."""
  config = config_lib.load("adam_mlp")
  config.model.hidden_sizes, config.model.activation, config.model.maxout_pieces = (4,), "maxout", 3
  state = train.create_train_state(jax.random.key(0), config, input_dim=6)
  assert state.params["dense_0"]["kernel"].shape == (6, 12)
  assert state.params["logits"]["kernel"].shape == (4, 10)
  x = jax.random.normal(jax.random.key(1), (5, 6))
  dense, logits = state.params["dense_0"], state.params["logits"]
  pre = np.asarray(x @ dense["kernel"] + dense["bias"]).reshape(5, 4, 3)
  expected = pre.max(axis=-1) @ np.asarray(logits["kernel"]) + np.asarray(logits["bias"])
  np.testing.assert_allclose(train.predict_logits(state, x), expected, rtol=1e-5, atol=1e-6)
  assert "maxout of 3: 4 units" in models.summary(state.params, state.batch_stats, config.model)


def test_adversarial_maxout_is_the_papers_network():
  """Goodfellow et al.'s 1600-unit maxout net: 784 -> 1600 x 5 pieces -> 1600 x 5 -> 10; with
  the authors' init (uniform_0.005), weights in +-0.005 and zero biases."""
  config = config_lib.load("adversarial_maxout")
  config.num_seeds, config.model.kernel_init = 1, "uniform_0.005"
  state = train.create_train_state(jax.random.key(0), config, steps_per_epoch=600)
  shapes = {name: p["kernel"].shape for name, p in state.params.items()}
  assert shapes == {"dense_0": (784, 8000), "dense_1": (1600, 8000), "logits": (1600, 10)}
  assert sum(p.size for p in jax.tree.leaves(state.params)) == 19_104_010
  kernel = np.asarray(state.params["dense_1"]["kernel"])
  assert 0.0049 < np.abs(kernel).max() <= 0.005 and not np.any(state.params["dense_1"]["bias"])
  assert kernel.min() < -0.0049  # symmetric
