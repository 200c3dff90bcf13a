"""Reading datasets from disk: IDX files (numpy alone) and tensorflow-datasets (no TensorFlow).

  * IDX, the official MNIST format: `load_idx` reads the four files of a directory, each header
    checked against the file's size, the files against their SHA256SUMS.
  * tfds: MNIST ships prepared by tfds in `data/tfds` (array_record files, SHA-256 verified), which
    `tfds.data_source` reads with numpy, array_record and pillow. tfds decodes its examples one at
    a time in Python (a PNG each), so the decoded arrays are cached as `.npz` beside the tfds data
    (`<tfds_dir>/mnist_jax_cache`, not shipped), rebuilt when the files they came from change.

Every failure is a DataError naming the file and how to restore it. Preparing a dataset that is
not prepared needs TensorFlow: that is `prepare_tfds.py`.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import os
import pathlib
import time
from typing import Optional

import numpy as np

from mnist_jax.errors import DataError
from mnist_jax.paths import REPO_ROOT, relative

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

log = logging.getLogger("mnist_jax")


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # (N, H, W) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self):
    return len(self.labels)

  def take(self, indices) -> "Split":
    return Split(self.images[indices], self.labels[indices])



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
    in_repo = path.resolve().relative_to(REPO_ROOT)
  except ValueError:
    return "Replace it with the official file."
  hint = f"Restore the shipped copy with `git checkout -- {in_repo}`"
  if in_repo.parts[:2] == ("data", "tfds"):
    hint += (", or regenerate data/tfds from data/mnist with `python -m mnist_jax.prepare_tfds` "
             "(needs TensorFlow: requirements-tf.txt)")
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
# tensorflow-datasets, read without TensorFlow


TFDS_FILE_FORMAT = "array_record"  # random access, readable without TensorFlow (tfds.data_source)


def dataset_dir(tfds_dir: pathlib.Path, name: str) -> pathlib.Path:
  """Where tfds keeps every config and version of `name` ('mnist', 'mnist:3.0.1', 'a/config')."""
  return tfds_dir / name.split("/")[0].split(":")[0]


def import_tfds():
  if importlib.util.find_spec("tensorflow_datasets") is None:
    raise DataError("config.data.source='tfds' but tensorflow-datasets is not installed. "
                    "Install requirements.txt, or use --config.data.source=idx (numpy only).")
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def import_tensorflow(why: str):
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
  import_tensorflow(f"Reading {builder.data_dir}, prepared in the {file_format} "
                     f"format (delete it to have it prepared again as {TFDS_FILE_FORMAT}),")
  arrays = {split: tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            for split in splits}
  return {split: _as_split(a["image"], a["label"]) for split, a in arrays.items()}


def tfds_builder(name: str, tfds_dir: pathlib.Path):
  """tfds's builder of `name` in `tfds_dir`; a DataError for a name tfds does not know."""
  tfds = import_tfds()
  try:
    return tfds.builder(name, data_dir=str(tfds_dir))
  except (tfds.core.DatasetNotFoundError, ValueError) as e:  # unknown, or not a name at all
    raise DataError(f"config.data.name={name!r} is not a tensorflow-datasets dataset "
                    f"({str(e).splitlines()[0]}). Use mnist, or a name from the tfds catalog "
                    f"(https://www.tensorflow.org/datasets/catalog).") from None


def read_tfds(name: str, tfds_dir: pathlib.Path, how: str = "read",
              splits=("train", "test")) -> tuple[dict[str, Split], str]:
  """The splits of `name`, prepared in `tfds_dir`, and a description of how they were read."""
  tfds = import_tfds()
  builder = tfds_builder(name, tfds_dir)
  start = time.perf_counter()
  try:
    sources = {split: tfds.data_source(name, split=split, data_dir=str(tfds_dir), download=False)
               for split in splits}
  except NotImplementedError:  # not a random-access format
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    return _read_with_tensorflow(tfds, builder, splits), f"tfds ({file_format} files in " \
        f"{relative(builder.data_dir)}, read with TensorFlow)"
  arrays = {split: _decode(source) for split, source in sources.items()}
  log.info("Decoded %s with tensorflow-datasets in %.1f s.", name, time.perf_counter() - start)
  return arrays, f"tfds ({TFDS_FILE_FORMAT} files in {relative(builder.data_dir)}, {how} " \
      f"with tfds.data_source)"


# ---------------------------------------------------------------------------------------------
# The decoded arrays' cache


def cache_path(tfds_dir: pathlib.Path, name: str) -> pathlib.Path:
  return tfds_dir / "mnist_jax_cache" / f"{name.replace('/', '_').replace(':', '_')}.npz"


def fingerprint(tfds_dir: pathlib.Path, name: str) -> str:
  """Names, sizes and modification times of the tfds files of `name`: they change when they do."""
  directory = dataset_dir(tfds_dir, name)
  entries = sorted(f"{p.relative_to(directory)} {p.stat().st_size} {p.stat().st_mtime_ns}"
                   for p in directory.rglob("*") if p.is_file())
  return hashlib.sha256("\n".join(entries).encode()).hexdigest() if entries else ""


def read_cache(path: pathlib.Path, expected: str) -> Optional[dict[str, Split]]:
  """The cached splits, if `path` holds arrays decoded from files of fingerprint `expected`."""
  if not path.exists() or not expected:
    return None
  try:  # zip CRCs catch a damaged file; a bad cache is simply rebuilt
    with np.load(path) as f:
      if str(f["fingerprint"]) != expected:
        log.info("Cache %s was decoded from other tfds files; rebuilding it.", relative(path))
        return None
      return {s: Split(f[f"{s}_images"], f[f"{s}_labels"]) for s in ("train", "test")}
  except Exception as e:  # pylint: disable=broad-except
    log.warning("Ignoring unreadable cache %s (%s); rebuilding it.", path, e)
    return None


def write_cache(path: pathlib.Path, splits: dict[str, Split], files_fingerprint: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, fingerprint=np.array(files_fingerprint),
           **{f"{s}_{k}": getattr(v, k) for s, v in splits.items() for k in ("images", "labels")})
  os.replace(tmp, path)  # atomic: a crash leaves no half-written cache
