"""Virtual adversarial training and fast-gradient-sign adversarial training, on small pure-jax
models whose answers can be worked out.

Compilation dominates the run time, so the checks go through a few jitted functions shared by the
tests, always called with the same shapes (a mask is always passed).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax import adversarial

BATCH = 6
ALL_REAL = jnp.ones(BATCH)
PADDED = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
LABELS = jnp.arange(BATCH) % 10
KEY = jax.random.key(2)
# Compiling takes most of this file's time; the checks compare programs compiled alike.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _images(seed, n=BATCH):
  return jnp.asarray(np.random.default_rng(seed).random((n, 28, 28), np.float32))


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w1": jnp.asarray(rng.normal(0, 0.1, (784, 32)), jnp.float32),
          "b1": jnp.zeros(32), "w2": jnp.asarray(rng.normal(0, 0.5, (32, 10)), jnp.float32),
          "b2": jnp.asarray(rng.normal(0, 1.0, 10), jnp.float32)}


def _mlp(params, images):
  h = jnp.tanh(images.reshape(images.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


@_jit
def _perturbation(params, images, mask, xi):
  return adversarial.virtual_adversarial_perturbation(
      lambda x: _mlp(params, x), images, KEY, epsilon=2.5, xi=xi, mask=mask)


def _vat(params, images, mask, xi):
  fn = lambda x: _mlp(params, x)
  return adversarial.virtual_adversarial_loss(fn, images, fn(images), KEY, epsilon=2.5, xi=xi,
                                              mask=mask)


_vat_value_and_grad = _jit(jax.value_and_grad(_vat))


def test_perturbation_has_norm_epsilon_per_example_and_none_on_padding():
  r = _perturbation(_params(), _images(1), PADDED, 1e-6)
  assert r.shape == (BATCH, 28, 28)
  norms = jnp.sqrt(jnp.sum(jnp.square(r), axis=(1, 2)))
  np.testing.assert_allclose(norms[:4], 2.5, rtol=1e-5)
  np.testing.assert_array_equal(r[4:], 0.0)


def test_vat_is_zero_for_a_model_that_ignores_its_input():
  bias = jnp.arange(10.0)
  ignores = lambda x: jnp.broadcast_to(bias, (x.shape[0], 10))
  loss = _jit(lambda x: adversarial.virtual_adversarial_loss(ignores, x, ignores(x), KEY,
                                                             epsilon=2.0))(_images(1))
  assert abs(float(loss)) <= 1e-7


def test_vat_is_positive_and_padding_is_ignored():
  params, images = _params(), _images(1)
  loss, _ = _vat_value_and_grad(params, images, ALL_REAL, 1e-2)
  assert np.isfinite(loss) and loss > 0
  # Padded rows (any content) change neither the real rows' perturbations nor the mean.
  padded = images.at[4:].set(100.0)
  masked, _ = _vat_value_and_grad(params, padded, PADDED, 1e-2)
  r = _perturbation(params, padded, PADDED, 1e-2)
  by_hand = jnp.mean(adversarial.kl_divergence(_mlp(params, padded), _mlp(params, padded + r))[:4])
  np.testing.assert_allclose(masked, by_hand, rtol=1e-5)
  np.testing.assert_array_equal(r[4:], 0.0)


def test_no_gradient_flows_through_the_perturbation_or_the_reference():
  # xi = 1e-2: at the default 1e-6 float32 rounding decides the direction, and the differentiated
  # program rounds otherwise than the plain one.
  params, images = _params(), _images(1)
  r = _perturbation(params, images, ALL_REAL, 1e-2)

  def with_constant_r(p):
    reference = jax.lax.stop_gradient(_mlp(p, images))
    return jnp.mean(adversarial.kl_divergence(reference, _mlp(p, images + r)))

  expected = jax.grad(with_constant_r)(params)
  _, actual = _vat_value_and_grad(params, images, ALL_REAL, 1e-2)
  # Not bit for bit: r is recomputed inside the differentiated program.
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=1e-3, atol=1e-5)
  # A gradient through the reference distribution would have shown.
  unstopped = jax.grad(
      lambda p: jnp.mean(adversarial.kl_divergence(_mlp(p, images), _mlp(p, images + r))))(params)
  assert not np.allclose(unstopped["w2"], expected["w2"], rtol=1e-2)


def test_power_iteration_finds_the_top_eigenvector():
  """Softmax regression: the Hessian of KL(p(x) || p(x + d)) at d = 0 is W (diag p - p p^T) W^T
  per example, and many power iterations converge to its top eigenvector."""
  w = jnp.asarray(np.random.default_rng(3).normal(0, 0.05, (784, 10)), jnp.float32)
  linear = lambda x: x.reshape(x.shape[0], -1) @ w
  images = _images(1)
  r = _jit(functools.partial(adversarial.virtual_adversarial_perturbation, linear, epsilon=1.0,
                             xi=1e-2, num_iterations=30))(images, KEY)
  # W = QR: the Hessian Q (R A R^T) Q^T has its eigenvectors Q v, v those of the 10 x 10 middle.
  q, r_factor = np.linalg.qr(np.asarray(w, np.float64))
  probabilities = np.asarray(jax.nn.softmax(linear(images)), np.float64)
  for p, direction in zip(probabilities, np.asarray(r, np.float64).reshape(BATCH, -1)):
    middle = r_factor @ (np.diag(p) - np.outer(p, p)) @ r_factor.T
    top = q @ np.linalg.eigh(middle)[1][:, -1]
    assert abs(float(np.dot(top, direction))) > 0.99


def test_xi_0_is_the_exact_hessian_product_where_the_authors_xi_is_rounding():
  """One power iteration on softmax regression from the same random start: the direction with
  xi = 0 (forward-over-reverse) is the exact H d (cosine > 0.9999); the authors' xi = 1e-6 in
  float32 is not, and xi = 1e-2 is close."""
  w = jnp.asarray(np.random.default_rng(3).normal(0, 0.05, (784, 10)), jnp.float32)
  linear = lambda x: x.reshape(x.shape[0], -1) @ w
  images = _images(1)
  start = np.asarray(adversarial.normalize_per_example(
      jax.random.normal(KEY, images.shape, images.dtype)), np.float64).reshape(BATCH, -1)
  probabilities = np.asarray(jax.nn.softmax(linear(images)), np.float64)
  w64 = np.asarray(w, np.float64)
  exact = [w64 @ (np.diag(p) - np.outer(p, p)) @ w64.T @ d for p, d in zip(probabilities, start)]

  def cosines(xi):
    r = _jit(functools.partial(adversarial.virtual_adversarial_perturbation, linear,
                               epsilon=1.0, xi=xi, num_iterations=1))(images, KEY)
    r = np.asarray(r, np.float64).reshape(BATCH, -1)
    return [abs(np.dot(a, b)) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(r, exact)]

  assert min(cosines(0.0)) > 0.9999
  assert min(cosines(1e-2)) > 0.99
  assert np.median(cosines(1e-6)) < 0.9


@_jit
def _fgsm(params, images):
  def loss(p, x):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_mlp(p, x), LABELS))

  r = adversarial.fgsm_perturbation(functools.partial(loss, params), images, epsilon=0.1)
  adversarial_loss, grads = jax.value_and_grad(lambda p: adversarial.adversarial_training_loss(
      functools.partial(loss, p), images, epsilon=0.1))(params)
  return r, loss(params, images), adversarial_loss, grads, jax.grad(loss)(params, images + r)


def test_fgsm_moves_every_pixel_by_epsilon_uphill():
  r, clean_loss, adversarial_loss, grads, grads_at_constant_r = _fgsm(_params(), _images(1))
  np.testing.assert_allclose(jnp.max(jnp.abs(r), axis=(1, 2)), 0.1)
  assert set(np.unique(np.abs(np.asarray(r)))) <= {0.0, np.float32(0.1)}
  assert float(adversarial_loss) > float(clean_loss)
  # The perturbation is a constant: the parameters' gradient is the loss's at x + r.
  for a, e in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_at_constant_r)):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)
