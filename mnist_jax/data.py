"""MNIST-like datasets as numpy arrays: loading (tfds or IDX), checksums, validation schemes, preprocessing.

Everything returned is a plain numpy array (uint8 images, int32 labels). The whole of MNIST fits on
any device, so training puts each split on the device once and never runs a host input pipeline
whose ordering or threading could make two runs differ.

Sources:
  * `tfds`: tensorflow-datasets, prepared OFFLINE from the IDX files shipped in `data/mnist`
    (tfds's manual_dir) for MNIST; other datasets download as tfds normally does.
  * `idx`: the IDX files read with numpy alone, for machines without TensorFlow.
  * `auto`: tfds when it is installed, else idx.
Once read, a split is cached as `.npz` beside the tfds data, so later runs skip TensorFlow entirely.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import os
import pathlib
from typing import Optional

import numpy as np

from mnist_jax.config import REPO_ROOT

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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
    return f"Restore the shipped copy with `git checkout -- {relative}`."
  except ValueError:
    return "Replace it with the official file."


def verify_checksums(directory: pathlib.Path) -> None:
  """Check the files named in `directory/SHA256SUMS`, if that file exists."""
  sums = directory / "SHA256SUMS"
  if not sums.exists():
    logging.info("No SHA256SUMS in %s: files not verified.", directory)
    return
  for line in sums.read_text().splitlines():
    if not line.strip():
      continue
    expected, name = line.split()
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


def load_tfds(name: str, data_dir: pathlib.Path, manual_dir: Optional[pathlib.Path]) -> dict[str, Split]:
  """Train and test splits via tfds; MNIST is prepared from `manual_dir` without any network."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take the accelerator from JAX
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = tfds.builder(name, data_dir=str(data_dir))
  download_config = None
  if manual_dir is not None and manual_dir.exists():
    verify_checksums(manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  builder.download_and_prepare(download_config=download_config)
  splits = {}
  for split in ("train", "test"):
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images = arrays["image"]
    if images.ndim == 4 and images.shape[-1] == 1:
      images = images[..., 0]
    splits[split] = Split(np.ascontiguousarray(images, np.uint8), arrays["label"].astype(np.int32))
  return splits


# ---------------------------------------------------------------------------------------------
# Cache, source choice, validation schemes


def _cache_path(tfds_dir: pathlib.Path, name: str, source: str) -> pathlib.Path:
  return tfds_dir / "mnist_jax_cache" / f"{name}-{source}.npz"


def _read_cache(path: pathlib.Path) -> Optional[dict[str, Split]]:
  if not path.exists():
    return None
  try:  # zip CRCs catch a damaged file; a bad cache is simply rebuilt
    with np.load(path) as f:
      return {s: Split(f[f"{s}_images"], f[f"{s}_labels"]) for s in ("train", "test")}
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Ignoring unreadable cache %s (%s); rebuilding it.", path, e)
    return None


def _write_cache(path: pathlib.Path, splits: dict[str, Split]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, **{f"{s}_{k}": getattr(v, k) for s, v in splits.items() for k in ("images", "labels")})
  os.replace(tmp, path)  # atomic: a crash leaves no half-written cache


def choose_source(source: str) -> str:
  if source == "auto":
    return "tfds" if importlib.util.find_spec("tensorflow_datasets") else "idx"
  return source


def load_arrays(data_config) -> tuple[dict[str, Split], str]:
  """The dataset's train and test splits, and the name of the source they came from."""
  source = choose_source(data_config.source)
  idx_dir = pathlib.Path(data_config.idx_dir or REPO_ROOT / "data" / data_config.name)
  tfds_dir = pathlib.Path(data_config.tfds_dir or REPO_ROOT / "data" / "tfds")
  if source == "idx":
    # Verifying and decoding the shipped files takes a fraction of a second; no cache needed.
    return load_idx(idx_dir), "idx"
  cache = _cache_path(tfds_dir, data_config.name, source)
  splits = _read_cache(cache)
  if splits is not None:
    return splits, f"tfds (cached arrays in {cache})"
  if importlib.util.find_spec("tensorflow_datasets") is None:
    raise DataError("config.data.source='tfds' but tensorflow-datasets is not installed. "
                    "Install requirements.txt, or use --config.data.source=idx (numpy only).")
  splits = load_tfds(data_config.name, tfds_dir, idx_dir if idx_dir.exists() else None)
  _write_cache(cache, splits)
  return splits, "tfds"


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


def preprocess(images, kind: str):
  """uint8 images (N, H, W) -> float32 (N, H*W), as the tutorial prepared them.

  Works on numpy or jax arrays; training applies it once, on the device.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(images).astype(jnp.float32)
  if kind == "scale":
    x = x / 255.0
  elif kind == "l2_rows":
    # keras.utils.normalize(x): each row of each image (last axis) to unit L2 norm; zero rows stay 0.
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    x = x / jnp.where(norm == 0, 1.0, norm)
  elif kind != "raw":
    raise ValueError(f"Unknown preprocessing {kind!r}: use scale, l2_rows or raw.")
  return x.reshape(x.shape[0], -1)
