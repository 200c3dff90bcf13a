"""mnist_jax.aggregate: seeds run one per workdir and a vmapped run's replicas, as one result."""

import numpy as np
import pytest

from conftest import assert_clear_error, fake_run, run_program
from mnist_jax import aggregate
from mnist_jax import config as config_lib


def vat_config(seed, num_seeds=1):
  config = config_lib.load("vat")
  config.seed, config.num_seeds = seed, num_seeds
  return config


def test_single_seed_runs_and_a_vmapped_run_make_one_table(tmp_path):
  runs = [fake_run(tmp_path / f"seed{k}", vat_config(k),
                   {"test_accuracy": acc, "test_loss": loss})
          for k, acc, loss in ((0, 0.9936, 0.0233), (1, 0.9930, 0.0238))]
  runs.append(fake_run(tmp_path / "vmapped", vat_config(2, num_seeds=2), {
      "test_accuracy": 0.99285, "test_loss": 0.0240, "replicas": [
          {"seed": 2, "test_loss": 0.0238, "test_accuracy": 0.9931},
          {"seed": 3, "test_loss": 0.0242, "test_accuracy": 0.9926}]}))
  result = aggregate.aggregate(runs)

  assert [s.seed for s in result.seeds] == [0, 1, 2, 3]
  accuracies = [0.9936, 0.9930, 0.9931, 0.9926]
  stats = result.stats("accuracy")
  std = np.std(accuracies, ddof=1)
  assert (stats.mean, stats.std, stats.se) == pytest.approx((np.mean(accuracies), std, std / 2))
  # Student's t with 3 degrees of freedom: 3.182 standard errors either side.
  assert (stats.low, stats.high) == pytest.approx((stats.mean - 3.1824 * std / 2,
                                                   stats.mean + 3.1824 * std / 2), rel=1e-5)
  assert result.seeds[0].median_epoch_seconds == 2.0 and result.seeds[3].train_seconds == 7.0
  assert result.metrics == ["accuracy", "loss"]
  text = aggregate.markdown(result)
  assert "Test error 0.692% +- 0.041 (std, n - 1), 95% interval 0.627-0.758%, 4 seeds" in text
  assert "| 0 | `" + str(runs[0]) + "` | 0.64% | 0.9936 | 0.0233 | 3 | 7 | 2.0 |" in text
  assert "| **mean** |  | **0.692%** | 0.99308 | 0.02378 |" in text
  assert "| std (n - 1) |  | 0.041 | 0.00041 | 0.00037 |" in text
  assert "| 95% interval |  | 0.627-0.758% | 0.99242-0.99373 |" in text
  # The commands name the closest config and the seed: here vat itself.
  assert f"--config=vat --config.num_seeds=1 --config.seed=1 --workdir={runs[1]}" in text
  assert f"--config=vat --config.num_seeds=2 --config.seed=2 --workdir={runs[2]}" in text


def test_runs_that_keep_the_test_set_out_give_their_validation_metrics(tmp_path):
  configs = [vat_config(k) for k in (0, 1)]
  for config in configs:
    config.data.validation, config.data.use_test = "train_tail", False
  runs = [fake_run(tmp_path / f"seed{k}", config, {"val_accuracy": acc, "val_loss": loss})
          for k, config, acc, loss in ((0, configs[0], 0.9930, 0.0290), (1, configs[1], 0.9920, 0.0300))]
  text = aggregate.markdown(aggregate.aggregate(runs))
  assert "Validation error 0.750% +- 0.071 (std, n - 1)" in text
  assert "(the runs kept the test set out)" in text
  assert "| seed | run | validation error | validation accuracy | validation loss |" in text
  assert "test error" not in text


def test_a_metric_some_runs_lack_is_left_blank_and_out_of_their_statistics(tmp_path):
  runs = [fake_run(tmp_path / "a", vat_config(0), {"test_accuracy": 0.99, "test_loss": 0.03,
                                                   "test_adversarial_accuracy": 0.9}),
          fake_run(tmp_path / "b", vat_config(1), {"test_accuracy": 0.98, "test_loss": 0.04}),
          fake_run(tmp_path / "c", vat_config(2), {"test_accuracy": 0.97, "test_loss": 0.05,
                                                   "test_adversarial_accuracy": 0.8})]
  result = aggregate.aggregate(runs)
  assert result.metrics == list(aggregate.METRICS)
  assert result.stats("adversarial_accuracy").n == 2
  assert result.stats("adversarial_accuracy").mean == pytest.approx(0.85)
  assert "| 1 | `" + str(runs[1]) + "` | 2.00% | 0.9800 | 0.0400 |  | 3 |" in aggregate.markdown(result)


@pytest.mark.parametrize("problem", ["other_config", "another_experiment", "unfinished",
                                     "same_seed", "sweep"])
def test_runs_that_are_not_one_experiments_seeds_are_refused(tmp_path, problem):
  first = fake_run(tmp_path / "a", vat_config(0), {"test_accuracy": 0.99, "test_loss": 0.03})
  config, summary = vat_config(1), {"test_accuracy": 0.98, "test_loss": 0.04}
  expected = {"other_config": "configs differ in train.epochs (100 vs 99). Aggregate runs whose "
                              "configs differ only in seed and num_seeds.",
              "another_experiment": " more fields. Aggregate runs whose",
              "unfinished": "has not finished (it has no summary.json; 3 of its 100 epochs",
              "same_seed": "Seed 0 is in both",
              "sweep": "is a sweep (of optimizer.learning_rate)"}[problem]
  if problem == "other_config":
    config.train.epochs = 99
  elif problem == "another_experiment":
    config = config_lib.load("ladder_baseline")
  elif problem == "unfinished":
    summary = None
  elif problem == "same_seed":
    config.seed = 0
  else:
    config.sweep.optimizer.learning_rate = (0.001, 0.002)
  second = fake_run(tmp_path / "b", config, summary)
  with pytest.raises(aggregate.AggregateError) as error:
    aggregate.aggregate([second] if problem == "sweep" else [first, second])
  assert expected in str(error.value), error.value


def test_cli_prints_the_table_and_refuses_bad_input_in_one_paragraph(tmp_path):
  run = fake_run(tmp_path / "a", vat_config(0), {"test_accuracy": 0.9936, "test_loss": 0.0233})
  result = run_program("aggregate", str(run))
  assert result.returncode == 0, result.stderr
  assert "Test error 0.64%, 1 seed" in result.stdout
  assert_clear_error(run_program("aggregate", str(run), str(tmp_path / "nothing")), 1,
                     "is not the workdir of a run")
