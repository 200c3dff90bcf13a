import collections
import gzip
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mnist_jax import data
from mnist_jax.config import REPO_ROOT, default_config

MNIST_DIR = REPO_ROOT / "data" / "mnist"
TFDS_DIR = REPO_ROOT / "data" / "tfds"


@pytest.fixture(scope="module")
def idx_arrays():
  return data.load_idx(MNIST_DIR)


def test_idx_shapes_and_labels(idx_arrays):
  assert idx_arrays["train"].images.shape == (60000, 28, 28)
  assert idx_arrays["test"].images.shape == (10000, 28, 28)
  assert idx_arrays["train"].images.dtype == np.uint8
  assert set(np.unique(idx_arrays["train"].labels)) == set(range(10))
  # The first training label of MNIST is a 5, the first test label a 7.
  assert idx_arrays["train"].labels[0] == 5 and idx_arrays["test"].labels[0] == 7


def test_raw_idx_files_read_like_gzipped(tmp_path):
  for name in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
    (tmp_path / name).write_bytes(gzip.decompress((MNIST_DIR / f"{name}.gz").read_bytes()))
  np.testing.assert_array_equal(data.read_idx(tmp_path / "t10k-images-idx3-ubyte"),
                                data.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz"))


def _copy_mnist(tmp_path):
  target = tmp_path / "mnist"
  shutil.copytree(MNIST_DIR, target)
  return target


def test_checksum_mismatch_names_file_and_fix(tmp_path):
  directory = _copy_mnist(tmp_path)
  path = directory / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-10])  # truncated
  with pytest.raises(data.DataError, match="Checksum mismatch.*t10k-labels-idx1-ubyte.gz.*"):
    data.load_idx(directory)


def test_missing_file(tmp_path):
  directory = _copy_mnist(tmp_path)
  (directory / "train-images-idx3-ubyte.gz").unlink()
  with pytest.raises(data.DataError, match="Missing data file .*train-images"):
    data.load_idx(directory)


def test_wrong_magic_number(tmp_path):
  path = tmp_path / "bad-idx1-ubyte"
  path.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03")
  with pytest.raises(data.DataError, match="magic number"):
    data.read_idx(path)


def test_counts_disagree_with_size(tmp_path):
  path = tmp_path / "short-idx1-ubyte"
  path.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02\x03")
  with pytest.raises(data.DataError, match=r"declares shape \(5,\).*holds 3 bytes"):
    data.read_idx(path)


def test_not_gzip(tmp_path):
  path = tmp_path / "labels.gz"
  path.write_text("hello, not gzip")
  with pytest.raises(data.DataError, match="truncated or corrupt"):
    data.read_idx(path)


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


def _multiset(split):
  # tfds reorders the examples: compare (image, label) pairs as multisets.
  return collections.Counter(hashlib.sha1(i.tobytes() + bytes([l])).digest()
                             for i, l in zip(split.images, split.labels))


def test_tfds_and_idx_give_the_same_examples(idx_arrays):
  pytest.importorskip("tensorflow_datasets")
  splits, source = data.load_arrays(_data_config(source="tfds"))
  assert source.startswith("tfds")
  for name in ("train", "test"):
    ours, theirs = idx_arrays[name], splits[name]
    assert ours.images.shape == theirs.images.shape
    assert theirs.images.dtype == np.uint8 and theirs.labels.dtype == np.int32
    assert _multiset(ours) == _multiset(theirs)


def test_shipped_array_record_files_decode_to_the_idx_examples(idx_arrays):
  """The shipped tfds data itself, not the cache: the test split through tfds.data_source."""
  pytest.importorskip("tensorflow_datasets")
  splits, source = data._load_tfds("mnist", TFDS_DIR, None, splits=("test",))
  assert "array_record files in data/tfds/mnist/3.0.1" in source
  assert _multiset(splits["test"]) == _multiset(idx_arrays["test"])


def test_shipped_tfds_files_match_their_checksums():
  lines = (TFDS_DIR / "SHA256SUMS").read_text().split()
  assert "mnist/3.0.1/mnist-train.array_record-00000-of-00001" in lines
  data.verify_checksums(TFDS_DIR)


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
  with pytest.raises(data.DataError, match="Checksum mismatch.*mnist-test.array_record"):
    data.load_arrays(_data_config(source="tfds", tfds_dir=str(tfds_dir)))
  path.unlink()
  with pytest.raises(data.DataError, match="Missing data file .*mnist-test.array_record"):
    data.load_arrays(_data_config(source="tfds", tfds_dir=str(tfds_dir)))


def test_restore_hint_for_shipped_tfds_files_names_the_regenerate_command():
  hint = data._restore_hint(TFDS_DIR / "mnist" / "3.0.1" / "features.json")
  assert "git checkout -- data/tfds/mnist/3.0.1/features.json" in hint
  assert "python -m mnist_jax.data --prepare_tfds" in hint


def test_cache_is_used_only_for_the_files_it_was_decoded_from(tmp_path):
  splits = {s: data.Split(np.full((2, 3, 3), i, np.uint8), np.array([i, i], np.int32))
            for i, s in enumerate(("train", "test"))}
  path = tmp_path / "cache" / "mnist.npz"
  data._write_cache(path, splits, "fingerprint-a")
  cached = data._read_cache(path, "fingerprint-a")
  np.testing.assert_array_equal(cached["test"].images, splits["test"].images)
  assert data._read_cache(path, "fingerprint-b") is None  # the tfds files changed
  path.write_bytes(path.read_bytes()[:100])
  assert data._read_cache(path, "fingerprint-a") is None  # damaged: rebuilt


def test_fingerprint_changes_with_the_tfds_files(tmp_path):
  directory = tmp_path / "mnist" / "3.0.1"
  directory.mkdir(parents=True)
  (directory / "a").write_bytes(b"1")
  before = data._fingerprint(tmp_path, "mnist")
  assert before == data._fingerprint(tmp_path, "mnist:3.0.1")
  (directory / "a").write_bytes(b"22")
  assert data._fingerprint(tmp_path, "mnist") != before
  assert data._fingerprint(tmp_path, "other") == ""


def test_unprepared_dataset_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
  config = _data_config(source="tfds", name="fashion_mnist", tfds_dir=str(tmp_path),
                        idx_dir=str(tmp_path / "none"))
  with pytest.raises(data.DataError, match=r"(?s)'fashion_mnist' is not prepared.*needs "
                     r"TensorFlow.*requirements-tf.txt.*--config.data.source=idx"):
    data.load_arrays(config)


def test_auto_picks_tfds_when_installed():
  assert data.SOURCES == ("auto", "tfds", "idx")
  expected = "tfds" if importlib.util.find_spec("tensorflow_datasets") else "idx"
  assert data.choose_source("auto") == expected


def test_loading_via_tfds_does_not_import_tensorflow():
  """Neither the cached arrays nor tfds.data_source on the shipped files import TensorFlow.

  A fresh interpreter, so that other tests' imports do not count; TensorFlow may be installed
  (requirements-tf.txt), which is when tfds could import it.
  """
  pytest.importorskip("tensorflow_datasets")
  script = textwrap.dedent("""
      import sys
      from mnist_jax import config, data
      c = config.default_config().data
      c.source = "tfds"
      splits = data.load(c)
      assert splits.source.startswith("tfds"), splits.source
      arrays, source = data._load_tfds("mnist", data.REPO_ROOT / "data" / "tfds", None,
                                       splits=("test[:100]",))
      assert arrays["test[:100]"].images.shape == (100, 28, 28), source
      imported = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
      assert not imported, imported[:5]
      print("ok")
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


def test_write_checksums_keeps_other_datasets_lines(tmp_path):
  (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  other/1.0.0/x\n" + "1" * 64 + "  mnist/old\n")
  (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
  (tmp_path / "mnist" / "3.0.1" / "f").write_bytes(b"abc")
  data.write_checksums(tmp_path, "mnist/")
  assert (tmp_path / "SHA256SUMS").read_text().splitlines() == [
      hashlib.sha256(b"abc").hexdigest() + "  mnist/3.0.1/f", "0" * 64 + "  other/1.0.0/x"]
  data.verify_checksums(tmp_path, prefix="mnist/")
