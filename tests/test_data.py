"""The splits an experiment trains on: source choice, validation schemes, subsets, preprocessing."""
import hashlib
import importlib.util
import shutil

import numpy as np
import pytest

from conftest import multiset
from mnist_jax import data
from mnist_jax.config import default_config
from mnist_jax.errors import DataError
from mnist_jax.paths import DATA_DIR

MNIST_DIR = DATA_DIR / "mnist"
TFDS_DIR = DATA_DIR / "tfds"


def _data_config(**overrides):
  config = default_config().data
  config.source = "idx"
  config.update(overrides)
  return config


def _rows(split):
  return {hashlib.sha1(img.tobytes() + bytes([lbl])).hexdigest() for img, lbl in
          zip(split.images, split.labels)}


def test_validation_none():
  splits = data.load(_data_config(validation="none"))
  assert (len(splits.train), splits.val, len(splits.test)) == (60000, None, 10000)


def test_validation_train_tail_is_keras_validation_split(idx_arrays):
  splits = data.load(_data_config(validation="train_tail", validation_fraction=0.2))
  assert (len(splits.train), len(splits.val)) == (48000, 12000)
  np.testing.assert_array_equal(splits.val.images, idx_arrays["train"].images[48000:])
  np.testing.assert_array_equal(splits.train.labels, idx_arrays["train"].labels[:48000])


def test_validation_test_halves_is_sklearn_split(idx_arrays):
  splits = data.load(_data_config(validation="test_halves", validation_seed=1))
  assert (len(splits.train), len(splits.val), len(splits.test)) == (60000, 5000, 5000)
  assert not _rows(splits.val) & _rows(splits.test)
  assert _rows(splits.val) | _rows(splits.test) == _rows(idx_arrays["test"])
  # sklearn's train_test_split(x, test_size=0.5, random_state=1) test part: permutation[:5000].
  first = np.random.RandomState(1).permutation(10000)[0]
  np.testing.assert_array_equal(splits.test.images[0], idx_arrays["test"].images[first])
  other = data.load(_data_config(validation="test_halves", validation_seed=2))
  assert _rows(other.test) != _rows(splits.test)


def test_validation_is_test_set():
  splits = data.load(_data_config(validation="test"))
  np.testing.assert_array_equal(splits.val.images, splits.test.images)


def test_use_test_false_keeps_the_test_set_out():
  splits = data.load(_data_config(validation="train_tail", use_test=False))
  tested = data.load(_data_config(validation="train_tail"))
  assert splits.test is None and len(tested.test) == 10000
  assert _rows(splits.train) == _rows(tested.train) and _rows(splits.val) == _rows(tested.val)


def test_train_subset():
  splits = data.load(_data_config(train_subset=1000, validation="train_tail",
                                   validation_fraction=0.1))
  assert (len(splits.train), len(splits.val)) == (900, 100)


def test_preprocess_scale_and_raw():
  images = np.array([[[0, 255], [51, 102]]], np.uint8)
  np.testing.assert_allclose(data.preprocess(images, "scale"), [[0, 1, 0.2, 0.4]])
  np.testing.assert_allclose(data.preprocess(images, "raw"), [[0, 255, 51, 102]])


def test_preprocess_l2_rows_matches_keras_normalize():
  images = np.random.RandomState(0).randint(0, 256, (3, 28, 28)).astype(np.uint8)
  images[0, 5] = 0  # an all-zero row stays zero (Keras sets its norm to 1)
  norms = np.atleast_1d(np.linalg.norm(images.astype(np.float64), 2, -1))
  norms[norms == 0] = 1
  expected = (images / np.expand_dims(norms, -1)).reshape(3, -1)
  np.testing.assert_allclose(data.preprocess(images, "l2_rows"), expected, rtol=1e-6, atol=1e-7)


def test_tfds_and_idx_give_the_same_examples(idx_arrays):
  pytest.importorskip("tensorflow_datasets")
  splits, source = data.load_arrays(_data_config(source="tfds"))
  assert source.startswith("tfds")
  for name in ("train", "test"):
    ours, theirs = idx_arrays[name], splits[name]
    assert ours.images.shape == theirs.images.shape
    assert theirs.images.dtype == np.uint8 and theirs.labels.dtype == np.int32
    assert multiset(ours) == multiset(theirs)


def _copy_tfds(tmp_path):
  target = tmp_path / "tfds"
  target.mkdir()
  shutil.copy(TFDS_DIR / "SHA256SUMS", target)
  shutil.copytree(TFDS_DIR / "mnist", target / "mnist")
  return target


def test_tfds_checksum_mismatch_is_reported_before_use(tmp_path):
  tfds_dir = _copy_tfds(tmp_path)
  path = tfds_dir / "mnist" / "3.0.1" / "mnist-test.array_record-00000-of-00001"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(DataError, match="Checksum mismatch.*mnist-test.array_record"):
    data.load_arrays(_data_config(source="tfds", tfds_dir=str(tfds_dir)))
  path.unlink()
  with pytest.raises(DataError, match="Missing data file .*mnist-test.array_record"):
    data.load_arrays(_data_config(source="tfds", tfds_dir=str(tfds_dir)))


def test_unprepared_dataset_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
  config = _data_config(source="tfds", name="fashion_mnist", tfds_dir=str(tmp_path),
                        idx_dir=str(tmp_path / "none"))
  with pytest.raises(DataError, match=r"(?s)'fashion_mnist' is not prepared.*needs "
                     r"TensorFlow.*requirements-tf.txt.*--config.data.source=idx"):
    data.load_arrays(config)


def test_auto_picks_tfds_when_installed():
  assert data.SOURCES == ("auto", "tfds", "idx")
  expected = "tfds" if importlib.util.find_spec("tensorflow_datasets") else "idx"
  assert data.choose_source("auto") == expected
