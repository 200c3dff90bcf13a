"""Adversarial regularisers as pure functions of a model's logits function: virtual adversarial
training (Miyato et al.) and adversarial training with the fast gradient sign method (Goodfellow
et al.).

Both take the model as a function of the images alone (parameters, batch statistics, mask and
noise key bound by the caller), so they work for any model and add to the supervised loss inside
`train_step`. Their perturbations are constants: gradients reach the parameters only through the
model's output at the perturbed images (and, for VAT, not through the reference distribution
either).

* Miyato, Maeda, Koyama, Nakae, Ishii, "Distributional Smoothing with Virtual Adversarial
  Training", ICLR 2016 (arXiv:1507.00677), and Miyato, Maeda, Koyama, Ishii, "Virtual Adversarial
  Training: a Regularization Method for Supervised and Semi-Supervised Learning", TPAMI 2018
  (arXiv:1704.03976). Details as in the authors' code: github.com/takerum/vat
  (`source/costs/virtual_adversarial_training_finite_diff.py`, the ICLR paper's MNIST runs) and
  github.com/takerum/vat_tf (`vat.py`, TPAMI).
* Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
  (arXiv:1412.6572), section 6: J~(x) = alpha J(x) + (1 - alpha) J(x + epsilon sign(grad_x J(x))).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from mnist_jax.hyperparams import active


def _example_axes(x) -> tuple:
  return tuple(range(1, x.ndim))


def normalize_per_example(d: jax.Array) -> jax.Array:
  """d scaled to unit L2 norm over all of each example's pixels (to within 5e-7).

  As the authors' `get_normalized_vector`: first divided by its largest magnitude, so that the
  tiny gradients of the power iteration (of order xi) neither underflow nor lose precision when
  squared, then by sqrt(1e-6 + ||d||^2). The first division's guard is the smallest normal float
  (theirs: 1e-12 or 1e-20), so that every nonzero d, however small, comes out with unit norm; a
  zero d (a padded example) stays zero.
  """
  axes = _example_axes(d)
  tiny = jnp.finfo(d.dtype).tiny
  d = d / (tiny + jnp.max(jnp.abs(d), axis=axes, keepdims=True))
  return d * jax.lax.rsqrt(1e-6 + jnp.sum(jnp.square(d), axis=axes, keepdims=True))


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """KL(p || q) per example, for distributions given by logits (last axis)."""
  log_p = jax.nn.log_softmax(p_logits)
  log_q = jax.nn.log_softmax(q_logits)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _masked_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  if mask is None:
    return jnp.mean(values)
  weights = (mask > 0).astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def virtual_adversarial_perturbation(logits_fn: Callable[[jax.Array], jax.Array],
                                     images: jax.Array, key: jax.Array, *, epsilon: float,
                                     xi: float = 1e-6, num_iterations: int = 1,
                                     mask: Optional[jax.Array] = None) -> jax.Array:
  """r_vadv: the direction that most changes the model's output distribution, L2 norm `epsilon`
  per example; a constant (no gradient flows through it).

  Power iteration on the Hessian of d -> KL(p(x) || p(x + d)) at d = 0, with the product by a
  finite difference: d <- normalize(grad_d KL(p(x) || p(x + xi d))), from a random Gaussian d.
  Padded examples (mask 0) get r = 0.

  p(x) is `logits_fn(images)` itself: any difference between the reference and the perturbed
  passes other than d, even rounding from a differently compiled forward pass, adds a first-order
  term that swamps the xi-sized second-order one. Inside the caller's jit this repeats its
  forward pass, which XLA computes once.

  xi = 1e-6 is the authors' value. In float32 it is below what the arithmetic resolves: spread
  over 784 pixels it moves each by about 4e-8, less than float32's spacing near 0.5 (6e-8), so
  p(x + xi d) - p(x) is mostly rounding and the direction found is close to random. For pixels in
  [0, 1], xi = 1e-2 follows the exact Hessian-vector product closely. xi = 0 computes that
  product exactly (forward-over-reverse differentiation: the limit xi -> 0 the authors' tiny xi
  stands for, free of rounding).
  """
  p_logits = jax.lax.stop_gradient(logits_fn(images))

  def divergence(d):
    return _masked_mean(kl_divergence(p_logits, logits_fn(images + d)), mask)

  def hessian_times(d):
    if active(xi):  # a Python 0 is exact; any other xi (traced too) a finite difference
      return jax.grad(divergence)(xi * d)  # xi H d, to first order
    return jax.jvp(jax.grad(divergence), (jnp.zeros_like(d),), (d,))[1]

  d = jax.random.normal(key, images.shape, images.dtype)
  d = jax.lax.fori_loop(0, num_iterations, lambda _, d: hessian_times(normalize_per_example(d)), d)
  return jax.lax.stop_gradient(epsilon * normalize_per_example(d))


def virtual_adversarial_loss(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                             logits: jax.Array, key: jax.Array, *, epsilon: float,
                             xi: float = 1e-6, num_iterations: int = 1,
                             mask: Optional[jax.Array] = None) -> jax.Array:
  """The VAT term (local distributional smoothness): the mean over the real examples of
  KL(p(x) || p(x + r_vadv)), with p(x) (`logits`, from the caller's forward pass) and r_vadv held
  constant, so its gradient smooths the model around x without pulling p(x) itself.

  The authors' ICLR code minimises the cross-entropy -sum p(x) log p(x + r) instead: the same
  gradient (p(x) is constant), but this value is 0 for a model that ignores its input.
  """
  r_vadv = virtual_adversarial_perturbation(logits_fn, images, key, epsilon=epsilon, xi=xi,
                                            num_iterations=num_iterations, mask=mask)
  return _masked_mean(kl_divergence(jax.lax.stop_gradient(logits), logits_fn(images + r_vadv)),
                      mask)


def fgsm_perturbation(loss_of_images: Callable[[jax.Array], jax.Array], images: jax.Array, *,
                      epsilon: float) -> jax.Array:
  """epsilon sign(grad_x J(x)) (the fast gradient sign method), a constant. Pixels whose gradient
  is exactly 0 (padded examples among them) are not moved. No clipping to the pixel range, as in
  the paper's training."""
  return jax.lax.stop_gradient(epsilon * jnp.sign(jax.grad(loss_of_images)(images)))


def adversarial_training_loss(loss_of_images: Callable[[jax.Array], jax.Array],
                              images: jax.Array, *, epsilon: float) -> jax.Array:
  """J(x + epsilon sign(grad_x J(x))): the loss at the fast-gradient-sign adversarial images.

  `loss_of_images` maps images to the scalar supervised loss (labels, mask and parameters bound).
  The paper trains on alpha J(x) + (1 - alpha) of this, alpha = 0.5; the caller, which has J(x)
  already, does the mixing.
  """
  return loss_of_images(images + fgsm_perturbation(loss_of_images, images, epsilon=epsilon))
