"""The splits an experiment trains, validates and tests on, as numpy arrays, and their preprocessing.

`load(config.data)` reads the dataset (`data_sources`: IDX files or tfds), cuts the training subset,
applies the tutorial's validation scheme and returns `Splits` of plain numpy arrays (uint8 images,
int32 labels). The whole of MNIST fits on any device, so training places each split on the device
once (`preprocess` runs there) and never runs a host input pipeline whose ordering or threading
could make two runs differ.

Sources (config.data.source, `SOURCES`): `idx` (numpy alone), `tfds` (tensorflow-datasets, reading
the shipped array_record files without TensorFlow), `auto` (tfds when installed, else idx).
"""

import dataclasses
import importlib.util
import pathlib
from typing import Optional

import numpy as np

from mnist_jax import data_sources as sources
from mnist_jax.data_sources import Split
from mnist_jax.errors import DataError
from mnist_jax.paths import DATA_DIR, relative


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Split
  val: Optional[Split]
  test: Optional[Split]  # None with config.data.use_test=False: the run cannot read it
  source: str  # which source produced the arrays, for the log


# The splits: their attribute names (in Splits, and Trainer's on the devices), which prefix
# summary.json's keys (test_accuracy, val_loss), and their names in words.
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def final_split(data_config) -> str:
  """The split a finished run is measured on: "test", or "val" for a run that keeps the test set
  out (config.data.use_test=False: it chooses on validation)."""
  return "test" if data_config.use_test else "val"


SOURCES = ("auto", "tfds", "idx")  # config.data.source


def choose_source(source: str) -> str:
  if source == "auto":
    return "tfds" if importlib.util.find_spec("tensorflow_datasets") else "idx"
  return source


def load_arrays(data_config) -> tuple[dict[str, Split], str]:
  """The dataset's train and test splits, and a description of the source they came from."""
  source = choose_source(data_config.source)
  name = data_config.name
  idx_dir = pathlib.Path(data_config.idx_dir or DATA_DIR / name)
  tfds_dir = pathlib.Path(data_config.tfds_dir or DATA_DIR / "tfds")
  if source == "idx":
    # Verifying and decoding the shipped files takes a fraction of a second; no cache needed.
    return sources.load_idx(idx_dir), "idx"
  # The shipped files (data/tfds/SHA256SUMS) are checked on every run, cached or not: a
  # missing or damaged one is reported with how to restore it, never prepared again silently.
  dataset_dir = sources.dataset_dir(tfds_dir, name)
  sources.verify_checksums(tfds_dir, prefix=f"{dataset_dir.name}/")
  cache = sources.cache_path(tfds_dir, name)
  splits = sources.read_cache(cache, sources.fingerprint(tfds_dir, name))
  if splits is not None:
    return splits, (f"tfds (arrays cached in {relative(cache)}, decoded from "
                    f"{relative(dataset_dir)})")
  how = "read"
  if not sources.tfds_builder(name, tfds_dir).is_prepared():
    sources.import_tensorflow(f"config.data.name={name!r} is not prepared in {tfds_dir} (only "
                              f"MNIST ships prepared), and preparing it (tfds's "
                              f"download_and_prepare)")
    from mnist_jax import prepare_tfds  # pylint: disable=import-outside-toplevel  # defines flags
    prepare_tfds.prepare(name, tfds_dir, idx_dir if idx_dir.exists() else None)
    how = "prepared now with TensorFlow, read"
  splits, description = sources.read_tfds(name, tfds_dir, how)
  sources.write_cache(cache, splits, sources.fingerprint(tfds_dir, name))
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
  raise DataError(f"Unknown validation scheme {scheme!r}: use one of {', '.join(VALIDATION_SCHEMES)}.")


def load(data_config) -> Splits:
  """The splits an experiment trains, validates and tests on, as numpy arrays."""
  arrays, source = load_arrays(data_config)
  train = arrays["train"]
  if data_config.train_subset:
    train = train.take(slice(0, data_config.train_subset))
  train, val, test = split_validation(train, arrays["test"], data_config)
  return Splits(train=train, val=val, test=test if data_config.use_test else None, source=source)


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
