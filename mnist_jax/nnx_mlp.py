"""A multilayer perceptron written in Flax NNX, trained by this linen-based trainer.

Flax recommends NNX for new modules. The trainer keeps its parameters as one plain pytree (vmapped
replicas, a whole epoch in one `lax.scan`, orbax checkpoints), so an NNX module joins it through
`flax.nnx.bridge.ToLinen`: the wrapper creates the NNX module from the linen variables on every
call and writes its state back, and everything else (optimizers, replicas, checkpoints, resume,
the report) works unchanged. `--config.model.name=nnx_mlp` trains this one; any NNX module with
the same call signature can be registered in `models.MODELS` the same way.
"""

from typing import Sequence

import flax.linen as nn
import jax
from flax import nnx

from mnist_jax.layers import ACTIVATIONS, HIDDEN_DENSE, KERNEL_INITS, LOGITS


class MLP(nnx.Module):
  """Dense -> activation -> [Dropout], repeated, then Dense logits (the `mlp` model without its
  BatchNorm and noise options)."""

  def __init__(self, input_dim: int, hidden_sizes: Sequence[int], num_classes: int,
               activation: str, dropout: Sequence[float], kernel_init: str, *, rngs: nnx.Rngs):
    widths = (input_dim, *hidden_sizes)
    init = KERNEL_INITS[kernel_init]
    # Named like the linen MLP's layers, so max-norm and the summary read them the same way.
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
      setattr(self, f"{HIDDEN_DENSE}_{i}", nnx.Linear(fan_in, fan_out, kernel_init=init, rngs=rngs))
    setattr(self, LOGITS, nnx.Linear(widths[-1], num_classes, kernel_init=init, rngs=rngs))
    self.activation = activation
    self.rates = tuple(dropout) or (0.0,) * len(hidden_sizes)
    # The bridge builds the module anew on every call, with the caller's rng streams: dropout
    # draws from the "dropout" stream that train_step passes to apply.
    self.rngs = rngs

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, rate in enumerate(self.rates):
      x = ACTIVATIONS[self.activation](getattr(self, f"{HIDDEN_DENSE}_{i}")(x))
      if rate and train:
        x = nnx.Dropout(rate)(x, rngs=self.rngs.dropout)
    return getattr(self, LOGITS)(x)


class NNXBridgeMLP(nn.Module):
  """`MLP` as a linen module with the trainer's calling convention (registered as "nnx_mlp")."""
  hidden_sizes: Sequence[int] = (100,)
  num_classes: int = 10
  activation: str = "relu"
  dropout: Sequence[float] = ()
  kernel_init: str = "glorot_uniform"

  @nn.compact
  def __call__(self, images, train: bool = False, mask=None):
    del mask  # no batch statistics: padded examples are dropped by the loss's mask
    x = images.reshape(images.shape[0], -1).astype(jax.numpy.float32)
    return nnx.bridge.ToLinen(
        MLP, args=(x.shape[-1], tuple(self.hidden_sizes), self.num_classes, self.activation,
                   tuple(self.dropout), self.kernel_init), name="nnx")(x, train=train)
