"""README's "Extend it" examples, run as a user would follow them: an experiment file, an
optimizer, a model and a dataset, each one entry in one place."""
import gzip
import re
import shutil

import flax.linen as nn
import optax
import pytest

from conftest import REPO, TINY_FLAGS, run_main
from mnist_jax import config as config_lib
from mnist_jax import loop, models, optim, validation
from mnist_jax.paths import DATA_DIR


def _readme_examples() -> list[str]:
  """The Python blocks of README.md's "Extend it" section, in order."""
  section = (REPO / "README.md").read_text().split("## Extend it", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_an_experiment_is_a_file_with_get_config(tmp_path):
  experiment = _readme_examples()[0]
  path = tmp_path / "my_mlp.py"
  path.write_text(experiment)
  config = config_lib.load(str(path))
  assert tuple(config.model.hidden_sizes) == (256, 128)
  result = run_main(f"--config={path}", f"--workdir={tmp_path / 'run'}", *TINY_FLAGS,
                    "--noreport")
  assert "dense_1: Dense (relu)            (None, 128)" in result.stdout


def test_an_optimizer_is_one_registry_entry(tiny_config, tmp_path, monkeypatch):
  example = _readme_examples()[1]
  definition = example.split("\nOPTIMIZERS = {...")[0]  # the entry's function; the dict is optim's
  namespace = {"optax": optax}
  exec(definition, namespace)  # pylint: disable=exec-used
  monkeypatch.setitem(optim.OPTIMIZERS, "lion", namespace["_lion"])
  tiny_config.optimizer.name, tiny_config.optimizer.learning_rate = "lion", 1e-4
  validation.validate(tiny_config)
  _, history = loop.train_and_evaluate(tiny_config, tmp_path)
  assert history["train_loss"][-1] < history["train_loss"][0]
  assert history["learning_rate"] == pytest.approx([1e-4, 1e-4])  # injected, as every optimizer's


class _Residual(nn.Module):
  """A model as the README describes one: fields named like config.model's, called with
  (images, train, mask), returning logits."""
  hidden_sizes: tuple = (64,)
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train=False, mask=None):
    x = nn.Dense(self.hidden_sizes[0], name="dense_0")(images.reshape(images.shape[0], -1))
    x = x + nn.Dense(self.hidden_sizes[0], name="dense_1")(nn.relu(x))
    return nn.Dense(self.num_classes, name="logits")(nn.relu(x))


def test_a_model_is_one_registry_entry(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setitem(models.MODELS, "residual", _Residual)
  tiny_config.model.name, tiny_config.model.hidden_sizes = "residual", (64,)
  validation.validate(tiny_config)
  state, history = loop.train_and_evaluate(tiny_config, tmp_path)
  assert sorted(state.params) == ["dense_0", "dense_1", "logits"]
  assert history["train_loss"][-1] < history["train_loss"][0]


def test_a_dataset_of_idx_files_needs_no_code(tmp_path):
  """Four IDX files named like MNIST's, in any directory (here: MNIST's test set as both splits,
  relabelled to 3 classes)."""
  directory = tmp_path / "digits3"
  directory.mkdir()
  for split in ("train", "t10k"):
    shutil.copy(DATA_DIR / "mnist" / "t10k-images-idx3-ubyte.gz",
                directory / f"{split}-images-idx3-ubyte.gz")
    labels = bytearray(gzip.decompress((DATA_DIR / "mnist" / "t10k-labels-idx1-ubyte.gz")
                                       .read_bytes()))
    labels[8:] = bytes(label % 3 for label in labels[8:])
    (directory / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
  result = run_main("--config=adam_mlp", "--config.data.name=digits3",
                    "--config.data.source=idx", f"--config.data.idx_dir={directory}",
                    "--config.model.num_classes=3", f"--workdir={tmp_path / 'run'}",
                    *TINY_FLAGS[1:], "--noreport")
  assert "logits: Dense (softmax in loss)  (None, 3)" in result.stdout
  assert "Test loss" in result.stdout
