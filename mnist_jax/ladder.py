"""The Ladder network of Rasmus, Valpola, Honkala, Berglund and Raiko (2015), dense layers only.

"Semi-Supervised Learning with Ladder Networks", NeurIPS 2015 (arXiv:1507.02672); the layout of
every computation follows the authors' code, github.com/CuriousAI/ladder (`ladder.py`, `run.py`),
where the paper leaves a choice open.

Two encoder passes share their weights. The clean pass standardises every layer with its batch's
statistics and keeps the running averages for test time. The corrupted pass adds Gaussian noise to
the input and to every standardised pre-activation; the supervised cost is the cross-entropy of its
output, as the noise is the main regulariser of the supervised half. A decoder then runs top-down,
each layer combining the noisy lateral signal with what the layer above reconstructed, and is asked
to give back the clean pass's standardised activations: the denoising costs, one per layer from the
input z_0 up to the logits z_L, weighted by `denoising_weights`. The function combining the two
signals is Rasmus et al.'s (`VanillaCombinator`) or Pezeshki et al.'s AMLP
(`AugmentedMLPCombinator`), chosen by `combinator`. At test time the network is the clean encoder
alone, with the running averages.

    model = LadderMLP()
    variables = model.init({"params": key}, images, train=False)  # also creates the decoder
    logits, updates = model.apply(variables, images, train=True, mask=mask,
                                  rngs={"dropout": key}, mutable=["batch_stats", "losses"])
    loss = cross_entropy(logits, labels) + sum(jax.tree.leaves(updates["losses"]))

Each training step denoises the batch it classifies. So does the authors' code with all 60,000
labels: run.py draws the denoising batch from a second stream over the same images, but both
streams' ShuffledScheme start from Fuel's default seed (fuel/schemes.py,
`RandomState(config.default_seed)`), so the two batches are the same images in the same order.
Where this differs from their code: the running averages are exponential (`batchnorm_momentum`)
with the biased batch variance, as flax's BatchNorm (theirs reach momentum 0.9 after 10 steps and
use the unbiased variance). Their reported errors use statistics recomputed over the whole
training set after training: `config.train.batchnorm_statistics="recomputed"` does the same
(`train.population_batch_stats`).
"""

from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.cpu_tuning import dense_dot_general
from mnist_jax.hyperparams import active
from mnist_jax.layers import ACTIVATIONS, HIDDEN_BATCHNORM, HIDDEN_DENSE, LOGITS, LOGITS_BATCHNORM

# The authors' initialisation, randn(fan_in, fan_out) / sqrt(fan_in), for the encoder and decoder.
KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

# Activations that commute with a positive scale: a learned gamma before them would be undone by
# the next layer's standardisation, so (as in the authors' code) they get none.
SCALE_FREE_ACTIVATIONS = ("relu",)



def _moments(x, weights):
  """Mean and (biased) variance over the batch axis, over the real examples only."""
  if weights is None:
    mean = jnp.mean(x, axis=0)
    return mean, jnp.mean(jnp.square(x - mean), axis=0)
  w = weights[:, None]
  count = jnp.maximum(jnp.sum(weights), 1.0)
  mean = jnp.sum(w * x, axis=0) / count
  return mean, jnp.sum(w * jnp.square(x - mean), axis=0) / count


def _masked_mean(values, weights):
  """Mean over the batch of per-example values, over the real examples only."""
  if weights is None:
    return jnp.mean(values)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class LadderBatchNorm(nn.Module):
  """An encoder layer's normalisation, split in two because the noise goes in between:
  `normalize` standardises (no learned parameters; running averages in "batch_stats"), `shift`
  applies the learned beta (and gamma where the activation needs one) after the noise.

  The parameters are named like flax's BatchNorm (`bias`, `scale`; `mean`, `var`).
  """
  features: int
  use_scale: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-10

  def setup(self):
    self.mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,), jnp.float32)
    self.var = self.variable("batch_stats", "var", jnp.ones, (self.features,), jnp.float32)
    self.bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.use_scale:
      self.scale = self.param("scale", nn.initializers.ones, (self.features,))

  def normalize(self, z, weights, use_running_average: bool, update_stats: bool):
    """(standardised z, mean, variance) with the statistics used; updates the running averages
    from the batch's when `update_stats` (the clean pass only)."""
    if use_running_average:
      mean, var = self.mean.value, self.var.value
    else:
      mean, var = _moments(z, weights)
      if update_stats and not self.is_initializing():
        m = self.momentum
        self.mean.value = m * self.mean.value + (1.0 - m) * mean
        self.var.value = m * self.var.value + (1.0 - m) * var
    return (z - mean) * jax.lax.rsqrt(var + self.epsilon), mean, var

  def shift(self, z):
    z = z + self.bias
    return z * self.scale if self.use_scale else z


class VanillaCombinator(nn.Module):
  """The decoder's g(z~, u) of Rasmus et al. (2015), per unit: z^ = (z~ - mu(u)) v(u) + mu(u) with
  mu(u) = a1 sigmoid(a2 u + a3) + a4 u + a5 and v(u) = a6 sigmoid(a7 u + a8) + a9 u + a10.

  "gauss" in the authors' code (Pezeshki et al. 2016 give the name "vanilla" to another form, the
  sigmoid combinator of Valpola 2015: `g` in github.com/mpezeshki/ladder_network, ladder.py).
  Initialised as the authors': a2 = a7 = 1, the rest 0, so the first reconstruction is 0 and the
  decoder learns how much to trust z~.
  """

  @nn.compact
  def __call__(self, z_tilde, u):
    width = z_tilde.shape[-1]
    a = {i: self.param(f"a{i}", nn.initializers.ones if i in (2, 7) else nn.initializers.zeros,
                       (width,)) for i in range(1, 11)}
    mu = a[1] * jax.nn.sigmoid(a[2] * u + a[3]) + a[4] * u + a[5]
    v = a[6] * jax.nn.sigmoid(a[7] * u + a[8]) + a[9] * u + a[10]
    return (z_tilde - mu) * v + mu


class AugmentedMLPCombinator(nn.Module):
  """The "AMLP" combinator of Pezeshki, Fan, Brakel, Courville and Bengio (2016), "Deconstructing
  the Ladder Network Architecture" (ICML; arXiv:1511.06430): per unit, a small MLP whose input is
  augmented with the multiplicative term, (z~, u, z~ u) -> hidden_layers -> z^, leaky ReLU on the
  hidden layers and a linear output. Their Table 2's rows AMLP[4] and AMLP[2,2] (as secondary
  sources name them) are hidden_layers=(4,) and (2, 2).

  Its shape, read in github.com/sakishinoda/tf-ssl (ss_ladder, an implementation citing the paper:
  `Combinator`, default `--combinator_layers 4-1`, `--combinator_sd 0.025`, `lrelu` slope 0.1):
  leaky ReLU of slope 0.1, one output, weights drawn from N(0, 0.025^2), biases 0. Each unit has
  its own MLP, as each has its own a1..a10 in the vanilla combinator (that code shares one MLP
  across a layer's units); 21 parameters a unit for (4,), 17 for (2, 2).

  Parameters: `hidden_kernel` (units, 3, h_1) and `hidden_bias` for the first hidden layer,
  `hidden_kernel_<i>` and `hidden_bias_<i>` for the i-th after it (i = 1, 2, ...), `output_kernel`
  (units, h_last) and `output_bias`: a one-layer combinator keeps the names it always had.
  """
  hidden_layers: Sequence[int] = (4,)
  negative_slope: float = 0.1
  init_std: float = 0.025

  @nn.compact
  def __call__(self, z_tilde, u):
    widths = tuple(int(w) for w in self.hidden_layers)
    if not widths or min(widths) < 1:
      raise ValueError(f"The AMLP combinator needs one or more hidden layers of positive width; "
                       f"got hidden_layers={self.hidden_layers}.")
    units, init = z_tilde.shape[-1], nn.initializers.normal(self.init_std)
    # Written out unit by unit, elementwise, so XLA fuses it into one loop (a batched einsum of
    # 3x4 matrices is several times slower on CPU).
    layer = (z_tilde, u, z_tilde * u)
    for i, width in enumerate(widths):
      suffix = f"_{i}" if i else ""
      kernel = self.param(f"hidden_kernel{suffix}", init, (units, len(layer), width))
      bias = self.param(f"hidden_bias{suffix}", nn.initializers.zeros, (units, width))
      layer = tuple(
          nn.leaky_relu(bias[:, k] + sum(x * kernel[:, j, k] for j, x in enumerate(layer)),
                        self.negative_slope)
          for k in range(width))
    output_kernel = self.param("output_kernel", init, (units, widths[-1]))
    output_bias = self.param("output_bias", nn.initializers.zeros, (units,))
    z_hat = output_bias
    for k, h in enumerate(layer):
      z_hat = z_hat + output_kernel[:, k] * h
    return z_hat


# config.model.combinator -> the decoder's g(z~, u).
COMBINATOR_MODULES = {"vanilla": VanillaCombinator, "amlp": AugmentedMLPCombinator}
COMBINATORS = tuple(COMBINATOR_MODULES)


def _per_layer(value, count: int, what: str) -> tuple:
  values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  values = values * count if len(values) == 1 else values
  if len(values) != count:
    raise ValueError(f"{what} needs one value per layer from the input z_0 to the logits z_L "
                     f"({count}), or a single value; got {values}.")
  return tuple(float(v) if isinstance(v, (int, float)) else v for v in values)  # or traced


class LadderMLP(nn.Module):
  """Dense Ladder network: the encoder 784-hidden_sizes-num_classes, the decoder its mirror.

  Called like `models.MLP`: images (N, 28, 28) or (N, 784); `mask` (N,) marks real
  examples (padding enters no batch statistic and no cost); the noise comes from the "dropout" rng.
  `train=True` (which needs "batch_stats" mutable, as flax's BatchNorm does, for the clean pass's
  running averages) returns the corrupted pass's logits and, when "losses" is mutable, sows there
  "denoising": the weighted sum of the denoising costs (a scalar, mean over the real examples),
  to be added to the supervised loss; each layer's unweighted cost goes to "intermediates" as
  "denoising_cost_<l>" when that collection is mutable. `train=False` returns the clean encoder's
  logits with the running averages, and draws no randomness.

  The decoder runs from the top down to the lowest layer whose weight is nonzero, so only the
  needed part exists: all weights 0 leaves the supervised half alone (the "baseline" of the paper),
  top weight only is the Gamma-model. `always_decode` runs the whole decoder whatever the weights
  (to log every layer's cost); terms of weight 0 are still left out of "denoising", so they neither
  change the loss nor send gradients anywhere.

  Layer names: encoder `dense_<i>` (no bias: the standardisation removes it) and `logits`, each
  followed by `batchnorm_<i>` / `logits_batchnorm` (beta, gamma, running averages); decoder
  `decoder_<l>` (V_l, from layer l+1 to layer l) and `combinator_<l>`, l = 0 (input) ... L.
  """
  hidden_sizes: Sequence[int] = (1000, 500, 250, 250, 250)
  num_classes: int = 10
  activation: str = "relu"
  # Std of the Gaussian noise of the corrupted pass: one value for every layer, or one per layer
  # from the input z_0 to the logits z_L (the authors' supervised baseline: 0.3 on the input,
  # 0.5 elsewhere).
  noise_std: Union[float, Sequence[float]] = 0.3
  # lambda_l, from the input z_0 to the logits z_L; the authors' run for all 60,000 labels.
  denoising_weights: Sequence[float] = (1000.0, 1.0, 0.01, 0.01, 0.01, 0.01, 0.01)
  combinator: str = "vanilla"  # COMBINATORS: Rasmus et al.'s g, or Pezeshki et al.'s AMLP
  # The AMLP combinator's hidden layers: (4,) is their AMLP[4], (2, 2) AMLP[2,2].
  combinator_hidden: Sequence[int] = (4,)
  batchnorm_momentum: float = 0.99
  batchnorm_epsilon: float = 1e-10  # the authors' value, everywhere they standardise
  always_decode: bool = False

  @property
  def num_layers(self) -> int:
    """L: the number of Dense layers; the denoising costs are indexed 0 (input) ... L."""
    return len(self.hidden_sizes) + 1

  def lowest_decoded_layer(self) -> Optional[int]:
    """The lowest layer the decoder reconstructs, None when it does not run."""
    if self.always_decode:
      return 0
    weights = _per_layer(self.denoising_weights, self.num_layers + 1, "denoising_weights")
    nonzero = [layer for layer, w in enumerate(weights) if active(w)]
    return min(nonzero) if nonzero else None

  @nn.compact
  def __call__(self, images, train: bool = False, mask: Optional[jax.Array] = None):
    if self.combinator not in COMBINATORS:
      raise ValueError(f"Unknown combinator {self.combinator!r}: use one of {COMBINATORS}.")
    num_layers = self.num_layers
    noise_std = _per_layer(self.noise_std, num_layers + 1, "noise_std")
    lambdas = _per_layer(self.denoising_weights, num_layers + 1, "denoising_weights")
    lowest = self.lowest_decoded_layer()
    widths = tuple(int(w) for w in self.hidden_sizes) + (self.num_classes,)
    x = images.reshape(images.shape[0], -1).astype(jnp.float32)
    weights = None if mask is None else (mask > 0).astype(jnp.float32)

    # Every encoder module is created once and applied by both passes, which share its weights.
    dense = [nn.Dense(w, use_bias=False, kernel_init=KERNEL_INIT, dot_general=dense_dot_general,
                      name=f"{HIDDEN_DENSE}_{i}" if i < num_layers - 1 else LOGITS)
             for i, w in enumerate(widths)]
    norms = [LadderBatchNorm(
        w, use_scale=(i == num_layers - 1 or self.activation not in SCALE_FREE_ACTIVATIONS),
        momentum=self.batchnorm_momentum, epsilon=self.batchnorm_epsilon,
        name=f"{HIDDEN_BATCHNORM}_{i}" if i < num_layers - 1 else LOGITS_BATCHNORM)
             for i, w in enumerate(widths)]

    def encode(noisy: bool):
      """(logits, lateral z_0..z_L, batch statistics of layers 1..L); noise only when `noisy`."""
      keys = jax.random.split(self.make_rng("dropout"), num_layers + 1) if noisy else None
      noise = lambda z, layer: (z + noise_std[layer] * jax.random.normal(keys[layer], z.shape)
                                if noisy and active(noise_std[layer]) else z)
      h = noise(x, 0)
      lateral, stats = [h], [None]
      for i in range(num_layers):
        z, mean, var = norms[i].normalize(dense[i](h), weights, use_running_average=not train,
                                          update_stats=train and not noisy)
        z = noise(z, i + 1)
        lateral.append(z)
        stats.append((mean, var))
        h = norms[i].shift(z)
        if i < num_layers - 1:
          h = ACTIVATIONS[self.activation](h)
      return h, lateral, stats

    if not train:
      logits, clean, clean_stats = encode(noisy=False)
      if lowest is not None and self.is_initializing():
        # model.init(..., train=False) must create the decoder's parameters too.
        self._decode(clean, jax.nn.softmax(logits), clean, clean_stats, weights, lowest)
      return logits

    # The clean pass first: it alone updates the running averages (for test time), and gives
    # the targets and statistics of the denoising costs.
    _, clean, clean_stats = encode(noisy=False)
    logits, corrupted, _ = encode(noisy=True)
    total = jnp.zeros((), jnp.float32)
    if lowest is not None:
      costs = self._decode(corrupted, jax.nn.softmax(logits), clean, clean_stats, weights, lowest)
      for layer, cost in costs.items():
        self.sow("intermediates", f"denoising_cost_{layer}", cost)
        if active(lambdas[layer]):
          total = total + lambdas[layer] * cost
    self.sow("losses", "denoising", total)
    return logits

  def _combinator(self, name: str) -> nn.Module:
    if self.combinator == "amlp":
      return AugmentedMLPCombinator(hidden_layers=tuple(self.combinator_hidden), name=name)
    return COMBINATOR_MODULES[self.combinator](name=name)

  def _decode(self, lateral, top, clean, clean_stats, weights, lowest):
    """Denoising costs {layer: cost} from the top down to `lowest`.

    u_L = BN(softmax of the corrupted logits), u_l = BN(V_l z^_{l+1}) below; z^_l = g(z~_l, u_l);
    the cost compares the clean pass's standardised z_l with z^_l standardised by the clean
    batch's statistics (the input, l = 0, unstandardised): per example the mean squared error
    over the layer's units (the authors' squared error / width), then the mean over the batch.
    """
    def standardize(u):
      mean, var = _moments(u, weights)
      return (u - mean) * jax.lax.rsqrt(var + self.batchnorm_epsilon)

    costs = {}
    z_hat = None
    for layer in range(self.num_layers, lowest - 1, -1):
      width = lateral[layer].shape[-1]
      if layer == self.num_layers:
        u = top
      else:
        u = nn.Dense(width, use_bias=False, kernel_init=KERNEL_INIT,
                     name=f"decoder_{layer}")(z_hat)
      z_hat = self._combinator(f"combinator_{layer}")(lateral[layer], standardize(u))
      if layer:
        mean, var = clean_stats[layer]
        reconstruction = (z_hat - mean) * jax.lax.rsqrt(var + self.batchnorm_epsilon)
      else:
        reconstruction = z_hat
      costs[layer] = _masked_mean(jnp.mean(jnp.square(clean[layer] - reconstruction), axis=-1),
                                  weights)
    return costs
