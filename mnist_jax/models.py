"""The multilayer perceptron (Flax linen), the registry of models, and their Keras-style summary.

`MODELS` maps config.model.name to a module class; `build` makes one from config.model's fields
(`layers.from_config`). A model is called as `apply(variables, images, train=..., mask=...)` and
returns logits.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import hyperparams, ladder, layers, nnx_mlp
from mnist_jax.cpu_tuning import dense_dot_general
from mnist_jax.layers import (
  ACTIVATIONS,
  HIDDEN_BATCHNORM,
  HIDDEN_DENSE,
  INPUT_BATCHNORM,
  KERNEL_INITS,
  LOGITS,
  LOGITS_BATCHNORM,
  maxout,
)


class MLP(nn.Module):
  """Flatten -> [BatchNorm] -> [Dropout] -> [+noise] -> (Dense -> [BatchNorm] -> [+noise] ->
  activation -> [Dropout])* -> Dense logits -> [BatchNorm].

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
  # BatchNorm on the logits too (with its scale, as every BatchNorm here): Miyato et al.'s VAT
  # network standardises every layer, the output included.
  logits_batchnorm: bool = False
  gaussian_noise: float = 0.0
  maxout_pieces: int = 5  # activation="maxout" only: the Dense outputs per hidden unit
  batchnorm_momentum: float = 0.99
  batchnorm_epsilon: float = 1e-3
  kernel_init: str = "glorot_uniform"
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train: bool = False, mask: Optional[jax.Array] = None):
    """`mask` (batch,) marks real examples, so padding never enters BatchNorm's statistics."""
    x = images.reshape(images.shape[0], -1).astype(jnp.float32)
    real = None if mask is None else mask[:, None] > 0
    batchnorm = lambda name: nn.BatchNorm(
        use_running_average=not train, momentum=self.batchnorm_momentum,
        epsilon=self.batchnorm_epsilon, name=name)
    if self.input_batchnorm:
      x = batchnorm(INPUT_BATCHNORM)(x, mask=real)
    if hyperparams.active(self.input_dropout):
      x = layers.Dropout(self.input_dropout, name="input_dropout")(x, deterministic=not train)
    x = self._noise(x, train)
    init = KERNEL_INITS[self.kernel_init]
    rates = tuple(self.dropout) or (0.0,) * len(self.hidden_sizes)
    pieces = self.maxout_pieces if self.activation == "maxout" else 1
    for i, (width, rate) in enumerate(zip(self.hidden_sizes, rates)):
      x = nn.Dense(width * pieces, kernel_init=init, dot_general=dense_dot_general,
                   name=f"{HIDDEN_DENSE}_{i}")(x)
      if self.hidden_batchnorm:
        x = batchnorm(f"{HIDDEN_BATCHNORM}_{i}")(x, mask=real)
      x = self._noise(x, train)
      x = maxout(x, pieces) if self.activation == "maxout" else ACTIVATIONS[self.activation](x)
      if hyperparams.active(rate):
        x = layers.Dropout(rate, name=f"dropout_{i}")(x, deterministic=not train)
    logits = nn.Dense(self.num_classes, kernel_init=init, dot_general=dense_dot_general,
                      name=LOGITS)(x)
    return batchnorm(LOGITS_BATCHNORM)(logits, mask=real) if self.logits_batchnorm else logits

  def _noise(self, x, train: bool):
    if not (train and hyperparams.active(self.gaussian_noise)):
      return x
    # From the "dropout" stream, so train_step's one key drives every random choice of a step.
    return x + self.gaussian_noise * jax.random.normal(self.make_rng("dropout"), x.shape, x.dtype)


# config.model.name -> the module class, built with the config.model fields it declares.
MODELS = {"mlp": MLP, "ladder": ladder.LadderMLP, "nnx_mlp": nnx_mlp.NNXBridgeMLP}


def build(model_config) -> nn.Module:
  return layers.from_config(MODELS[model_config.name], model_config)


# The fields that add noise, drop units or add costs while training: 0 leaves each part out.
_TRAINING_ONLY = ("input_dropout", "dropout", "gaussian_noise", "noise_std", "denoising_weights")


def measuring(model: nn.Module) -> nn.Module:
  """`model` as a training-mode pass that only measures BatchNorm's batch statistics: no noise,
  no dropout, no decoder, and momentum 0, so each call's "batch_stats" are that batch's mean and
  (biased) variance."""
  fields = {f: 0.0 for f in _TRAINING_ONLY if f in model.__dataclass_fields__}
  return with_values(model, {**fields, "batchnorm_momentum": 0.0})


def with_values(model: nn.Module, values: dict) -> nn.Module:
  """`model` with fields replaced by (traced) values, {field: value}: a sweep's point. A per-layer
  field (a sequence) gets the value for every layer."""
  return model.clone(**{field: hyperparams.per_layer(getattr(model, field), value,
                                                     len(model.hidden_sizes))
                         for field, value in values.items()})


# ---------------------------------------------------------------------------------------------
# The summary


_TOP = 10**6  # the logits' position; a Ladder's decoder comes after it, top-down


def _layer_position(name: str) -> tuple:
  """Order of the layers in the network (parameter dicts come sorted by name)."""
  if name == INPUT_BATCHNORM:
    return (-1, 0)
  if name in (LOGITS, LOGITS_BATCHNORM):
    return (_TOP, len(name))
  kind, _, index = name.rpartition("_")
  if not index.isdigit():
    return (3 * _TOP, 0)  # a layer named otherwise: last, by name
  if kind in (HIDDEN_DENSE, HIDDEN_BATCHNORM):
    return (int(index), 0 if kind == HIDDEN_DENSE else 1)
  return (2 * _TOP - int(index), 0 if kind == "decoder" else 1)  # ladder.LadderMLP's decoder


def _unwrap(tree: dict) -> dict:
  """The layers of a variable tree, below a single wrapper (an NNX module's bridge) if any."""
  while len(tree) == 1 and all(isinstance(v, dict) for v in next(iter(tree.values())).values()):
    tree = next(iter(tree.values()))
  return tree


def summary(params, batch_stats, model_config) -> str:
  """A Keras-like table of the network: layer, output shape, parameter counts."""
  params, batch_stats = _unwrap(params), _unwrap(batch_stats)
  rows = [("Layer", "Output shape", "Params")]
  trainable = non_trainable = 0
  for name in sorted(params, key=lambda n: (_layer_position(n), n)):
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params[name]))
    stats = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(batch_stats.get(name, {})))
    trainable += count
    non_trainable += stats
    # A combinator's width is its output's (an AMLP's first leaf is a hidden bias).
    width = params[name].get("output_bias", jax.tree.leaves(params[name])[0]).shape[-1]
    kind = ("Dense" if "kernel" in params[name] else
            "Combinator" if name.startswith("combinator_") else "BatchNorm")
    if kind == "Combinator" and "output_bias" in params[name]:
      kind += f" (AMLP {'-'.join(str(w) for w in (3, *model_config.combinator_hidden, 1))})"
    index = name.rpartition("_")[2]
    # The activation follows a hidden layer's BatchNorm when it has one, else its Dense.
    if name == f"{HIDDEN_BATCHNORM}_{index}" or (
        name == f"{HIDDEN_DENSE}_{index}" and f"{HIDDEN_BATCHNORM}_{index}" not in params):
      if model_config.activation == "maxout":
        kind += (f" (maxout of {model_config.maxout_pieces}: "
                 f"{width // model_config.maxout_pieces} units)")
      else:
        kind += f" ({model_config.activation})"
    elif name == LOGITS:
      kind += " (softmax in loss)"
    rows.append((f"{name}: {kind}", f"(None, {width})",
                 f"{count + stats:,}" + (f" ({stats:,} non-trainable)" if stats else "")))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  lines.append(f"Total params: {trainable + non_trainable:,} "
               f"(trainable {trainable:,}, non-trainable {non_trainable:,})")
  return "\n".join(lines)

