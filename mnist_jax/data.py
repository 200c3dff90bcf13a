"""MNIST-like datasets as numpy arrays: loading (tfds or IDX), checksums, validation schemes, preprocessing.

Everything returned is a plain numpy array (uint8 images, int32 labels). The whole of MNIST fits on
any device, so training puts each split on the device once and never runs a host input pipeline
whose ordering or threading could make two runs differ.

Sources (config.data.source, `SOURCES`):
  * `tfds`: tensorflow-datasets. MNIST ships PREPARED by tfds in `data/tfds` (its data_dir layout,
    array_record files, SHA-256 verified), which `tfds.data_source` reads with numpy, array_record
    and pillow: no TensorFlow, the largest package of the install, which could also take the
    accelerator JAX needs. Only a dataset not prepared there is prepared with `download_and_prepare`, the one
    step of tfds that needs TensorFlow (requirements-tf.txt), from `data/<name>` as manual_dir when
    that exists (that is how `python -m mnist_jax.data --prepare_tfds` regenerates the shipped
    MNIST from the official IDX files in `data/mnist`).
  * `idx`: the IDX files read with numpy alone.
  * `auto`: tfds when tensorflow-datasets is installed, else idx.
tfds decodes its examples one at a time in Python (a PNG each, for MNIST), so the decoded arrays
are cached as `.npz` beside the tfds data (in `<tfds_dir>/mnist_jax_cache`, not shipped) and later
runs read that; the cache is rebuilt when the files it was decoded from change.

Longer than the other modules (about 500 lines) on purpose: both sources with their checksums and
one-paragraph errors, and the command that regenerates data/tfds, so every fact of the data's
formats lives in this one file.
"""

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from mnist_jax.config import REPO_ROOT

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


log = logging.getLogger("mnist_jax")


class DataError(RuntimeError):
  """Data that is missing or corrupt; the message names the file and how to restore it."""


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self):
    return len(self.labels)

  def take(self, indices) -> "Split":
    return Split(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Split
  val: Optional[Split]
  test: Split
  source: str  # which source produced the arrays, for the log


# ---------------------------------------------------------------------------------------------
# IDX (numpy only)


def read_idx(path: os.PathLike) -> np.ndarray:
  """An IDX file (gzipped or raw) as a uint8 array, with its header checked against its size."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise DataError(f"Missing data file {path}. {_restore_hint(path)}") from None
  except (OSError, EOFError) as e:  # gzip: truncated or not gzip at all
    raise DataError(f"Cannot read {path} ({e}): the file is truncated or corrupt. "
                    f"{_restore_hint(path)}") from None
  if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
    raise DataError(f"{path} is not an IDX file of unsigned bytes: its magic number is "
                    f"{raw[:4].hex() or 'missing'}, expected 00000801 (labels) or 00000803 "
                    f"(images). {_restore_hint(path)}")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(raw) - offset != int(np.prod(shape)):
    raise DataError(f"{path} declares shape {shape} ({int(np.prod(shape))} bytes) but holds "
                    f"{len(raw) - offset} bytes of data: the file is truncated or its header "
                    f"is wrong. {_restore_hint(path)}")
  return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _restore_hint(path: pathlib.Path) -> str:
  try:
    relative = path.resolve().relative_to(REPO_ROOT)
  except ValueError:
    return "Replace it with the official file."
  hint = f"Restore the shipped copy with `git checkout -- {relative}`"
  if relative.parts[:2] == ("data", "tfds"):
    hint += (", or regenerate data/tfds from data/mnist with `python -m mnist_jax.data "
             "--prepare_tfds` (needs TensorFlow: requirements-tf.txt)")
  return hint + "."


def verify_checksums(directory: pathlib.Path, prefix: str = "") -> None:
  """Check the files named in `directory/SHA256SUMS` (those whose name starts with `prefix`)."""
  sums = directory / "SHA256SUMS"
  if not sums.exists():
    log.info("No SHA256SUMS in %s: files not verified.", directory)
    return
  for line in sums.read_text().splitlines():
    if not line.strip():
      continue
    expected, name = line.split()
    if not name.startswith(prefix):
      continue
    path = directory / name
    if not path.exists():
      raise DataError(f"Missing data file {path}. {_restore_hint(path)}")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
      raise DataError(f"Checksum mismatch for {path}: SHA-256 is {actual}, expected {expected}. "
                      f"The file is corrupt or truncated. {_restore_hint(path)}")


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path:
  for candidate in (directory / f"{stem}.gz", directory / stem):
    if candidate.exists():
      return candidate
  raise DataError(f"Missing data file {directory / stem}(.gz). {_restore_hint(directory / stem)}")


def load_idx(directory: os.PathLike) -> dict[str, Split]:
  """Train and test splits from a directory of MNIST-format IDX files, verified when possible."""
  directory = pathlib.Path(directory)
  verify_checksums(directory)
  splits = {}
  for split, (image_stem, label_stem) in IDX_FILES.items():
    images = read_idx(_find_idx(directory, image_stem))
    labels = read_idx(_find_idx(directory, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise DataError(f"{directory}: {split} images {images.shape} and labels {labels.shape} "
                      f"do not match (expected (N, H, W) and (N,)).")
    splits[split] = Split(images, labels.astype(np.int32))
  return splits


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets

TFDS_FILE_FORMAT = "array_record"  # random access, readable without TensorFlow (tfds.data_source)


def _relative(path) -> str:
  path = pathlib.Path(path)
  try:
    return str(path.resolve().relative_to(REPO_ROOT))
  except ValueError:
    return str(path)


def _dataset_dir(tfds_dir: pathlib.Path, name: str) -> pathlib.Path:
  """Where tfds keeps every config and version of `name` ('mnist', 'mnist:3.0.1', 'a/config')."""
  return tfds_dir / name.split("/")[0].split(":")[0]


def _import_tfds():
  if importlib.util.find_spec("tensorflow_datasets") is None:
    raise DataError("config.data.source='tfds' but tensorflow-datasets is not installed. "
                    "Install requirements.txt, or use --config.data.source=idx (numpy only).")
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def _import_tensorflow(why: str):
  """TensorFlow, kept off the accelerator; a DataError saying what to install when it is missing."""
  if importlib.util.find_spec("tensorflow") is None:
    raise DataError(
        f"{why} needs TensorFlow, which is not installed (requirements.txt leaves it out: reading "
        f"a prepared dataset, such as the MNIST shipped in data/tfds, does not need it). Install "
        f"it with `.venv/bin/pip install -r requirements-tf.txt` and run again (the dataset is "
        f"prepared once, then read without TensorFlow), or use --config.data.source=idx with the "
        f"dataset's IDX files in data/<name> (numpy only).")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take the accelerator from JAX
  return tf


@contextlib.contextmanager
def _deterministic_serialization(tfds):
  """tf.Example features serialized in key order, so that preparing twice gives the same bytes.

  tfds serializes each example's feature map in protobuf's default, unspecified order, which
  changes from process to process; the examples, their order and the PNG bytes do not.
  """
  serializer = getattr(getattr(tfds.core, "example_serializer", None), "ExampleSerializer", None)
  if serializer is None or not hasattr(serializer, "get_tf_example"):
    yield  # another tfds version: the data is the same, only its bytes may vary
    return
  original = serializer.serialize_example
  serializer.serialize_example = (
      lambda self, example: self.get_tf_example(example).SerializeToString(deterministic=True))
  try:
    yield
  finally:
    serializer.serialize_example = original


def prepare_tfds(name: str, tfds_dir: pathlib.Path, manual_dir: Optional[pathlib.Path]) -> pathlib.Path:
  """Prepare `name` with tfds in the array_record format under `tfds_dir`; needs TensorFlow.

  With `manual_dir` (MNIST: the official IDX files of data/mnist, checked against their
  SHA256SUMS), tfds prepares from those files and never touches the network. The dataset is built
  in a temporary directory and moved into place, replacing any earlier copy; downloads and
  extracted files are deleted. Returns the prepared directory (<tfds_dir>/<name>/<version>).
  """
  _import_tensorflow(f"Preparing the tfds dataset {name!r} (tfds's download_and_prepare)")
  tfds = _import_tfds()
  tfds_dir.mkdir(parents=True, exist_ok=True)
  download_config = tfds.download.DownloadConfig()
  if manual_dir is not None and manual_dir.exists():
    verify_checksums(manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir),
                                                   try_download_gcs=False)
  with tempfile.TemporaryDirectory(dir=tfds_dir, prefix=".prepare-") as tmp, \
       _deterministic_serialization(tfds):
    builder = tfds.builder(name, data_dir=tmp, file_format=TFDS_FILE_FORMAT)
    builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"),
                                 download_config=download_config)
    relative = pathlib.Path(builder.data_dir).relative_to(tmp)
    target = tfds_dir / relative
    if target.exists():
      shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(builder.data_dir, target)
  log.info("Prepared tfds %s in %s (%s).", name, _relative(target), TFDS_FILE_FORMAT)
  return target


def _opencv_advice(record: logging.LogRecord) -> bool:
  return "OpenCV is not installed" not in record.getMessage()


def _decode(data_source) -> Split:
  """All examples of a tfds data source as arrays. tfds decodes each example (a PNG) in Python,
  with PIL (its advice to install OpenCV for speed is dropped: the decode happens once)."""
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_opencv_advice)
  try:
    examples = data_source.__getitems__(list(range(len(data_source))))  # one batched read
  finally:
    absl_logger.removeFilter(_opencv_advice)
  return _as_split(np.stack([e["image"] for e in examples]), [e["label"] for e in examples])


def _as_split(images, labels) -> Split:
  """tfds's (N, H, W, 1) images and labels as a Split of (N, H, W) uint8 and int32."""
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  return Split(np.ascontiguousarray(images, np.uint8), np.asarray(labels, np.int32))


def _read_with_tensorflow(tfds, builder, splits) -> dict[str, Split]:
  """A dataset prepared earlier in tfds's default tfrecord format: only TensorFlow reads it."""
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  _import_tensorflow(f"Reading {builder.data_dir}, prepared in the {file_format} "
                     f"format (delete it to have it prepared again as {TFDS_FILE_FORMAT}),")
  arrays = {split: tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            for split in splits}
  return {split: _as_split(a["image"], a["label"]) for split, a in arrays.items()}


def _load_tfds(name: str, tfds_dir: pathlib.Path, manual_dir: Optional[pathlib.Path],
               splits=("train", "test")) -> tuple[dict[str, Split], str]:
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=str(tfds_dir))
  except (tfds.core.DatasetNotFoundError, ValueError) as e:  # unknown, or not a name at all
    raise DataError(f"config.data.name={name!r} is not a tensorflow-datasets dataset "
                    f"({str(e).splitlines()[0]}). Use mnist, or a name from the tfds catalog "
                    f"(https://www.tensorflow.org/datasets/catalog).") from None
  how = "read"
  if not builder.is_prepared():
    _import_tensorflow(f"config.data.name={name!r} is not prepared in {tfds_dir} (only MNIST "
                       f"ships prepared), and preparing it (tfds's download_and_prepare)")
    prepare_tfds(name, tfds_dir, manual_dir)
    builder = tfds.builder(name, data_dir=str(tfds_dir))
    how = "prepared now with TensorFlow, read"
  start = time.perf_counter()
  try:
    sources = {split: tfds.data_source(name, split=split, data_dir=str(tfds_dir), download=False)
               for split in splits}
  except NotImplementedError:  # not a random-access format
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    return _read_with_tensorflow(tfds, builder, splits), f"tfds ({file_format} files in " \
        f"{_relative(builder.data_dir)}, read with TensorFlow)"
  arrays = {split: _decode(source) for split, source in sources.items()}
  log.info("Decoded %s with tensorflow-datasets in %.1f s.", name, time.perf_counter() - start)
  return arrays, f"tfds ({TFDS_FILE_FORMAT} files in {_relative(builder.data_dir)}, {how} " \
      f"with tfds.data_source)"


def load_tfds(name: str, data_dir: pathlib.Path, manual_dir: Optional[pathlib.Path]) -> dict[str, Split]:
  """Train and test splits via tfds, prepared first (with TensorFlow) if `data_dir` lacks them."""
  return _load_tfds(name, pathlib.Path(data_dir), manual_dir)[0]


# ---------------------------------------------------------------------------------------------
# Cache, source choice, validation schemes


def _cache_path(tfds_dir: pathlib.Path, name: str) -> pathlib.Path:
  return tfds_dir / "mnist_jax_cache" / f"{name.replace('/', '_').replace(':', '_')}.npz"


def _fingerprint(tfds_dir: pathlib.Path, name: str) -> str:
  """Names, sizes and modification times of the tfds files of `name`: they change when they do."""
  directory = _dataset_dir(tfds_dir, name)
  entries = sorted(f"{p.relative_to(directory)} {p.stat().st_size} {p.stat().st_mtime_ns}"
                   for p in directory.rglob("*") if p.is_file())
  return hashlib.sha256("\n".join(entries).encode()).hexdigest() if entries else ""


def _read_cache(path: pathlib.Path, fingerprint: str) -> Optional[dict[str, Split]]:
  if not path.exists() or not fingerprint:
    return None
  try:  # zip CRCs catch a damaged file; a bad cache is simply rebuilt
    with np.load(path) as f:
      if str(f["fingerprint"]) != fingerprint:
        log.info("Cache %s was decoded from other tfds files; rebuilding it.", _relative(path))
        return None
      return {s: Split(f[f"{s}_images"], f[f"{s}_labels"]) for s in ("train", "test")}
  except Exception as e:  # pylint: disable=broad-except
    log.warning("Ignoring unreadable cache %s (%s); rebuilding it.", path, e)
    return None


def _write_cache(path: pathlib.Path, splits: dict[str, Split], fingerprint: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, fingerprint=np.array(fingerprint),
           **{f"{s}_{k}": getattr(v, k) for s, v in splits.items() for k in ("images", "labels")})
  os.replace(tmp, path)  # atomic: a crash leaves no half-written cache


SOURCES = ("auto", "tfds", "idx")  # config.data.source


def choose_source(source: str) -> str:
  if source == "auto":
    return "tfds" if importlib.util.find_spec("tensorflow_datasets") else "idx"
  return source


def load_arrays(data_config) -> tuple[dict[str, Split], str]:
  """The dataset's train and test splits, and a description of the source they came from."""
  source = choose_source(data_config.source)
  name = data_config.name
  idx_dir = pathlib.Path(data_config.idx_dir or REPO_ROOT / "data" / name)
  tfds_dir = pathlib.Path(data_config.tfds_dir or REPO_ROOT / "data" / "tfds")
  if source == "idx":
    # Verifying and decoding the shipped files takes a fraction of a second; no cache needed.
    return load_idx(idx_dir), "idx"
  # The shipped files (data/tfds/SHA256SUMS) are checked on every run, cached or not: a
  # missing or damaged one is reported with how to restore it, never prepared again silently.
  verify_checksums(tfds_dir, prefix=f"{_dataset_dir(tfds_dir, name).name}/")
  cache = _cache_path(tfds_dir, name)
  splits = _read_cache(cache, _fingerprint(tfds_dir, name))
  if splits is not None:
    return splits, f"tfds (arrays cached in {_relative(cache)}, decoded from " \
        f"{_relative(_dataset_dir(tfds_dir, name))})"
  splits, description = _load_tfds(name, tfds_dir, idx_dir if idx_dir.exists() else None)
  _write_cache(cache, splits, _fingerprint(tfds_dir, name))
  return splits, description


# config.data.validation: none | train_tail (Keras's validation_split: the LAST fraction of the
# training set) | test_halves (the test set split in two with a seed, like train_test_split) | test
VALIDATION_SCHEMES = ("none", "train_tail", "test_halves", "test")


def split_validation(train: Split, test: Split, data_config) -> tuple[Split, Optional[Split], Split]:
  """Apply a tutorial's validation scheme: returns (train, val, test)."""
  scheme = data_config.validation
  if scheme == "none":
    return train, None, test
  if scheme == "train_tail":
    # Keras validation_split: the LAST fraction of the arrays, taken before any shuffling.
    num_val = int(len(train) * data_config.validation_fraction)
    if num_val == 0:
      raise DataError(f"validation_fraction={data_config.validation_fraction} of "
                      f"{len(train)} training examples leaves no validation examples.")
    return train.take(slice(0, len(train) - num_val)), train.take(slice(len(train) - num_val, None)), test
  if scheme == "test_halves":
    # sklearn train_test_split(test, test_size=0.5, random_state=seed): its first part is
    # permutation[n_test:], its second (our test half) permutation[:n_test].
    permutation = np.random.RandomState(data_config.validation_seed).permutation(len(test))
    num_test = int(np.ceil(0.5 * len(test)))
    return train, test.take(permutation[num_test:]), test.take(permutation[:num_test])
  if scheme == "test":
    return train, test, test
  raise DataError(f"Unknown validation scheme {scheme!r}.")


def load(data_config) -> Splits:
  """The splits an experiment trains, validates and tests on, as numpy arrays."""
  arrays, source = load_arrays(data_config)
  train = arrays["train"]
  if data_config.train_subset:
    train = train.take(slice(0, data_config.train_subset))
  train, val, test = split_validation(train, arrays["test"], data_config)
  return Splits(train=train, val=val, test=test, source=source)


def _l2_rows(x):
  """keras.utils.normalize(x): each row of each image (last axis) to unit L2 norm; zero rows stay 0."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.where(norm == 0, 1.0, norm)


# config.data.preprocess -> float32 images -> float32 images, as the tutorials prepared them.
PREPROCESSORS = {"scale": lambda x: x / 255.0, "l2_rows": _l2_rows, "raw": lambda x: x}


def preprocess(images, kind: str):
  """uint8 images (N, H, W) -> float32 (N, H*W), as the tutorial prepared them.

  Works on numpy or jax arrays; training applies it once, on the device.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if kind not in PREPROCESSORS:
    raise ValueError(f"Unknown preprocessing {kind!r}: use one of {', '.join(PREPROCESSORS)}.")
  x = PREPROCESSORS[kind](jnp.asarray(images).astype(jnp.float32))
  return x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# Regenerating the shipped tfds data: python -m mnist_jax.data --prepare_tfds


def write_checksums(directory: pathlib.Path, prefix: str) -> list[str]:
  """Rewrite the lines of `directory/SHA256SUMS` for the files under `directory/prefix`."""
  sums = directory / "SHA256SUMS"
  kept = [line for line in (sums.read_text().splitlines() if sums.exists() else [])
          if line.strip() and not line.split()[1].startswith(prefix)]
  new = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(directory).as_posix()}"
         for p in sorted((directory / prefix).rglob("*")) if p.is_file()]
  sums.write_text("\n".join(sorted(kept + new, key=lambda line: line.split()[1])) + "\n")
  return new


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mnist_jax.data",
      description="Prepare a dataset with tensorflow-datasets in the array_record format (needs "
                  "TensorFlow: requirements-tf.txt) and record its SHA-256 sums; with no other "
                  "argument, regenerates the shipped data/tfds/mnist from the IDX files in "
                  "data/mnist, offline.")
  parser.add_argument("--prepare_tfds", action="store_true", help="prepare the dataset (required)")
  parser.add_argument("--name", default="mnist", help="tfds dataset name (default: mnist)")
  parser.add_argument("--tfds_dir", default=str(REPO_ROOT / "data" / "tfds"),
                      help="tfds data_dir (default: the repo's data/tfds)")
  parser.add_argument("--manual_dir", default="",
                      help="tfds manual_dir (default: the repo's data/<name>, if it exists)")
  args = parser.parse_args(argv)
  if not args.prepare_tfds:
    parser.print_help()
    return 2
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  tfds_dir = pathlib.Path(args.tfds_dir)
  manual_dir = pathlib.Path(args.manual_dir or _dataset_dir(REPO_ROOT / "data", args.name))
  try:
    prepare_tfds(args.name, tfds_dir, manual_dir if manual_dir.exists() else None)
  except DataError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 1
  cache = _cache_path(tfds_dir, args.name)
  cache.unlink(missing_ok=True)
  lines = write_checksums(tfds_dir, f"{_dataset_dir(tfds_dir, args.name).name}/")
  print(f"Wrote {tfds_dir / 'SHA256SUMS'}:")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())

