"""What every model shares: activations, kernel initialisers, layer names, building from config.

The layer names (`dense_<i>`, `batchnorm_<i>`, `input_batchnorm`, `logits`, `logits_batchnorm`)
are the parameter tree's top-level keys: the models set them, and max-norm (`is_hidden_kernel`,
`is_logits_kernel`) and `models.summary` read them. `ACTIVATIONS` and `KERNEL_INITS` are
registries that config validation reads.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def maxout(x: jax.Array, pieces: int) -> jax.Array:
  """Maxout units (Goodfellow et al. 2013): each unit is the max of `pieces` consecutive outputs
  of its Dense layer, (..., units * pieces) -> (..., units)."""
  return x.reshape(*x.shape[:-1], -1, pieces).max(axis=-1)


ACTIVATIONS = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "swish": nn.swish,
    "maxout": maxout,  # not elementwise: the Dense layer has config.model.maxout_pieces per unit
}

KERNEL_INITS = {
    "glorot_uniform": nn.initializers.glorot_uniform(),  # Keras Dense default
    "glorot_normal": nn.initializers.glorot_normal(),
    "he_uniform": nn.initializers.he_uniform(),
    "he_normal": nn.initializers.he_normal(),
    "lecun_uniform": nn.initializers.lecun_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),  # Flax Dense default
    # U(-0.005, 0.005) whatever the layer's size: pylearn2's `irange: .005` (Goodfellow et al.).
    "uniform_0.005": lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -0.005, 0.005),
}

class Dropout(nn.Module):
  """`flax.linen.Dropout` (the same mask from the same key) whose rate may be a traced value, a
  sweep's; flax's branches on the rate in Python. Callers leave it out where the rate is a
  Python 0 (`hyperparams.active`)."""
  rate: Any

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


INPUT_BATCHNORM, HIDDEN_DENSE, HIDDEN_BATCHNORM, LOGITS, LOGITS_BATCHNORM = (
    "input_batchnorm", "dense", "batchnorm", "logits", "logits_batchnorm")


def _layer_and_leaf(path) -> tuple:
  """(layer name, parameter name) of a parameter path from tree_map_with_path; the layer may sit
  inside a wrapper (an NNX module's bridge)."""
  names = [str(getattr(k, "key", k)) for k in path]
  return (names[-2] if len(names) > 1 else ""), names[-1]


def is_hidden_kernel(path) -> bool:
  """Whether a parameter path is a hidden Dense layer's kernel."""
  layer, leaf = _layer_and_leaf(path)
  return leaf == "kernel" and layer.startswith(f"{HIDDEN_DENSE}_")


def is_logits_kernel(path) -> bool:
  """Whether a parameter path is the logits layer's kernel."""
  return _layer_and_leaf(path) == (LOGITS, "kernel")


def from_config(module_class, model_config) -> nn.Module:
  """`module_class` with the fields of `model_config` it declares (the others belong to other
  models); sequences as tuples, so the module stays hashable."""
  fields = set(module_class.__dataclass_fields__) - {"parent", "name"}
  return module_class(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                         for k, v in model_config.items() if k in fields})
