"""An NNX module trained by the linen trainer through flax.nnx.bridge: model "nnx_mlp"."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import leaves_equal, resumes_from
from mnist_jax import errors, loop, models, train, validation


@pytest.fixture
def nnx_config(tiny_config):
  tiny_config.model.name, tiny_config.model.hidden_sizes = "nnx_mlp", (32, 16)
  tiny_config.model.dropout = (0.5, 0.5)
  return tiny_config


def test_layers_and_parameter_count_are_the_linen_mlps(nnx_config):
  state = train.create_train_state(jax.random.key(0), nnx_config)
  layers = state.params["nnx"]  # the bridge's one submodule
  assert sorted(layers) == ["dense_0", "dense_1", "logits"]
  assert layers["dense_0"]["kernel"].shape == (784, 32)
  nnx_config.model.name, nnx_config.model.dropout = "mlp", ()
  linen = train.create_train_state(jax.random.key(0), nnx_config)
  count = lambda params: sum(p.size for p in jax.tree.leaves(params))
  assert count(state.params) == count(linen.params) == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
  summary = models.summary(state.params, state.batch_stats, nnx_config.model)
  assert [line.split(":")[0] for line in summary.splitlines()[2:-1]] == [
      "dense_0", "dense_1", "logits"]


def test_dropout_draws_from_the_steps_key_and_only_in_training(nnx_config):
  state = train.create_train_state(jax.random.key(0), nnx_config)
  x = jax.random.uniform(jax.random.key(1), (4, 784))
  apply = lambda **kw: state.apply_fn({"params": state.params}, x, **kw)
  np.testing.assert_array_equal(apply(train=False), apply(train=False))
  key = {"dropout": jax.random.key(2)}
  np.testing.assert_array_equal(apply(train=True, rngs=key), apply(train=True, rngs=key))
  assert not np.allclose(apply(train=True, rngs=key), apply(train=False))
  assert not np.allclose(apply(train=True, rngs=key),
                         apply(train=True, rngs={"dropout": jax.random.key(3)}))


def test_trains_with_max_norm_and_resumes_exactly(nnx_config, tmp_path):
  """The whole trainer: optimizer, max-norm on its hidden kernels (found by layer name through
  the bridge), checkpoints, and an exact resume."""
  nnx_config.optimizer.max_norm, nnx_config.train.epochs = 0.5, 3
  validation.validate(nnx_config)
  straight, history = loop.train_and_evaluate(nnx_config, tmp_path / "straight")
  assert history["train_loss"][-1] < history["train_loss"][0]
  for name in ("dense_0", "dense_1"):
    norms = jnp.linalg.norm(straight.params["nnx"][name]["kernel"], axis=0)
    assert float(norms.max()) <= 0.5 + 1e-5
  assert float(jnp.linalg.norm(straight.params["nnx"]["logits"]["kernel"], axis=0).max()) > 0.5

  run = tmp_path / "run"
  shutil.copytree(tmp_path / "straight", run)
  (run / "summary.json").unlink()  # killed after epoch 2's save
  shutil.rmtree(run / "checkpoints" / "3")
  with resumes_from(run, 2):
    resumed, _ = loop.train_and_evaluate(nnx_config, run)
  assert leaves_equal(resumed, straight)
  assert json.loads((run / "summary.json").read_text())["test_accuracy"] > 0.2  # chance: 0.1


def test_options_the_nnx_model_lacks_are_refused(nnx_config):
  nnx_config.model.hidden_batchnorm = True
  with pytest.raises(errors.ConfigError, match="hidden_batchnorm: not fields of the 'nnx_mlp'"):
    validation.validate(nnx_config)
