"""Prepare a dataset with tensorflow-datasets in the array_record format; regenerate data/tfds.

    python -m mnist_jax.prepare_tfds                      # data/tfds/mnist from data/mnist, offline
    python -m mnist_jax.prepare_tfds --dataset=fashion_mnist

Preparing (tfds's `download_and_prepare`) is the one step of tfds that needs TensorFlow
(requirements-tf.txt); reading the result never does. The SHA-256 sums of the prepared files go to
`<tfds_dir>/SHA256SUMS`, which every run checks.
"""

import contextlib
import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Optional, Sequence

from absl import flags

from mnist_jax import cli
from mnist_jax import data_sources as sources
from mnist_jax.paths import DATA_DIR, relative

_DATASET = flags.DEFINE_string("dataset", "mnist", "The tfds dataset to prepare.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", str(DATA_DIR / "tfds"), "The tfds data_dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "tfds's manual_dir, holding the dataset's "
                                  "files; default: data/<dataset> when it exists.")

log = logging.getLogger("mnist_jax")


@contextlib.contextmanager
def _deterministic_serialization(tfds):
  """tf.Example features serialized in key order, so that preparing twice gives the same bytes.

  tfds serializes each example's feature map in protobuf's default, unspecified order, which
  changes from process to process; the examples, their order and the PNG bytes do not.
  """
  serializer = tfds.core.example_serializer.ExampleSerializer  # tests/test_prepare_tfds.py pins it
  original = serializer.serialize_example
  serializer.serialize_example = (
      lambda self, example: self.get_tf_example(example).SerializeToString(deterministic=True))
  try:
    yield
  finally:
    serializer.serialize_example = original


def prepare(name: str, tfds_dir: pathlib.Path, manual_dir: Optional[pathlib.Path]) -> pathlib.Path:
  """Prepare `name` with tfds in the array_record format under `tfds_dir`; needs TensorFlow.

  With `manual_dir` (MNIST: the official IDX files of data/mnist, checked against their
  SHA256SUMS), tfds prepares from those files and never touches the network. The dataset is built
  in a temporary directory and moved into place, replacing any earlier copy; downloads and
  extracted files are deleted. Returns the prepared directory (<tfds_dir>/<name>/<version>).
  """
  sources.import_tensorflow(f"Preparing the tfds dataset {name!r} (tfds's download_and_prepare)")
  tfds = sources.import_tfds()
  tfds_dir.mkdir(parents=True, exist_ok=True)
  download_config = tfds.download.DownloadConfig()
  if manual_dir is not None and manual_dir.exists():
    sources.verify_checksums(manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir),
                                                   try_download_gcs=False)
  with tempfile.TemporaryDirectory(dir=tfds_dir, prefix=".prepare-") as tmp, \
       _deterministic_serialization(tfds):
    builder = tfds.builder(name, data_dir=tmp, file_format=sources.TFDS_FILE_FORMAT)
    builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"),
                                 download_config=download_config)
    target = tfds_dir / pathlib.Path(builder.data_dir).relative_to(tmp)
    if target.exists():
      shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(builder.data_dir, target)
  log.info("Prepared tfds %s in %s (%s).", name, relative(target), sources.TFDS_FILE_FORMAT)
  return target


def write_checksums(directory: pathlib.Path, prefix: str) -> list[str]:
  """Rewrite the lines of `directory/SHA256SUMS` for the files under `directory/prefix`."""
  sums = directory / "SHA256SUMS"
  kept = [line for line in (sums.read_text().splitlines() if sums.exists() else [])
          if line.strip() and not line.split()[1].startswith(prefix)]
  new = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(directory).as_posix()}"
         for p in sorted((directory / prefix).rglob("*")) if p.is_file()]
  sums.write_text("\n".join(sorted(kept + new, key=lambda line: line.split()[1])) + "\n")
  return new


def main(args: list[str]) -> int:
  del args
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  tfds_dir = pathlib.Path(_TFDS_DIR.value)
  manual_dir = pathlib.Path(_MANUAL_DIR.value or sources.dataset_dir(DATA_DIR, _DATASET.value))
  prepare(_DATASET.value, tfds_dir, manual_dir if manual_dir.exists() else None)
  sources.cache_path(tfds_dir, _DATASET.value).unlink(missing_ok=True)
  lines = write_checksums(tfds_dir, f"{sources.dataset_dir(tfds_dir, _DATASET.value).name}/")
  print(f"Wrote {tfds_dir / 'SHA256SUMS'}:")
  print("\n".join(lines))
  return 0


def run(argv: Sequence[str]) -> int:
  """The program, in this process -> exit code."""
  return cli.run(main, argv)


if __name__ == "__main__":
  cli.start(main)
