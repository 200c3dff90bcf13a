"""Many seeds and learning rates in one vmapped program."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_FLAGS, run_main
from mnist_jax import data, parallel, replicas, train
from mnist_jax import workdir as workdir_lib


@pytest.fixture(scope="module")
def subset():
  from mnist_jax import config as config_lib
  config = config_lib.load("adam_mlp_784_dropout")  # dropout: the keys matter
  config.data.source, config.data.train_subset = "idx", 384
  config.model.hidden_sizes, config.model.dropout = (32, 16), (0.2, 0.2)
  split = data.load(config.data).train
  return config, parallel.DeviceData.put(split, config.data.preprocess), split


def _single_run(config, seed, learning_rate, dd, epochs=2):
  config = config.copy_and_resolve_references()
  config.seed, config.optimizer.learning_rate = seed, learning_rate
  config.sweep.optimizer.learning_rate = ()
  keys = train.run_keys(seed)
  state = train.create_train_state(keys["init"], config)
  for epoch in range(1, epochs + 1):
    state, _, _ = train.train_epoch(state, dd.images, dd.labels,
                                    train.epoch_key(keys["epochs"], epoch), 64)
  return state


def test_replica_k_equals_single_run_with_seed_k(subset):
  config, dd, _ = subset
  config = config.copy_and_resolve_references()
  config.num_seeds, config.sweep.optimizer.learning_rate = 3, (1e-3, 3e-3)
  settings = replicas.replica_settings(config)
  assert [(r["seed"], r["optimizer.learning_rate"]) for r in settings] == [
      (0, 1e-3), (1, 1e-3), (2, 1e-3), (0, 3e-3), (1, 3e-3), (2, 3e-3)]
  states = replicas.create_replica_states(config)
  seeds = jnp.array([r["seed"] for r in settings])
  values = replicas.hyperparams_of(settings)
  for epoch in (1, 2):
    keys = jax.vmap(lambda s, e=epoch: train.epoch_key(train.run_keys(s)["epochs"], e))(seeds)
    states, sums, first_bad = replicas.train_epoch_replicas(states, dd.images, dd.labels, keys, 64,
                                                            hyperparams=values)
  assert sums["count"].shape == (6,) and np.all(np.asarray(first_bad) == -1)
  for k in (1, 5):
    single = _single_run(config, settings[k]["seed"], settings[k]["optimizer.learning_rate"], dd)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(states.params)):
      np.testing.assert_allclose(a, b[k], rtol=1e-4, atol=1e-6)
  # Different seeds and rates give different models.
  kernels = np.asarray(states.params["dense_0"]["kernel"])
  assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[0], kernels[3])
  evals = replicas.evaluate_replicas(states, dd.images, dd.labels, 100)
  assert evals["correct"].shape == (6,)


def test_init_run_has_one_interface_for_one_model_and_many(subset):
  config, dd, split = subset
  for num_seeds in (1, 2):
    config = config.copy_and_resolve_references()
    config.num_seeds = num_seeds
    fns = replicas.init_run(config, split)
    assert fns.num_replicas == num_seeds
    state, sums, _ = fns.train_epoch(fns.state, dd.images, dd.labels, fns.keys_of_epoch(1), 64)
    assert np.shape(sums["count"]) == (() if num_seeds == 1 else (num_seeds,))
    one = fns.one_model(state, replica=num_seeds - 1)
    assert one.params["dense_0"]["kernel"].shape == (784, 32)


def test_cli_many_seeds_reports_each_replica_and_mean_std(tmp_path):
  result = run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, "--noreport",
                   "--config.num_seeds=3")
  assert "Training 3 replicas" in result.stdout and "Mean over 3 replicas" in result.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  accuracies = [r["test_accuracy"] for r in summary["replicas"]]
  assert [r["seed"] for r in summary["replicas"]] == [0, 1, 2]
  assert len(set(accuracies)) > 1  # different seeds, different models
  assert summary["test_accuracy"] == pytest.approx(np.mean(accuracies))
  assert summary["test_accuracy_std"] == pytest.approx(np.std(accuracies))
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert record["train_loss"] == pytest.approx(np.mean(record["replicas"]["train_loss"]))
  run = workdir_lib.load_run(tmp_path, replica=2)  # each replica's parameters are saved
  assert run.state.params["dense_0"]["kernel"].shape == (784, 100)


def test_population_batch_stats_of_replicas_are_each_replica_s_own(subset):
  config, dd, split = subset
  config = config.copy_and_resolve_references()
  config.num_seeds, config.model.hidden_batchnorm = 2, True
  fns = replicas.init_run(config, split)
  state, _, _ = fns.train_epoch(fns.state, dd.images, dd.labels, fns.keys_of_epoch(1), 64)
  stats = fns.population_batch_stats(state, dd.images, 64)
  for k in (0, 1):
    one = train.population_batch_stats(replicas.select(state, k), dd.images, 64)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(stats), strict=True):
      np.testing.assert_allclose(b[k], a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_ladder_replica_equals_the_single_run_of_its_seed():
  """The Ladder draws noise in every layer from its keys: a vmapped replica still trains as the
  single run of its seed does, to float rounding (so a difference between the two on whole runs
  is the chaos of rounding, not a replica that draws another replica's noise or batches)."""
  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load("best_ladder")
  config.data.source, config.data.train_subset = "idx", 384
  config.model.hidden_sizes, config.model.denoising_weights = (32, 16), (1000.0, 1.0, 0.01, 0.01)
  split = data.load(config.data).train
  dd = parallel.DeviceData.put(split, config.data.preprocess)

  def trained(num_seeds, seed):
    config.num_seeds, config.seed = num_seeds, seed
    fns = replicas.init_run(config, split)
    state = fns.state
    for epoch in (1, 2):
      state, _, _ = fns.train_epoch(state, dd.images, dd.labels, fns.keys_of_epoch(epoch),
                                    config.train.batch_size)
    return state.params

  together = trained(num_seeds=3, seed=0)
  for k in (0, 2):
    for a, b in zip(jax.tree.leaves(trained(num_seeds=1, seed=k)), jax.tree.leaves(together),
                    strict=True):
      np.testing.assert_allclose(a, b[k], rtol=1e-4, atol=1e-4)
  kernels = np.asarray(together["dense_0"]["kernel"])
  assert not np.allclose(kernels[0], kernels[1], rtol=1e-2)  # and the seeds differ


@pytest.mark.slow
def test_a_ladder_replica_tests_as_the_single_run_of_its_seed(tmp_path):
  """The whole loop, vmapped and single: training, BatchNorm statistics recomputed over the
  training set, and the test. Each replica's test figures are its single run's, to the rounding
  that one epoch of vmapped arithmetic leaves (the GPU setting ran best_ladder vmapped)."""
  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from mnist_jax import loop  # pylint: disable=import-outside-toplevel

  def summary(num_seeds, seed):
    config = config_lib.load("best_ladder")
    config.data.source, config.data.train_subset = "idx", 2000
    config.model.hidden_sizes, config.model.denoising_weights = (32, 16), (1000.0, 1.0, 0.01, 0.01)
    config.train.epochs, config.optimizer.decay_epochs = 1, 1
    config.num_seeds, config.seed = num_seeds, seed
    loop.train_and_evaluate(config, tmp_path / f"{num_seeds}-{seed}")
    return json.loads((tmp_path / f"{num_seeds}-{seed}" / "summary.json").read_text())

  together = summary(num_seeds=3, seed=0)["replicas"]
  for k in (0, 2):
    alone = summary(num_seeds=1, seed=k)
    assert abs(together[k]["test_accuracy"] - alone["test_accuracy"]) <= 2e-4  # 2 images
    assert together[k]["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-3)
  assert together[0]["test_loss"] != pytest.approx(together[2]["test_loss"], rel=1e-3)
