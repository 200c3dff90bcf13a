"""The Ladder network's contract with the trainer: shapes, the sown denoising cost, the supervised
half alone when every weight is 0, the clean encoder at test time, padding, and learning.

XLA compilation dominates the run time here, so the tests use one hidden layer (the decoder still
has a top, a middle and a bottom), share compiled functions (the model is a static argument, equal
configs hit the same cache entry, and training calls always pass a mask), compile without
optimisation, and check layouts with `jax.eval_shape`.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import layers
from mnist_jax.ladder import AugmentedMLPCombinator, LadderMLP, VanillaCombinator

HIDDEN = (16,)
WEIGHTS = (1000.0, 1.0, 0.01)
MODEL = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=WEIGHTS)
ZEROS = (0.0,) * 3
BATCH = 12
LABELS = jnp.arange(BATCH) % 10
ALL_REAL = jnp.ones(BATCH)
KEY = jax.random.key(3)
# Compiling takes most of this file's time; the checks compare programs compiled alike.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _images(seed, n=BATCH):
  return jnp.asarray(np.random.default_rng(seed).random((n, 28, 28), np.float32))


@pytest.fixture(scope="module")
def variables():
  """Parameters of the whole network (every weight nonzero: the decoder exists down to z_0)."""
  return _jit(MODEL.init, static_argnames="train")({"params": jax.random.key(0)}, _images(1),
                                                  train=False)


def _param_shapes(model):
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, {"params": jax.random.key(0)}, _images(1))["params"]


@functools.partial(_jit, static_argnums=0)
def _eval_apply(model, variables, images):
  return model.apply(variables, images)


@functools.partial(_jit, static_argnums=0)
def _train_apply(model, variables, images, mask):
  return model.apply(variables, images, train=True, mask=mask, rngs={"dropout": KEY},
                     mutable=["batch_stats", "losses", "intermediates"])


@functools.partial(_jit, static_argnums=0)
def _loss_and_grads(model, variables, images, mask):
  """The trainer's loss, masked cross-entropy of the corrupted logits + the sown costs, and its
  gradients; aux: (logits, updated batch_stats)."""

  def loss_fn(params):
    logits, updates = model.apply({**variables, "params": params}, images, train=True, mask=mask,
                                  rngs={"dropout": KEY}, mutable=["batch_stats", "losses"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, LABELS)
    loss = jnp.sum(ce * mask) / jnp.sum(mask) + sum(jax.tree.leaves(updates["losses"]))
    return loss, (logits, updates["batch_stats"])

  return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])


def test_shapes_and_parameter_layout():
  params = _param_shapes(MODEL)
  assert params["dense_0"]["kernel"].shape == (784, 16) and "bias" not in params["dense_0"]
  assert params["logits"]["kernel"].shape == (16, 10)
  assert "scale" not in params["batchnorm_0"] and params["logits_batchnorm"]["scale"].shape == (10,)
  assert params["decoder_0"]["kernel"].shape == (16, 784)
  assert params["decoder_1"]["kernel"].shape == (10, 16)
  assert sorted(k for k in params if k.startswith("combinator")) == [
      f"combinator_{layer}" for layer in range(3)]
  # The Gamma-model needs the top of the decoder only; the baseline no decoder at all.
  gamma = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=(0.0, 0.0, 2.0))
  assert [k for k in _param_shapes(gamma) if k.startswith(("decoder", "combinator"))] == [
      "combinator_2"]
  baseline = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=ZEROS)
  assert not [k for k in _param_shapes(baseline) if k.startswith(("decoder", "combinator"))]
  variables = jax.eval_shape(functools.partial(MODEL.init, train=False),
                             {"params": jax.random.key(0)}, _images(1))
  assert set(variables["batch_stats"]) == {"batchnorm_0", "logits_batchnorm"}
  for images in (_images(2), _images(2).reshape(BATCH, 784)):
    assert jax.eval_shape(MODEL.apply, variables, images).shape == (BATCH, 10)
    for mask in (None, ALL_REAL):
      logits, _ = jax.eval_shape(functools.partial(
          MODEL.apply, train=True, rngs={"dropout": KEY}, mutable=["batch_stats", "losses"]),
                                 variables, images, mask=mask)
      assert logits.shape == (BATCH, 10)


def test_zero_weights_are_exactly_the_supervised_baseline(variables):
  """All weights 0: the decoder, run or skipped, changes neither loss nor gradients by a bit."""
  decoded = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=ZEROS, always_decode=True)
  baseline = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=ZEROS)
  images = _images(2)
  (loss_d, (logits_d, stats_d)), grads_d = _loss_and_grads(decoded, variables, images, ALL_REAL)
  (loss_b, (logits_b, stats_b)), grads_b = _loss_and_grads(baseline, variables, images, ALL_REAL)
  assert float(loss_d) == float(loss_b)
  np.testing.assert_array_equal(logits_d, logits_b)
  for name, grad in grads_b.items():
    if name.startswith(("decoder", "combinator")):
      assert not any(np.any(g) for g in jax.tree.leaves(grads_d[name]))  # nothing reaches them
    else:
      for g_d, g_b in zip(jax.tree.leaves(grads_d[name]), jax.tree.leaves(grad)):
        np.testing.assert_array_equal(g_d, g_b)
  for s_d, s_b in zip(jax.tree.leaves(stats_d), jax.tree.leaves(stats_b)):
    np.testing.assert_array_equal(s_d, s_b)
  # With weights on, the decoder does change the encoder's gradients.
  _, grads_on = _loss_and_grads(MODEL, variables, images, ALL_REAL)
  assert not np.allclose(grads_on["dense_0"]["kernel"], grads_b["dense_0"]["kernel"])


def test_sown_cost_and_test_time_network(variables):
  """The sown cost is the weighted sum of the layers' costs; the running averages come from the
  clean pass; test time is the clean encoder with them, no randomness, no decoder."""
  images = _images(2)
  noisy = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=WEIGHTS, batchnorm_momentum=0.0)
  _, updates = _train_apply(noisy, variables, images, ALL_REAL)
  (total,) = updates["losses"]["denoising"]
  assert total.shape == () and np.isfinite(total) and total > 0
  costs = [updates["intermediates"][f"denoising_cost_{layer}"][0] for layer in range(3)]
  np.testing.assert_allclose(total, sum(w * c for w, c in zip(WEIGHTS, costs)), rtol=1e-6)
  # Momentum 0: the running averages become the batch statistics, of the clean pass although
  # the corrupted pass ran too.
  z = images.reshape(BATCH, -1) @ variables["params"]["dense_0"]["kernel"]
  np.testing.assert_allclose(updates["batch_stats"]["batchnorm_0"]["mean"], z.mean(0), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["batchnorm_0"]["var"], z.var(0), rtol=1e-4)
  # Without noise the corrupted pass is the clean one, so test time on the same batch, with the
  # statistics just recorded, gives the training pass's logits.
  quiet = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=WEIGHTS, batchnorm_momentum=0.0,
                    noise_std=0.0)
  train_logits, quiet_updates = _train_apply(quiet, variables, images, ALL_REAL)
  for a, b in zip(jax.tree.leaves(quiet_updates["batch_stats"]),
                  jax.tree.leaves(updates["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  test_logits = _eval_apply(quiet, {**variables, "batch_stats": updates["batch_stats"]}, images)
  np.testing.assert_allclose(test_logits, train_logits, rtol=1e-4, atol=1e-4)
  # Test time draws no randomness (no rngs given) and ignores the decoder's parameters.
  perturbed = flax.core.unfreeze(variables)
  for name in perturbed["params"]:
    if name.startswith(("decoder", "combinator")):
      perturbed["params"][name] = jax.tree.map(lambda p: p + 1.0, perturbed["params"][name])
  np.testing.assert_array_equal(_eval_apply(MODEL, perturbed, images),
                                _eval_apply(MODEL, variables, images))


def test_padding_changes_nothing(variables):
  real = _images(2, 8)
  mask = jnp.concatenate([jnp.ones(8), jnp.zeros(4)])
  (loss_a, (logits_a, stats_a)), grads_a = _loss_and_grads(
      MODEL, variables, jnp.concatenate([real, jnp.zeros((4, 28, 28))]), mask)
  (loss_b, (logits_b, stats_b)), grads_b = _loss_and_grads(
      MODEL, variables, jnp.concatenate([real, 50.0 * _images(4, 4)]), mask)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  np.testing.assert_allclose(logits_a[:8], logits_b[:8], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves((stats_a, grads_a)), jax.tree.leaves((stats_b, grads_b))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The padded batch's real rows match the real examples alone (where the noise, whose draw
  # depends on the batch's shape, is off).
  quiet = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=WEIGHTS, batchnorm_momentum=0.0,
                    noise_std=0.0)
  logits_p, updates_p = _train_apply(quiet, variables, jnp.concatenate([real, 50.0 * real[:4]]),
                                     mask)
  logits_u, updates_u = _train_apply(quiet, variables, real, jnp.ones(8))
  np.testing.assert_allclose(logits_p[:8], logits_u, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(updates_p), jax.tree.leaves(updates_u)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_one_adam_step_decreases_the_total_loss(variables):
  images = _images(2)
  (loss, _), grads = _loss_and_grads(MODEL, variables, images, ALL_REAL)
  tx = optax.adam(1e-3)
  step, _ = jax.jit(tx.update)(grads, tx.init(variables["params"]), variables["params"])
  stepped = {**variables, "params": optax.apply_updates(variables["params"], step)}
  (after, _), _ = _loss_and_grads(MODEL, stepped, images, ALL_REAL)
  assert float(after) < float(loss)


def test_config_errors():
  with pytest.raises(ValueError, match="denoising_weights"):
    _param_shapes(LadderMLP(hidden_sizes=HIDDEN, denoising_weights=(1.0, 1.0)))
  with pytest.raises(ValueError, match="combinator"):
    _param_shapes(LadderMLP(hidden_sizes=HIDDEN, denoising_weights=WEIGHTS, combinator="mlp"))
  model = layers.from_config(LadderMLP, {"name": "ladder", "hidden_sizes": [32, 16], "dropout": (),
                                            "denoising_weights": [0, 0, 0, 1.0], "noise_std": 0.5})
  assert model.hidden_sizes == (32, 16) and model.noise_std == 0.5


def test_vanilla_combinator_is_rasmus_g():
  """z^ = (z~ - mu(u)) v(u) + mu(u), per unit; at initialisation z^ = 0 whatever z~ and u."""
  rng = np.random.default_rng(0)
  z_tilde, u = (jnp.asarray(rng.normal(size=(5, 3)), jnp.float32) for _ in range(2))
  params = VanillaCombinator().init(jax.random.key(0), z_tilde, u)
  np.testing.assert_array_equal(VanillaCombinator().apply(params, z_tilde, u), 0.0)
  a = {name: rng.normal(size=3).astype(np.float32) for name in params["params"]}
  sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
  z, v_in = np.asarray(z_tilde), np.asarray(u)
  mu = a["a1"] * sigmoid(a["a2"] * v_in + a["a3"]) + a["a4"] * v_in + a["a5"]
  v = a["a6"] * sigmoid(a["a7"] * v_in + a["a8"]) + a["a9"] * v_in + a["a10"]
  np.testing.assert_allclose(VanillaCombinator().apply({"params": a}, z_tilde, u),
                             (z - mu) * v + mu, rtol=1e-5, atol=1e-6)


def _amlp_in_numpy(params, z_tilde, u):
  """The AMLP combinator as a loop over units: each unit's own MLP of (z~, u, z~ u), leaky ReLU
  (slope 0.1) on the hidden layers (hidden_kernel, then hidden_kernel_1, ...), a linear output."""
  z, v = np.asarray(z_tilde), np.asarray(u)
  kernels = sorted(name for name in params if name.startswith("hidden_kernel"))
  want = np.zeros(z.shape, np.float32)
  for unit in range(z.shape[1]):
    hidden = np.stack([z[:, unit], v[:, unit], z[:, unit] * v[:, unit]], axis=-1)  # (batch, 3)
    for kernel in kernels:
      hidden = hidden @ params[kernel][unit] + params[kernel.replace("kernel", "bias")][unit]
      hidden = np.where(hidden > 0, hidden, 0.1 * hidden)
    want[:, unit] = hidden @ params["output_kernel"][unit] + params["output_bias"][unit]
  return want


@pytest.mark.parametrize("hidden_layers, shapes", [
    ((4,), {"hidden_kernel": (3, 4), "hidden_bias": (4,), "output_kernel": (4,),
            "output_bias": ()}),
    ((2, 2), {"hidden_kernel": (3, 2), "hidden_bias": (2,), "hidden_kernel_1": (2, 2),
              "hidden_bias_1": (2,), "output_kernel": (2,), "output_bias": ()}),
], ids=["AMLP[4]", "AMLP[2,2]"])
def test_amlp_combinator_is_a_per_unit_mlp_of_z_u_and_their_product(hidden_layers, shapes):
  """Against a loop over units in numpy: AMLP[4] is each unit's 3-4-1 MLP, AMLP[2,2] its 3-2-2-1
  MLP (the first hidden layer and the output keep AMLP[4]'s names); weights N(0, 0.025^2),
  biases 0 at initialisation."""
  rng = np.random.default_rng(1)
  batch, width = 6, 5
  z_tilde, u = (jnp.asarray(rng.normal(size=(batch, width)), jnp.float32) for _ in range(2))
  combinator = AugmentedMLPCombinator(hidden_layers=hidden_layers)
  params = combinator.init(jax.random.key(0), z_tilde, u)["params"]
  assert {name: p.shape for name, p in params.items()} == {
      name: (width, *shape) for name, shape in shapes.items()}
  assert not any(np.any(p) for name, p in params.items() if "bias" in name)
  np.testing.assert_allclose(np.std(params["hidden_kernel"]), 0.025, rtol=0.3)
  params = {name: rng.normal(size=p.shape).astype(np.float32) for name, p in params.items()}
  np.testing.assert_allclose(combinator.apply({"params": params}, z_tilde, u),
                             _amlp_in_numpy(params, z_tilde, u), rtol=1e-5, atol=1e-5)


def test_amlp_combinator_defaults_to_amlp_4_and_refuses_empty_hidden_layers():
  z_tilde = u = jnp.ones((6, 5), jnp.float32)
  default, four = (AugmentedMLPCombinator(**kwargs).init(jax.random.key(0), z_tilde, u)
                   for kwargs in ({}, {"hidden_layers": (4,)}))
  assert jax.tree.all(jax.tree.map(np.array_equal, default, four))
  for hidden_layers in ((), (2, 0)):
    with pytest.raises(ValueError, match="one or more hidden layers of positive width"):
      AugmentedMLPCombinator(hidden_layers=hidden_layers).init(jax.random.key(0), z_tilde, u)


def test_amlp_2_2_ladder_layout_and_forward_pass():
  """combinator_hidden=(2, 2) reaches every combinator_<l>; with the input's cost alone the decoder
  still runs from the top, and the sown cost is 2000 times the input's."""
  model = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=(2000.0, 0.0, 0.0), combinator="amlp",
                    combinator_hidden=(2, 2))
  shapes = _param_shapes(model)
  assert sorted(k for k in shapes if k.startswith("combinator")) == [
      f"combinator_{layer}" for layer in range(3)]
  for name, width in (("combinator_0", 784), ("combinator_1", 16), ("combinator_2", 10)):
    assert {k: p.shape for k, p in shapes[name].items()} == {
        "hidden_kernel": (width, 3, 2), "hidden_bias": (width, 2),
        "hidden_kernel_1": (width, 2, 2), "hidden_bias_1": (width, 2),
        "output_kernel": (width, 2), "output_bias": (width,)}
  variables = _jit(model.init, static_argnames="train")({"params": jax.random.key(0)},
                                                       _images(1), train=False)
  logits, updates = _train_apply(model, variables, _images(2), ALL_REAL)
  costs = updates["intermediates"]
  assert logits.shape == (BATCH, 10) and np.all(np.isfinite(logits))
  assert sorted(costs) == [f"denoising_cost_{layer}" for layer in range(3)]
  np.testing.assert_allclose(updates["losses"]["denoising"][0],
                             2000.0 * costs["denoising_cost_0"][0], rtol=1e-6)


def test_amlp_ladder_layout_and_learning():
  """combinator="amlp" swaps every combinator_<l> and nothing else; a step of Adam lowers the
  total loss and moves the combinators' parameters."""
  amlp = LadderMLP(hidden_sizes=HIDDEN, denoising_weights=WEIGHTS, combinator="amlp")
  shapes, vanilla = _param_shapes(amlp), _param_shapes(MODEL)
  assert set(shapes) == set(vanilla)
  for name in shapes:
    if name.startswith("combinator"):
      assert set(shapes[name]) == {"hidden_kernel", "hidden_bias", "output_kernel", "output_bias"}
    else:
      assert jax.tree.map(lambda p: p.shape, shapes[name]) == jax.tree.map(lambda p: p.shape,
                                                                             vanilla[name])
  assert shapes["combinator_0"]["hidden_kernel"].shape == (784, 3, 4)
  variables = _jit(amlp.init, static_argnames="train")({"params": jax.random.key(0)}, _images(1),
                                                      train=False)
  images = _images(2)
  (loss, _), grads = _loss_and_grads(amlp, variables, images, ALL_REAL)
  assert all(np.any(g) for g in jax.tree.leaves(grads["combinator_0"]))
  tx = optax.adam(1e-3)
  step, _ = jax.jit(tx.update)(grads, tx.init(variables["params"]), variables["params"])
  stepped = {**variables, "params": optax.apply_updates(variables["params"], step)}
  (after, _), _ = _loss_and_grads(amlp, stepped, images, ALL_REAL)
  assert float(after) < float(loss)
