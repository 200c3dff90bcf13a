"""The pure core: steps, whole epochs, evaluation, keys, the weights' average, the notebook."""
import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, device_data, leaves_equal
from mnist_jax import train


def _batch(dd, start, size):
  return {"image": dd.images[start:start + size], "label": dd.labels[start:start + size]}


def test_train_step_is_deterministic_and_key_dependent(tiny_config):
  tiny_config.model.hidden_sizes = (64, 32)
  tiny_config.model.dropout = (0.3, 0.3)
  dd = device_data(tiny_config)
  batch = _batch(dd, 0, 64)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  s1, m1 = train.train_step(state, batch, jax.random.key(7))
  s2, m2 = train.train_step(state, batch, jax.random.key(7))
  s3, _ = train.train_step(state, batch, jax.random.key(8))
  assert leaves_equal(s1.params, s2.params) and float(m1["loss"]) == float(m2["loss"])
  assert not leaves_equal(s1.params, s3.params)  # the dropout mask depends on the key
  assert int(s1.step) == 1 and float(m1["count"]) == 64


def test_loss_decreases_on_a_subset(tiny_config):
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  before = train.summarize(train.evaluate(state, dd.images, dd.labels))
  for epoch in range(5):
    state, sums, first_bad = train.train_epoch(state, dd.images, dd.labels,
                                               jax.random.key(epoch), 64)
    assert int(first_bad) == -1
  after = train.summarize(train.evaluate(state, dd.images, dd.labels))
  assert after["loss"] < 0.5 * before["loss"]
  assert after["accuracy"] > 0.85


def test_the_first_bad_step_is_the_step_count_when_only_the_last_update_is_not_finite(tiny_config):
  """At an infinite learning rate every update is infinite. In a 1-step epoch the only loss is
  the initial parameters', finite: the epoch returns 1, its step count. With 2 steps the second
  loss is NaN: the epoch returns its index, 1."""
  tiny_config.optimizer.name, tiny_config.optimizer.learning_rate = "sgd", float("inf")
  dd = device_data(tiny_config)
  for steps in (1, 2):
    state = train.create_train_state(jax.random.key(0), tiny_config)
    state, sums, first_bad = train.train_epoch(state, dd.images[:64 * steps],
                                               dd.labels[:64 * steps], jax.random.key(1), 64)
    assert int(first_bad) == 1
    assert np.isfinite(float(sums["loss"])) == (steps == 1)


@pytest.mark.parametrize("real", [5, 1])
def test_one_sgd_step_follows_the_mean_loss_of_the_real_examples_and_sums_their_metrics(
    tiny_config, real):
  """A padded batch (mask 0 on its last examples) steps by the gradient of the mean cross-entropy
  over its real examples alone, as Keras does on a short last batch; its metric sums count them."""
  import optax  # pylint: disable=import-outside-toplevel
  tiny_config.optimizer.name, tiny_config.optimizer.learning_rate = "sgd", 0.5
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  mask = jnp.array([1.0] * real + [0.0] * (8 - real))
  batch = {"image": dd.images[:8], "label": dd.labels[:8], "mask": mask}
  new, sums = train.train_step(state, batch, jax.random.key(1))

  def mean_loss(params):
    logits = state.apply_fn({"params": params}, dd.images[:real], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, dd.labels[:real]).mean()

  loss, grads = jax.value_and_grad(mean_loss)(state.params)
  expected = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
  for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert int(sums["count"]) == real
  np.testing.assert_allclose(float(sums["loss"]), real * float(loss), rtol=1e-5)
  logits = state.apply_fn({"params": state.params}, dd.images[:real], train=False)
  assert int(sums["correct"]) == int(jnp.sum(jnp.argmax(logits, -1) == dd.labels[:real]))


def test_scanned_epoch_equals_python_loop_of_train_step(tiny_config):
  """The compiled epoch is exactly `train_step` applied batch by batch, tail batch included."""
  tiny_config.data.train_subset = 300  # 300 = 4 * 64 + 44: a partial tail batch
  tiny_config.model.hidden_sizes = (32,)
  tiny_config.model.dropout = (0.2,)
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  key = jax.random.key(3)

  perm_key, dropout_key = jax.random.split(key)
  order = np.asarray(jax.random.permutation(perm_key, len(dd)))
  looped = state
  for i, start in enumerate(range(0, len(dd), 64)):
    idx = order[start:start + 64]  # Keras-style short last batch, no padding
    looped, _ = train.train_step(looped, {"image": dd.images[idx], "label": dd.labels[idx]},
                                 jax.random.fold_in(dropout_key, i))

  scanned, sums, _ = train.train_epoch(state, dd.images, dd.labels, key, 64)
  assert int(scanned.step) == int(looped.step) == 5
  assert float(sums["count"]) == 300  # every example once, none of the padding
  for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(looped.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padding_does_not_enter_batchnorm_statistics(tiny_config):
  tiny_config.model.input_batchnorm = True
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  batch = _batch(dd, 0, 8)
  padded = {"image": jnp.concatenate([batch["image"], 1e3 * jnp.ones((8, 784))]),
            "label": jnp.concatenate([batch["label"], jnp.zeros(8, jnp.int32)]),
            "mask": jnp.concatenate([jnp.ones(8), jnp.zeros(8)])}
  a, ma = train.train_step(state, batch, jax.random.key(0))
  b, mb = train.train_step(state, padded, jax.random.key(0))
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)


def test_evaluate_counts_every_example_once(tiny_config):
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  sums = train.evaluate(state, dd.images, dd.labels, batch_size=100)  # 512 = 5 * 100 + 12
  assert float(sums["count"]) == 512
  probs = train.predict_probabilities(state, dd.images, batch_size=100)
  assert probs.shape == (512, 10)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
  correct = (np.argmax(probs, -1) == np.asarray(dd.labels)).sum()
  assert correct == float(sums["correct"])


def test_ema_follows_the_weights_and_is_what_evaluation_uses(tiny_config):
  tiny_config.train.ema_decay = 0.9
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  assert leaves_equal(state.ema_params, state.params)  # starts at the initial weights
  new, _ = train.train_step(state, _batch(dd, 0, 64), jax.random.key(1))
  d = min(0.9, 2 / 11)  # step 1: the warm-up (1 + step) / (10 + step) is below the decay
  for e, p0, p1 in zip(*(jax.tree.leaves(t) for t in (new.ema_params, state.params, new.params))):
    np.testing.assert_allclose(e, d * p0 + (1 - d) * p1, rtol=1e-5, atol=1e-7)
  assert not leaves_equal(new.ema_params, new.params)
  x = dd.images[:16]
  np.testing.assert_array_equal(train.predict_logits(new, x),
                                new.apply_fn({"params": new.ema_params}, x))
  raw = new.replace(ema_params={})  # off: evaluation uses the raw weights
  np.testing.assert_array_equal(train.predict_logits(raw, x), new.apply_fn({"params": new.params}, x))
  tiny_config.train.ema_decay = 0.0
  off = train.create_train_state(jax.random.key(0), tiny_config)
  assert off.ema_params == {} and off.ema_decay == 0.0


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_rng_impl_makes_keys_of_that_generator_and_epochs_stay_deterministic(tiny_config, impl):
  tiny_config.model.dropout = (0.5,)
  keys = train.run_keys(0, impl)
  assert str(jax.random.key_impl(keys["epochs"])) == impl
  dd = device_data(tiny_config)
  key = train.epoch_key(keys["epochs"], 1)
  runs = [train.train_epoch(train.create_train_state(keys["init"], tiny_config), dd.images,
                            dd.labels, key, 64)[0] for _ in range(2)]
  assert leaves_equal(runs[0].params, runs[1].params)  # the same key, the same bits
  state = train.create_train_state(keys["init"], tiny_config)
  threefry = train.create_train_state(train.run_keys(0)["init"], tiny_config)
  assert not leaves_equal(state.params, threefry.params)


def test_costs_the_model_sows_are_added_to_the_loss(tiny_config):
  """A model's extra costs (self.sow("losses", ...), e.g. a Ladder's denoising cost) join the
  supervised loss in train_step; the reported metrics stay the supervised ones."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class Penalised(nn.Module):
    penalty: float

    @nn.compact
    def __call__(self, images, train=False, mask=None):
      logits = nn.Dense(10)(images.reshape(images.shape[0], -1))
      if train and self.penalty:
        self.sow("losses", "penalty", self.penalty * jnp.mean(logits ** 2))
      return logits

  batch = _batch(device_data(tiny_config), 0, 64)
  params = Penalised(0.0).init(jax.random.key(0), batch["image"])["params"]
  tx = train.optim.make_optimizer(tiny_config.optimizer)
  (a, ma), (b, mb) = (
      train.train_step(train.TrainState.create(apply_fn=Penalised(p).apply, params=params, tx=tx),
                       batch, jax.random.key(1)) for p in (0.0, 100.0))
  assert float(ma["loss"]) == float(mb["loss"])  # metrics: cross-entropy only
  assert not leaves_equal(a.params, b.params)  # the penalty changed the step


def test_adversarial_objectives_join_the_loss(tiny_config):
  """VAT and adversarial training change the step (finitely); the metrics stay cross-entropy.
  vat_weight=0 and adversarial_alpha=1 weigh the extra term out: the step is the plain one."""
  batch = _batch(device_data(tiny_config), 0, 64)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  assert train.Objective.from_config(tiny_config.train) == train.Objective()
  plain, plain_metrics = train.train_step(state, batch, jax.random.key(1))
  for objective in (train.Objective(vat_epsilon=2.0, vat_xi=1e-2),
                    train.Objective(adversarial_epsilon=0.1)):
    new, metrics = train.train_step(state, batch, jax.random.key(1), objective)
    assert float(metrics["loss"]) == float(plain_metrics["loss"]), objective
    assert not leaves_equal(new.params, plain.params), objective
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new.params))
  for objective in (train.Objective(vat_epsilon=2.0, vat_xi=1e-2, vat_iterations=2, vat_weight=0.0),
                    train.Objective(adversarial_epsilon=0.3, adversarial_alpha=1.0)):
    new, _ = train.train_step(state, batch, jax.random.key(1), objective)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(plain.params)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=str(objective))


@pytest.mark.parametrize("objective", [
    train.Objective(adversarial_epsilon=0.1, adversarial_alpha=0.3),
    train.Objective(vat_epsilon=2.0, vat_xi=1e-2, vat_weight=0.7),
], ids=["adversarial", "vat"])
def test_one_sgd_step_follows_the_objective_s_whole_loss(tiny_config, objective):
  """alpha J(x) + (1 - alpha) J(x_adv) for adversarial training, J(x) + weight KL(p(x) || p(x +
  r_vadv)) for VAT (r_vadv drawn with the step's key folded with 1), each term as
  mnist_jax.adversarial computes it: the step is exactly that loss's gradient."""
  import optax  # pylint: disable=import-outside-toplevel

  from mnist_jax import adversarial  # pylint: disable=import-outside-toplevel
  tiny_config.optimizer.name, tiny_config.optimizer.learning_rate = "sgd", 0.5
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  images, labels, rng = dd.images[:16], dd.labels[:16], jax.random.key(1)
  new, _ = train.train_step(state, {"image": images, "label": labels}, rng, objective)

  def loss(params):
    logits_of = lambda x: state.apply_fn({"params": params}, x, train=True)
    mean_loss = lambda x: optax.softmax_cross_entropy_with_integer_labels(
        logits_of(x), labels).mean()
    if objective.adversarial_epsilon:
      alpha = objective.adversarial_alpha
      return alpha * mean_loss(images) + (1 - alpha) * adversarial.adversarial_training_loss(
          mean_loss, images, epsilon=objective.adversarial_epsilon)
    return mean_loss(images) + objective.vat_weight * adversarial.virtual_adversarial_loss(
        logits_of, images, logits_of(images), jax.random.fold_in(rng, 1),
        epsilon=objective.vat_epsilon, xi=objective.vat_xi)

  expected = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, jax.grad(loss)(state.params))
  for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_one_sgd_step_adds_the_cost_the_model_sows(tiny_config):
  """A Ladder network sows its denoising cost into "losses": the step descends cross-entropy plus
  that cost."""
  import optax  # pylint: disable=import-outside-toplevel

  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load("ladder")
  config.data.source, config.data.train_subset = "idx", 64
  config.model.hidden_sizes, config.model.denoising_weights = (32,), (1000.0, 1.0, 0.01)
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.05
  config.optimizer.schedule = "constant"
  dd = device_data(config)
  state = train.create_train_state(jax.random.key(0), config)
  images, labels, rng = dd.images[:16], dd.labels[:16], jax.random.key(1)
  new, _ = train.train_step(state, {"image": images, "label": labels}, rng)

  def loss(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        mask=jnp.ones(16), rngs={"dropout": rng}, mutable=["batch_stats", "losses"])
    denoising = sum(jax.tree.leaves(updates["losses"]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + denoising

  expected = jax.tree.map(lambda p, g: p - 0.05 * g, state.params, jax.grad(loss)(state.params))
  for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_summarize_divides_by_the_count_and_an_empty_split_is_zero():
  one = train.summarize({"loss": np.float32(3.0), "correct": np.int32(1), "count": np.float32(1)})
  assert one == {"loss": 3.0, "accuracy": 1.0}
  none = train.summarize({"loss": np.float32(0.0), "correct": np.int32(0), "count": np.float32(0)})
  assert none == {"loss": 0.0, "accuracy": 0.0}  # no division by zero
  replicas = train.summarize({"loss": np.array([4.0, 6.0]), "correct": np.array([1, 2]),
                              "count": np.array([2.0, 4.0]), "adversarial_correct": np.array([0, 1])})
  assert replicas == {"loss": [2.0, 1.5], "accuracy": [0.5, 0.5],
                      "adversarial_accuracy": [0.0, 0.25]}


def test_evaluate_sums_a_split_batch_by_batch_as_one_batch_would(tiny_config):
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  images, labels = dd.images[:300], dd.labels[:300]
  whole = train.eval_step(state, {"image": images, "label": labels})
  batched = train.evaluate(state, images, labels, batch_size=128)  # 128 + 128 + 44, padded
  assert float(batched["count"]) == 300 and float(batched["correct"]) == float(whole["correct"])
  np.testing.assert_allclose(float(batched["loss"]), float(whole["loss"]), rtol=1e-5)


def test_evaluation_measures_robustness_only_when_asked(tiny_config):
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  batch = {"image": dd.images[:16], "label": dd.labels[:16]}
  assert sorted(train.eval_step(state, batch)) == ["correct", "count", "loss"]
  assert "adversarial_correct" in train.eval_step(state, batch, adversarial_epsilon=0.1)


@pytest.mark.slow
def test_quickstart_notebook_runs_to_the_end(tmp_path, monkeypatch):
  import nbformat  # pylint: disable=import-outside-toplevel
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  # A kernelspec for this very Python, so the notebook runs in the tested environment.
  spec = tmp_path / "kernels" / "mnist_jax_test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "mnist_jax test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
  notebook = nbformat.read(REPO / "experiments" / "quickstart.ipynb", as_version=4)
  NotebookClient(notebook, kernel_name="mnist_jax_test", timeout=60,
                 resources={"metadata": {"path": str(REPO / "experiments")}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  text = "".join(o.get("text", "") for o in outputs)
  accuracy = float(re.search(r"test accuracy (\d\.\d+)", text).group(1))
  assert accuracy > 0.8
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the curve, the prediction


def test_evaluate_reports_accuracy_on_fast_gradient_sign_attacks(tiny_config):
  """With adversarial_epsilon, evaluate also counts the examples still right after the attack:
  fewer than the clean ones for a trained model, all of them for one that ignores its input."""
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 64)
  metrics = train.summarize(train.evaluate(state, dd.images, dd.labels, 100,
                                           adversarial_epsilon=0.25))
  assert metrics["adversarial_accuracy"] < metrics["accuracy"] - 0.2
  assert "adversarial_accuracy" not in train.summarize(train.evaluate(state, dd.images, dd.labels))
  blind = state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
  blind = train.summarize(train.evaluate(blind, dd.images, dd.labels, 100,
                                         adversarial_epsilon=0.25))
  assert blind["adversarial_accuracy"] == blind["accuracy"]


def _numpy_population_stats(features: np.ndarray, batch_size: int):
  """Mean over batches of each batch's mean and unbiased variance, batches weighted by size."""
  means, variances, sizes = [], [], []
  for start in range(0, len(features), batch_size):
    batch = features[start:start + batch_size].astype(np.float64)
    means.append(batch.mean(0))
    variances.append(batch.var(0, ddof=1))
    sizes.append(len(batch))
  weights = np.array(sizes, np.float64)[:, None] / len(features)
  return (np.sum(weights * np.array(means), 0), np.sum(weights * np.array(variances), 0))


@pytest.mark.parametrize("model", ["mlp", "ladder"])
def test_population_batch_stats_average_each_batch_s_mean_and_unbiased_variance(tiny_config,
                                                                               model):
  """The first standardised layer's statistics against numpy's: the input's for the mlp's input
  BatchNorm, x W for the Ladder's first layer (its Dense has no bias); a partial last batch."""
  tiny_config.model.name, tiny_config.model.hidden_sizes = model, (16,)
  if model == "mlp":
    tiny_config.model.input_batchnorm = tiny_config.model.hidden_batchnorm = True
    tiny_config.model.gaussian_noise, tiny_config.model.input_dropout = 0.3, 0.2  # left out
  else:
    tiny_config.model.denoising_weights = (1.0, 1.0, 1.0)
  dd = device_data(tiny_config)
  state = train.create_train_state(jax.random.key(0), tiny_config)
  state, _, _ = train.train_epoch(state, dd.images, dd.labels, jax.random.key(1), 64)
  stats = train.population_batch_stats(state, dd.images, 100)  # 512 images: the last batch of 12
  assert jax.tree.structure(stats) == jax.tree.structure(state.batch_stats)
  x = np.asarray(dd.images).reshape(len(dd.images), -1)
  if model == "mlp":
    layer, features = "input_batchnorm", x
  else:
    layer, features = "batchnorm_0", x @ np.asarray(state.params["dense_0"]["kernel"])
  mean, var = _numpy_population_stats(features, 100)
  np.testing.assert_allclose(stats[layer]["mean"], mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats[layer]["var"], var, rtol=1e-3, atol=1e-5)
  # Not the running averages, and the deeper layers' are finite.
  assert not np.allclose(stats[layer]["var"], state.batch_stats[layer]["var"])
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(stats))
