"""Several devices (forced CPU devices in a subprocess) and vmapped replicas."""
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mnist_jax import data, train

SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path.insert(0, sys.argv[1])
    import jax, jax.numpy as jnp, numpy as np
    from mnist_jax import config as config_lib, data, train

    config = config_lib.load("adam_mlp")
    config.data.source, config.data.train_subset = "idx", 512
    assert jax.device_count() == 4, jax.devices()
    split = data.load(config.data).train
    single = train.DeviceData.put(split, "scale")
    mesh = train.make_mesh()
    sharded = train.DeviceData.put(split, "scale", mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    fresh = lambda: train.create_train_state(jax.random.key(0), config)

    # The compiled epoch really splits each batch of 32 into 4 shards of 8 and all-reduces.
    hlo = train.train_epoch.lower(jax.device_put(fresh(), replicated), sharded.images,
                                  sharded.labels, jax.random.key(1), 32, mesh=mesh).compile().as_text()
    assert "f32[8,784]" in hlo and "f32[32,784]" not in hlo, "batch not sharded"
    assert "all-reduce" in hlo, "no gradient all-reduce"

    for batch_size in (32, 30):  # 30 is not divisible by 4: XLA pads the shards
      one, m1, _ = train.train_epoch(fresh(), single.images, single.labels, jax.random.key(1), batch_size)
      four, m4, _ = train.train_epoch(jax.device_put(fresh(), replicated), sharded.images,
                                      sharded.labels, jax.random.key(1), batch_size, mesh=mesh)
      assert four.params["dense_0"]["kernel"].sharding.is_fully_replicated
      for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
      assert float(m1["count"]) == float(m4["count"]) == 512
      e1 = train.evaluate(one, single.images, single.labels, 100)
      e4 = train.evaluate(four, sharded.images, sharded.labels, 100, mesh)
      assert float(e1["correct"]) == float(e4["correct"])
    print("SHARDED OK")
""")


def test_training_sharded_over_four_devices_matches_one_device():
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(REPO)], capture_output=True,
                          text=True, timeout=300)
  assert "SHARDED OK" in result.stdout, result.stdout + result.stderr


@pytest.fixture(scope="module")
def subset():
  from mnist_jax import config as config_lib
  config = config_lib.load("adam_mlp_784_dropout")  # dropout: the keys matter
  config.data.source, config.data.train_subset = "idx", 384
  config.model.hidden_sizes, config.model.dropout = (32, 16), (0.2, 0.2)
  return config, train.DeviceData.put(data.load(config.data).train, config.data.preprocess)


def _single_run(config, seed, learning_rate, dd, epochs=2):
  config = config.copy_and_resolve_references()
  config.seed, config.optimizer.learning_rate = seed, learning_rate
  keys = train.run_keys(seed)
  state = train.create_train_state(keys["init"], config)
  for epoch in range(1, epochs + 1):
    state, _, _ = train.train_epoch(state, dd.images, dd.labels,
                                    train.epoch_key(keys["epochs"], epoch), 64)
  return state


def test_replica_k_equals_single_run_with_seed_k(subset):
  config, dd = subset
  config = config.copy_and_resolve_references()
  config.num_seeds, config.sweep.learning_rate = 3, (1e-3, 3e-3)
  settings = train.replica_settings(config)
  assert [(r["seed"], r["learning_rate"]) for r in settings] == [
      (0, 1e-3), (1, 1e-3), (2, 1e-3), (0, 3e-3), (1, 3e-3), (2, 3e-3)]
  states = train.create_replica_states(config)
  seeds = jnp.array([r["seed"] for r in settings])
  for epoch in (1, 2):
    keys = jax.vmap(lambda s: train.epoch_key(train.run_keys(s)["epochs"], epoch))(seeds)
    states, sums, first_bad = train.train_epoch_replicas(states, dd.images, dd.labels, keys, 64)
  assert sums["count"].shape == (6,) and np.all(np.asarray(first_bad) == -1)
  for k in (1, 5):
    single = _single_run(config, settings[k]["seed"], settings[k]["learning_rate"], dd)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(states.params)):
      np.testing.assert_allclose(a, b[k], rtol=1e-4, atol=1e-6)
  # Different seeds and rates give different models.
  kernels = np.asarray(states.params["dense_0"]["kernel"])
  assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[0], kernels[3])
  evals = train.evaluate_replicas(states, dd.images, dd.labels, 100)
  assert evals["correct"].shape == (6,)


def test_cli_many_seeds_reports_each_replica_and_mean_std(tmp_path):
  from conftest import TINY_FLAGS, run_cli
  import json
  result = run_cli("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, "--noreport",
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
  from mnist_jax import report
  run = report.load_run(tmp_path, replica=2)  # each replica's parameters are saved
  assert run.state.params["dense_0"]["kernel"].shape == (784, 100)


def test_two_processes_on_localhost_train_like_one(tmp_path):
  """Multi-host data parallelism, with two CPU processes standing in for two hosts."""
  import json
  import socket
  from conftest import TINY_FLAGS, run_cli
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  common = ["-m", "mnist_jax.main", "--config=adam_mlp", *TINY_FLAGS, "--noreport", "--distributed",
            f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  procs = [subprocess.Popen([sys.executable, *common, f"--workdir={tmp_path / 'multi'}",
                             f"--process_id={i}"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert "2 CPU device(s) in 2 process(es)" in outputs[0]
  assert "Epoch 2/2" in outputs[0] and "Epoch" not in outputs[1]  # process 0 speaks for the job
  run_cli("--config=adam_mlp", *TINY_FLAGS, "--noreport", f"--workdir={tmp_path / 'single'}")
  multi, single = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("multi", "single"))
  assert multi["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=2e-3)
  assert multi["test_loss"] == pytest.approx(single["test_loss"], rel=1e-3)
