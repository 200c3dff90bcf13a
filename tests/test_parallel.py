"""Several devices (forced CPU devices in a subprocess) and several hosts (two local processes)."""
import json
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, TINY_FLAGS, run_cli

SHARDED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from mnist_jax import config as config_lib, data, parallel, train

    config = config_lib.load("adam_mlp")
    config.data.source, config.data.train_subset = "idx", 512
    assert jax.device_count() == 4, jax.devices()
    split = data.load(config.data).train
    single = parallel.DeviceData.put(split, "scale")
    mesh = parallel.make_mesh()
    sharded = parallel.DeviceData.put(split, "scale", mesh)
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


@pytest.mark.slow
def test_training_sharded_over_four_devices_matches_one_device():
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True,
                          text=True, timeout=300)
  assert "SHARDED OK" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_two_processes_on_localhost_train_like_one(tmp_path):
  """Multi-host data parallelism, with two CPU processes standing in for two hosts."""
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
