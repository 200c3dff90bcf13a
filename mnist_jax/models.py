"""The multilayer perceptron, as a Flax linen module built from `config.model`."""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

ACTIVATIONS = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "swish": nn.swish,
}

KERNEL_INITS = {
    "glorot_uniform": nn.initializers.glorot_uniform(),  # Keras Dense default
    "glorot_normal": nn.initializers.glorot_normal(),
    "he_uniform": nn.initializers.he_uniform(),
    "he_normal": nn.initializers.he_normal(),
    "lecun_uniform": nn.initializers.lecun_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),  # Flax Dense default
}


# ---------------------------------------------------------------------------------------------
# The logits layer's product, with a weight gradient XLA:CPU computes fast


@jax.custom_jvp
def narrow_matmul(x, kernel):
  """x @ kernel for a kernel with few columns (the logits layer): the same values and gradients,
  with the weight gradient computed in the orientation XLA:CPU is fast at.

  jax differentiates x @ kernel into x^T g, one product contracting the batch axis of both
  operands. With 10 output columns, XLA:CPU (Eigen) computes that form slowly; as (g^T x)^T, a
  plain [10, batch] @ [batch, in] product between two small transposed copies, the same sums take
  a fraction of the time (rmsprop_mlp's 512 -> 10 layer, batch 128: 147 us -> 25 us a step; whole
  epochs -6%) and give bit-identical parameters. The optimization barriers keep XLA from folding
  the transposes back into the product.
  """
  return x @ kernel


@functools.partial(narrow_matmul.defjvp, symbolic_zeros=True)
def _narrow_matmul_jvp(primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  barrier = jax.lax.optimization_barrier
  out = x @ kernel  # jax calls this rule only when dx or dkernel is nonzero
  if isinstance(dkernel, SymbolicZero):
    return out, dx @ kernel
  dout = barrier(barrier(dkernel.T) @ x.T).T  # transposed by reverse mode into (barrier(g^T) x)^T
  return out, dout if isinstance(dx, SymbolicZero) else dx @ kernel + dout


# Where narrow_matmul is used: measured on a 2-core Xeon, at batch 1024 (sigmoid_mlp) it was no
# faster, and its sums there differ from jax's in the last bit.
NARROW_OUTPUTS, SMALL_BATCH = 16, 256


def dense_dot_general(x, kernel, dimension_numbers, precision=None, **kwargs):
  """nn.Dense's product: `narrow_matmul` for narrow layers and small batches on CPU."""
  if (jax.default_backend() == "cpu" and x.ndim == 2 and x.shape[0] <= SMALL_BATCH
      and kernel.shape[1] <= NARROW_OUTPUTS and dimension_numbers == (((1,), (0,)), ((), ()))
      and precision is None and not kwargs):
    return narrow_matmul(x, kernel)
  return jax.lax.dot_general(x, kernel, dimension_numbers, precision=precision, **kwargs)


# ---------------------------------------------------------------------------------------------
# The model


class MLP(nn.Module):
  """Flatten -> [BatchNorm] -> [Dropout] -> [+noise] -> (Dense -> [BatchNorm] -> [+noise] ->
  activation -> [Dropout])* -> Dense logits.

  Returns logits: the softmax of the Keras models lives in the loss, which is the same function
  computed stably. `gaussian_noise` (training only) adds N(0, sigma^2) to the input and to every
  hidden pre-activation, as in the supervised part of ladder networks (Rasmus et al. 2015), where
  with BatchNorm in every layer (`hidden_batchnorm`) it is the main regulariser.
  """
  hidden_sizes: Sequence[int]
  activation: str = "relu"
  dropout: Sequence[float] = ()
  input_dropout: float = 0.0
  input_batchnorm: bool = False
  hidden_batchnorm: bool = False
  gaussian_noise: float = 0.0
  batchnorm_momentum: float = 0.99
  batchnorm_epsilon: float = 1e-3
  kernel_init: str = "glorot_uniform"
  num_classes: int = 10

  @classmethod
  def from_config(cls, model_config) -> "MLP":
    return cls(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                  for k, v in model_config.items()})

  @nn.compact
  def __call__(self, images, train: bool = False, mask: Optional[jax.Array] = None):
    """`mask` (batch,) marks real examples, so padding never enters BatchNorm's statistics."""
    x = images.reshape(images.shape[0], -1).astype(jnp.float32)
    real = None if mask is None else mask[:, None] > 0
    batchnorm = lambda name: nn.BatchNorm(
        use_running_average=not train, momentum=self.batchnorm_momentum,
        epsilon=self.batchnorm_epsilon, name=name)
    if self.input_batchnorm:
      x = batchnorm("input_batchnorm")(x, mask=real)
    if self.input_dropout:
      x = nn.Dropout(self.input_dropout, deterministic=not train, name="input_dropout")(x)
    x = self._noise(x, train)
    init = KERNEL_INITS[self.kernel_init]
    rates = tuple(self.dropout) or (0.0,) * len(self.hidden_sizes)
    for i, (width, rate) in enumerate(zip(self.hidden_sizes, rates)):
      x = nn.Dense(width, kernel_init=init, dot_general=dense_dot_general,
                   name=f"dense_{i}")(x)
      if self.hidden_batchnorm:
        x = batchnorm(f"batchnorm_{i}")(x, mask=real)
      x = ACTIVATIONS[self.activation](self._noise(x, train))
      if rate:
        x = nn.Dropout(rate, deterministic=not train, name=f"dropout_{i}")(x)
    return nn.Dense(self.num_classes, kernel_init=init, dot_general=dense_dot_general,
                    name="logits")(x)

  def _noise(self, x, train: bool):
    if not (train and self.gaussian_noise):
      return x
    # From the "dropout" stream, so train_step's one key drives every random choice of a step.
    return x + self.gaussian_noise * jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)
