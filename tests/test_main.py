"""The command line, as a user runs it: runs, overrides, and one clear paragraph for bad input."""
import json
import shutil

import jax
import numpy as np

from conftest import REPO, TINY_FLAGS, assert_clear_error, restore, run_cli


def test_cli_unknown_name_and_bad_override_fail_clearly():
  result = run_cli("--config=nope", check=False)
  assert result.returncode != 0
  assert "Unknown config 'nope'" in result.stderr and "adam_mlp" in result.stderr
  assert "Traceback" not in result.stderr

  result = run_cli("--config=adam_mlp", "--config.train.epoch=3", check=False)
  assert result.returncode != 0
  assert "Bad --config override" in result.stderr and "epochs" in result.stderr
  assert "Traceback" not in result.stderr

  result = run_cli("--config=adam_mlp", "--config.train.batch_size=-4", check=False)
  assert result.returncode != 0 and "batch_size=-4 must be positive" in result.stderr


def test_cli_end_to_end_run_is_reproducible(tmp_path):
  runs = []
  for name in ("a", "b"):
    workdir = tmp_path / name
    result = run_cli("--config=adam_mlp", f"--workdir={workdir}", *TINY_FLAGS)
    runs.append(workdir)
  out = result.stdout
  assert "Epoch 1/2" in out and "Epoch 2/2" in out and "Test loss" in out
  assert "Total params: 79,510" in out
  config = json.loads((runs[0] / "config.json").read_text())
  assert config["train"]["epochs"] == 2 and config["data"]["train_subset"] == 600
  records = [json.loads(l) for l in (runs[0] / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert {"train_loss", "train_accuracy", "seconds", "learning_rate"} <= set(records[0])
  summary = json.loads((runs[0] / "summary.json").read_text())
  assert 0.5 < summary["test_accuracy"] <= 1.0
  (sa, ea), (sb, eb) = restore(runs[0]), restore(runs[1])
  assert ea == eb == 2
  for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
    np.testing.assert_array_equal(x, y)  # bit-identical


def test_cli_validation_and_overrides(tmp_path):
  result = run_cli("--config=sgd_bn_mlp", f"--workdir={tmp_path}", *TINY_FLAGS,
                   "--config.train.epochs=1", "--config.model.hidden_sizes=16,8")
  assert "val_accuracy" in result.stdout
  assert "1,568 non-trainable" in result.stdout  # BatchNorm statistics
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"]["hidden_sizes"] == [16, 8] and config["train"]["epochs"] == 1


def test_cli_names_every_out_of_range_value_at_once(tmp_path):
  result = run_cli("--config=adam_mlp", "--config.train.batch_size=0",
                   "--config.optimizer.learning_rate=0", "--config.train.epochs=0",
                   "--config.model.input_dropout=1.0", "--config.data.validation_fraction=1.5",
                   f"--workdir={tmp_path}", check=False)
  assert_clear_error(result, 2, "ERROR: Invalid config", "batch_size=0 must be positive",
                      "learning_rate=0.0 must be positive", "epochs=0 must be at least 1",
                      "must each be in [0, 1)", "validation_fraction=1.5 must be in (0, 1)")
  assert not any(tmp_path.iterdir())


def test_cli_batch_larger_than_training_set(tmp_path):
  result = run_cli("--config=adam_mlp", "--config.data.source=idx",
                   "--config.data.train_subset=100", "--config.train.batch_size=128",
                   f"--workdir={tmp_path}", check=False)
  assert_clear_error(result, 1, "batch_size=128 is larger than the training set (100 examples)")
  assert not (tmp_path / "config.json").exists()  # so the corrected command is not refused


def test_cli_corrupted_data_file(tmp_path):
  idx_dir = tmp_path / "mnist"
  shutil.copytree(REPO / "data" / "mnist", idx_dir)
  labels = idx_dir / "t10k-labels-idx1-ubyte.gz"
  labels.write_bytes(labels.read_bytes()[:-100])  # truncated
  result = run_cli("--config=adam_mlp", "--config.data.source=idx",
                   f"--config.data.idx_dir={idx_dir}", f"--workdir={tmp_path / 'run'}",
                   check=False)
  assert_clear_error(result, 1, f"Checksum mismatch for {labels}",
                      "The file is corrupt or truncated", "Replace it with the official file")


def test_cli_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"  # a directory cannot be made under a file, even by root
  blocker.write_text("")
  result = run_cli("--config=adam_mlp", "--config.data.source=idx",
                   f"--workdir={blocker / 'run'}", check=False)
  assert_clear_error(result, 1, f"Cannot write to workdir {blocker / 'run'}",
                      "Choose a writable --workdir")
