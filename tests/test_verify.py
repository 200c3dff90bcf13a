"""mnist_jax.verify: a user's runs against the committed result of their config."""

import pytest

from conftest import TINY_FLAGS, assert_clear_error, fake_run, run_main, run_program
from mnist_jax import cli, paths, results
from mnist_jax import config as config_lib

# Committed: five seeds of adam_mlp, test errors 2.57, 2.49, 2.65, 2.40, 2.52%: mean 2.526%, std
# (n - 1) 0.093, so one new seed agrees within 2.526 +- 2.776 x 0.093 x sqrt(1 + 1/5).
COMMITTED = (0.9743, 0.9751, 0.9735, 0.9760, 0.9748)
ENVIRONMENT = {"from_epoch": 0, "commit": {"sha": "abcdef0123", "modified": False},
               "versions": {"jax": "0.10.2", "flax": "0.12.8"},
               "device": {"platform": "cpu", "kind": "cpu", "count": 1, "processes": 1},
               "cpu": {"model": "AMD EPYC", "cores": 2}, "data_source": "tfds"}


def adam_mlp(seed=0, num_seeds=1, source="tfds"):
  config = config_lib.load("adam_mlp")
  config.seed, config.num_seeds, config.data.source = seed, num_seeds, source
  return config


@pytest.fixture
def committed(tmp_path, monkeypatch):
  """experiments/results/ of the test's own, holding adam_mlp's five vmapped seeds."""
  directory = tmp_path / "results"
  directory.mkdir()
  monkeypatch.setattr(paths, "RESULTS_DIR", directory)
  results.load.cache_clear()
  results.save(fake_run(tmp_path / "committed", adam_mlp(0, 5), {
      "test_accuracy": 0.975, "test_loss": 0.08,
      "replicas": [{"seed": k, "test_accuracy": a, "test_loss": 0.08}
                   for k, a in enumerate(COMMITTED)]}, environment=ENVIRONMENT))
  yield directory
  results.load.cache_clear()


def user_run(path, accuracy, seed=0, config=None, environment=ENVIRONMENT, finished=True):
  summary = {"test_accuracy": accuracy, "test_loss": 0.08} if finished else None
  return fake_run(path, config or adam_mlp(seed), summary, environment=environment)


def test_a_rerun_inside_the_committed_spread_agrees(committed, tmp_path):
  run = user_run(tmp_path / "mine", 0.9748, seed=7)
  result = run_program("verify", str(run))
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Committed: experiments/results/adam_mlp, 2.526% +- 0.093 (std, n - 1)" in result.stdout
  assert "seed 7: test error 2.52%, inside 2.243-2.809%" in result.stdout
  assert "AGREES" in result.stdout
  assert "No difference seen" not in result.stdout  # vmapped against one run a seed
  assert "runs: one run a seed yours, vmapped committed" in result.stdout


def test_the_committed_seed_rerun_on_the_same_platform_is_recognised(committed, tmp_path):
  run = user_run(tmp_path / "mine", COMMITTED[2], seed=2)
  result = run_program("verify", str(run))
  assert "seed 2: test error 2.65%, inside" in result.stdout
  assert "the committed seed's metrics exactly" in result.stdout


def test_a_rerun_outside_the_spread_is_reported_in_standard_errors(committed, tmp_path):
  runs = [user_run(tmp_path / f"mine{k}", 0.9715, seed=10 + k) for k in range(3)]
  result = run_program("verify", *map(str, runs))
  assert result.returncode == cli.DISAGREES, result.stdout + result.stderr
  # The mean's difference, 0.324 points, over its standard error 0.093 x sqrt(1/3 + 1/5) = 0.068.
  assert ("mean of 3: 2.850% against 2.526%, a difference of +0.324 points = +4.8 standard errors"
          in result.stdout)
  assert "seed 10: test error 2.85%, OUTSIDE 2.243-2.809%" in result.stdout
  assert "DISAGREES: the mean is 4.8 standard errors above the committed mean" in result.stdout


def test_what_differs_from_the_committed_runs_is_listed(committed, tmp_path):
  elsewhere = {**ENVIRONMENT, "data_source": "idx",
               "versions": {"jax": "0.11.2", "flax": "0.12.10"},
               "device": {"platform": "gpu", "kind": "NVIDIA H200", "count": 1, "processes": 1},
               "cpu": {"model": "Intel Xeon", "cores": 16},
               "commit": {"sha": "1234567890", "modified": True}}
  run = user_run(tmp_path / "mine", 0.9748, config=adam_mlp(0, 5, source="idx"),
                 environment=elsewhere)
  out = run_program("verify", str(run)).stdout
  assert "config.data.source: 'idx' yours, 'tfds' committed" in out
  assert "data source: idx yours, tfds committed" in out
  assert "versions: jax 0.11.2, flax 0.12.10 yours, jax 0.10.2, flax 0.12.8 committed" in out
  assert "device: 1 NVIDIA H200 (gpu) yours, 1 cpu (cpu) committed" in out
  assert "CPU: Intel Xeon, 16 cores yours, AMD EPYC, 2 cores committed" in out
  assert "commit: 1234567890 (modified) yours, abcdef0123 committed" in out
  assert "\n  runs:" not in out  # both vmapped


@pytest.mark.parametrize("problem", ["other_config", "unfinished", "sweep", "no_result",
                                     "one_committed_seed"])
def test_what_cannot_be_compared_gets_its_own_answer(committed, tmp_path, problem):
  config = adam_mlp()
  if problem == "other_config":
    config.train.epochs, config.optimizer.learning_rate = 3, 0.01
  elif problem == "sweep":
    config.sweep.optimizer.learning_rate = (1e-3, 2e-3)
  elif problem == "no_result":
    config = config_lib.load("adversarial_maxout")
  elif problem == "one_committed_seed":
    config.train.epochs = 3
    results.save(fake_run(tmp_path / "single", config, {"test_accuracy": 0.97, "test_loss": 0.1}),
                 name="adam_mlp-3")
  run = user_run(tmp_path / "mine", 0.97, config=config, finished=problem != "unfinished")
  expected = {
      "other_config": ("not of a config with a committed result: the closest, adam_mlp, differs "
                       "in optimizer.learning_rate (0.01 yours, 0.001 committed), train.epochs "
                       "(3 yours, 5 committed)"),
      "unfinished": "has not finished (3 of 5 epochs recorded",
      "sweep": "is a sweep (of optimizer.learning_rate)",
      "no_result": "No committed result for adversarial_maxout",
      "one_committed_seed": "has one seed: there is no spread to test against"}[problem]
  assert_clear_error(run_program("verify", str(run)), cli.FAILED, expected)


def test_verify_agrees_with_a_real_rerun_of_a_committed_replica(tmp_path, monkeypatch):
  """End to end: three vmapped seeds committed, then seed 1 trained alone and verified."""
  directory = tmp_path / "results"
  directory.mkdir()
  monkeypatch.setattr(paths, "RESULTS_DIR", directory)
  results.load.cache_clear()
  run_main("--config=adam_mlp", *TINY_FLAGS, "--config.num_seeds=3", f"--workdir={tmp_path / 'c'}",
           "--noreport")
  assert run_program("results", "save", str(tmp_path / "c"), "--name=tiny").returncode == 0
  run_main("--config=adam_mlp", *TINY_FLAGS, "--config.seed=1", f"--workdir={tmp_path / 'mine'}",
           "--noreport")
  result = run_program("verify", str(tmp_path / "mine"))
  results.load.cache_clear()
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Committed: experiments/results/tiny, " in result.stdout
  assert "seed 1: test error" in result.stdout and "AGREES" in result.stdout
  assert "runs: one run a seed yours, vmapped committed" in result.stdout
