"""Preparing a tfds dataset (TensorFlow-only) and recording its checksums."""
import hashlib

import tensorflow_datasets as tfds

from mnist_jax import data_sources, prepare_tfds


def test_write_checksums_keeps_other_datasets_lines(tmp_path):
  (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  other/1.0.0/x\n" + "1" * 64 + "  mnist/old\n")
  (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
  (tmp_path / "mnist" / "3.0.1" / "f").write_bytes(b"abc")
  prepare_tfds.write_checksums(tmp_path, "mnist/")
  assert (tmp_path / "SHA256SUMS").read_text().splitlines() == [
      hashlib.sha256(b"abc").hexdigest() + "  mnist/3.0.1/f", "0" * 64 + "  other/1.0.0/x"]
  data_sources.verify_checksums(tmp_path, prefix="mnist/")


def test_the_tfds_serializer_prepare_patches_exists():
  """`prepare` serializes examples in key order by replacing this tfds method: an upgrade of
  tensorflow-datasets that moves or renames it fails here, not silently in a later prepare."""
  serializer = tfds.core.example_serializer.ExampleSerializer
  assert callable(serializer.serialize_example) and callable(serializer.get_tf_example)
