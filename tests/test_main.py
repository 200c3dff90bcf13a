"""The command line, as a user runs it."""
import json

import numpy as np
import pytest

from conftest import TINY_FLAGS, run_cli
from mnist_jax import config as config_lib


def test_every_tutorial_config_loads_and_names_itself():
  names = config_lib.available()
  for name in ("adam_mlp", "adam_mlp_784", "adam_mlp_784_dropout", "rmsprop_mlp",
               "sigmoid_mlp", "sgd_bn_mlp"):
    assert name in names
    module_doc = config_lib.resolve(name).read_text()
    assert f"--config={name}" in module_doc  # the docstring shows the command
    config_lib.load(name)


def test_config_by_path_equals_by_name():
  by_path = config_lib.load(str(config_lib.EXPERIMENTS_DIR / "rmsprop_mlp.py"))
  assert by_path.to_dict() == config_lib.load("rmsprop_mlp").to_dict()


def test_unknown_config_lists_available():
  with pytest.raises(config_lib.ConfigError, match="Unknown config 'adam_mpl'.*adam_mlp"):
    config_lib.load("adam_mpl")


@pytest.mark.parametrize("field,value,message", [
    ("train.batch_size", 0, "batch_size=0 must be positive"),
    ("train.epochs", 0, "epochs=0 must be at least 1"),
    ("optimizer.learning_rate", -1.0, "learning_rate=-1.0 must be positive"),
    ("data.validation_fraction", 1.0, r"validation_fraction=1.0 must be in \(0, 1\)"),
    ("optimizer.name", "adagrad", "optimizer.name='adagrad' is not one of"),
])
def test_invalid_values_are_named(field, value, message):
  config = config_lib.load("adam_mlp")
  group, key = field.split(".")
  config[group][key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_dropout_of_one_is_rejected():
  config = config_lib.load("adam_mlp_784_dropout")
  config.model.dropout = (1.0, 0.5)
  with pytest.raises(config_lib.ConfigError, match=r"must each be in \[0, 1\)"):
    config_lib.validate(config)


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


def _final_params(workdir):
  from mnist_jax import checkpoints, train
  config = config_lib.load("adam_mlp")
  template = train.create_train_state(__import__("jax").random.key(0), config)
  state, epoch = checkpoints.Checkpointer(workdir / "checkpoints", 2).restore(template)
  return state.params, epoch


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
  (pa, ea), (pb, eb) = _final_params(runs[0]), _final_params(runs[1])
  assert ea == eb == 2
  for x, y in zip(__import__("jax").tree.leaves(pa), __import__("jax").tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)  # bit-identical


def test_cli_validation_and_overrides(tmp_path):
  result = run_cli("--config=sgd_bn_mlp", f"--workdir={tmp_path}", *TINY_FLAGS,
                   "--config.train.epochs=1", "--config.model.hidden_sizes=16,8")
  assert "val_accuracy" in result.stdout
  assert "1,568 non-trainable" in result.stdout  # BatchNorm statistics
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"]["hidden_sizes"] == [16, 8] and config["train"]["epochs"] == 1


def test_finished_run_is_not_overwritten(tmp_path):
  run_cli("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS)
  before = (tmp_path / "summary.json").read_text()
  result = run_cli("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, check=False)
  assert result.returncode != 0 and "holds a finished run" in result.stderr
  assert (tmp_path / "summary.json").read_text() == before
  result = run_cli("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS,
                   "--config.seed=5", check=False)
  assert result.returncode != 0 and "different config" in result.stderr
  run_cli("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, "--overwrite")
