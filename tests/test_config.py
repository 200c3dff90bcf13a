"""Configs: lookup by name or path, and validation (every rule, in one place)."""
import re

import pytest

from mnist_jax import config as config_lib
from mnist_jax import validation


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


def test_an_experiment_extends_another_by_loading_it():
  base, variant = config_lib.load("adam_mlp_784"), config_lib.load("adam_mlp_784_dropout")
  assert variant.model.dropout == (0.5, 0.5) and variant.model.hidden_sizes == (784, 130)
  assert variant.data.to_dict() == base.data.to_dict()
  assert "benchmark" not in " ".join(config_lib.available())  # experiments/ holds configs only


@pytest.mark.parametrize("field,value,message", [
    ("train.batch_size", 0, "batch_size=0 must be positive"),
    ("train.batch_size", -1, "batch_size=-1 must be positive"),
    ("train.epochs", 0, "epochs=0 must be at least 1"),
    ("optimizer.learning_rate", -1.0, r"learning_rate=-1.0 must be in \(0, inf\)"),
    ("optimizer.learning_rate", 0.0, r"learning_rate=0.0 must be in \(0, inf\)"),
    ("optimizer.name", "adagrad", "optimizer.name='adagrad' is not one of adam, adamw"),
    ("optimizer.max_norm", -1.0, r"max_norm=-1.0 must be in \[0, inf\) \(0 = off\)"),
    ("data.validation_fraction", 1.0, r"validation_fraction=1.0 must be in \(0, 1\)"),
    ("data.validation_fraction", 0.0, r"validation_fraction=0.0 must be in \(0, 1\)"),
    ("model.input_dropout", -0.1, r"input_dropout=-0.1 must be in \[0, 1\)"),
    ("model.input_dropout", 1.0, r"input_dropout=1.0 must be in \[0, 1\) \(a rate of 1"),
    ("model.dropout", (1.0,), r"dropout=\(1.0,\) must each be in \[0, 1\)"),
    ("model.gaussian_noise", -0.1, r"gaussian_noise=-0.1 must be in \[0, inf\)"),
    ("train.early_stopping_patience", -1, "early_stopping_patience=-1 must be >= 0"),
    ("train.min_seconds_between_checkpoints", -1.0,
     "min_seconds_between_checkpoints=-1.0 must be >= 0"),
    ("train.early_stopping_patience", 3, "early_stopping_patience=3 needs validation data"),
    ("train.monitor", "val_acc", "monitor='val_acc' is not one of val_accuracy, val_loss"),
    ("train.ema_decay", 1.0, r"ema_decay=1.0 must be in \[0, 1\)"),
    ("rng_impl", "philox", "rng_impl='philox' is not one of threefry, rbg, unsafe_rbg"),
    ("optimizer.momentum_ramp_epochs", 10.0, "needs optimizer.name='sgd' \\(not 'adam'\\)"),
    ("train.monitor", "val_adversarial_accuracy", "set config.train.adversarial_epsilon > 0"),
    ("model.maxout_pieces", 0, "maxout_pieces=0 must be at least 1"),
    ("data.use_test", False, "validation='none' leaves nothing to measure the run on. Set "
                             "config.data.validation=train_tail"),
])
def test_invalid_values_are_named(field, value, message):
  config = config_lib.load("adam_mlp")  # no validation split
  *group, key = field.split(".")
  (config[group[0]] if group else config)[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    validation.validate(config)


@pytest.mark.parametrize("scheme", ["test_halves", "test"])
def test_a_run_without_the_test_set_validates_on_training_images(scheme):
  config = config_lib.load("adam_mlp")
  config.data.use_test, config.data.validation = False, scheme
  with pytest.raises(config_lib.ConfigError, match=f"validation='{scheme}' validates on test "
                     "images. Set config.data.validation=train_tail"):
    validation.validate(config)


def test_every_problem_is_named_at_once():
  config = config_lib.load("adam_mlp")
  config.train.batch_size, config.train.epochs, config.model.activation = 0, 0, "softsign"
  with pytest.raises(config_lib.ConfigError) as error:
    validation.validate(config)
  for phrase in ("batch_size=0", "epochs=0", "activation='softsign' is not one of relu"):
    assert phrase in str(error.value)


def test_choices_come_from_the_registries():
  """Validation reads the registries beside the code, so a new entry is accepted everywhere."""
  from mnist_jax import optim  # pylint: disable=import-outside-toplevel
  config = config_lib.load("adam_mlp")
  config.optimizer.name = "lion_test"
  with pytest.raises(config_lib.ConfigError, match="lion_test"):
    validation.validate(config)
  optim.OPTIMIZERS["lion_test"] = lambda c, learning_rate: None
  try:
    validation.validate(config)
  finally:
    del optim.OPTIMIZERS["lion_test"]


@pytest.mark.parametrize("source,message", [
    ("def get_config(:\n  pass\n", r"does not parse: .* at line 1"),
    ("import no_such_module_here\n", r"failed at line 1: ModuleNotFoundError: No module named"),
    ("def get_config():\n  x = 1\n  raise RuntimeError('boom')\n",
     r"failed at line 3: RuntimeError: boom"),
    ("def get_config():\n  return {'seed': 1}\n", r"returned a dict, not an ml_collections"),
    ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'seed': 1})\n",
     r"lacks the field\(s\) data.idx_dir"),
    ("x = 1\n", r"has no get_config\(\) function"),
])
def test_a_config_file_that_does_not_load_is_one_paragraph(tmp_path, source, message):
  path = tmp_path / "broken.py"
  path.write_text(source)
  with pytest.raises(config_lib.ConfigError, match=f"{path}|broken.py") as error:
    config_lib.load(str(path))
  assert re.search(message, str(error.value)), str(error.value)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("combinator,hidden,message", [
    ("amlp", (), r"combinator_hidden=\(\) needs one positive width per hidden layer"),
    ("amlp", (2, 0), r"combinator_hidden=\(2, 0\) needs one positive width per hidden layer"),
    ("vanilla", (2, 2), r"combinator_hidden=\(2, 2\) shapes the AMLP combinator, but "
                        r"config.model.combinator='vanilla'"),
])
def test_combinator_hidden_must_fit_the_combinator(combinator, hidden, message):
  config = config_lib.load("ladder_amlp_2_2")
  assert config.model.combinator_hidden == (2, 2)
  config.model.combinator, config.model.combinator_hidden = combinator, hidden
  with pytest.raises(config_lib.ConfigError, match=message):
    validation.validate(config)


def test_maxout_is_refused_for_the_ladder_model():
  config = config_lib.load("ladder_baseline")
  config.model.activation = "maxout"
  with pytest.raises(config_lib.ConfigError, match="'maxout' belongs to the mlp model"):
    validation.validate(config)
