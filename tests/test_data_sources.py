"""Reading datasets from disk: IDX files, the shipped tfds files, checksums and the decode cache."""
import gzip
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import multiset
from mnist_jax import data_sources as sources
from mnist_jax.errors import DataError
from mnist_jax.paths import DATA_DIR, REPO_ROOT

MNIST_DIR = DATA_DIR / "mnist"
TFDS_DIR = DATA_DIR / "tfds"


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
  np.testing.assert_array_equal(sources.read_idx(tmp_path / "t10k-images-idx3-ubyte"),
                                sources.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz"))


def _copy_mnist(tmp_path):
  target = tmp_path / "mnist"
  shutil.copytree(MNIST_DIR, target)
  return target


def test_checksum_mismatch_names_file_and_fix(tmp_path):
  directory = _copy_mnist(tmp_path)
  path = directory / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-10])  # truncated
  with pytest.raises(DataError, match="Checksum mismatch.*t10k-labels-idx1-ubyte.gz.*"):
    sources.load_idx(directory)


def test_missing_file(tmp_path):
  directory = _copy_mnist(tmp_path)
  (directory / "train-images-idx3-ubyte.gz").unlink()
  with pytest.raises(DataError, match="Missing data file .*train-images"):
    sources.load_idx(directory)


def test_wrong_magic_number(tmp_path):
  path = tmp_path / "bad-idx1-ubyte"
  path.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x01\x02\x03")
  with pytest.raises(DataError, match="magic number"):
    sources.read_idx(path)


def test_counts_disagree_with_size(tmp_path):
  path = tmp_path / "short-idx1-ubyte"
  path.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02\x03")
  with pytest.raises(DataError, match=r"declares shape \(5,\).*holds 3 bytes"):
    sources.read_idx(path)


def test_not_gzip(tmp_path):
  path = tmp_path / "labels.gz"
  path.write_text("hello, not gzip")
  with pytest.raises(DataError, match="truncated or corrupt"):
    sources.read_idx(path)


def test_shipped_array_record_files_decode_to_the_idx_examples(idx_arrays):
  """The shipped tfds data itself, not the cache: the test split through tfds.data_source."""
  pytest.importorskip("tensorflow_datasets")
  splits, source = sources.read_tfds("mnist", TFDS_DIR, splits=("test",))
  assert "array_record files in data/tfds/mnist/3.0.1" in source
  assert multiset(splits["test"]) == multiset(idx_arrays["test"])


@pytest.mark.slow
def test_the_two_sources_hold_the_same_training_examples_in_another_order(idx_arrays):
  """What RESULTS.md rests on when it compares runs of the idx and tfds sources: the same 60,000
  training examples, so a seed's batches differ between them only by the order (13 s)."""
  pytest.importorskip("tensorflow_datasets")
  train = sources.read_tfds("mnist", TFDS_DIR, splits=("train",))[0]["train"]
  assert multiset(train) == multiset(idx_arrays["train"])
  assert not np.array_equal(train.labels, idx_arrays["train"].labels)


def test_shipped_tfds_files_match_their_checksums():
  lines = (TFDS_DIR / "SHA256SUMS").read_text().split()
  assert "mnist/3.0.1/mnist-train.array_record-00000-of-00001" in lines
  sources.verify_checksums(TFDS_DIR)


def test_restore_hint_for_shipped_tfds_files_names_the_regenerate_command():
  hint = sources._restore_hint(TFDS_DIR / "mnist" / "3.0.1" / "features.json")
  assert "git checkout -- data/tfds/mnist/3.0.1/features.json" in hint
  assert "python -m mnist_jax.prepare_tfds" in hint


def test_cache_is_used_only_for_the_files_it_was_decoded_from(tmp_path):
  splits = {s: sources.Split(np.full((2, 3, 3), i, np.uint8), np.array([i, i], np.int32))
            for i, s in enumerate(("train", "test"))}
  path = tmp_path / "cache" / "mnist.npz"
  sources.write_cache(path, splits, "fingerprint-a")
  cached = sources.read_cache(path, "fingerprint-a")
  np.testing.assert_array_equal(cached["test"].images, splits["test"].images)
  assert sources.read_cache(path, "fingerprint-b") is None  # the tfds files changed
  path.write_bytes(path.read_bytes()[:100])
  assert sources.read_cache(path, "fingerprint-a") is None  # damaged: rebuilt


def test_fingerprint_changes_with_the_tfds_files(tmp_path):
  directory = tmp_path / "mnist" / "3.0.1"
  directory.mkdir(parents=True)
  (directory / "a").write_bytes(b"1")
  before = sources.fingerprint(tmp_path, "mnist")
  assert before == sources.fingerprint(tmp_path, "mnist:3.0.1")
  (directory / "a").write_bytes(b"22")
  assert sources.fingerprint(tmp_path, "mnist") != before
  assert sources.fingerprint(tmp_path, "other") == ""


@pytest.mark.slow
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
      from mnist_jax import data_sources, paths
      arrays, source = data_sources.read_tfds("mnist", paths.DATA_DIR / "tfds",
                                              splits=("test[:100]",))
      assert arrays["test[:100]"].images.shape == (100, 28, 28), source
      imported = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
      assert not imported, imported[:5]
      print("ok")
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
