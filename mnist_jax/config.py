"""Experiment configs: loading one by name or path.

An experiment is a Python file in `experiments/` whose `get_config()` returns a `ConfigDict`
(the Flax-examples / big_vision convention). It starts from `default_config()` (defaults.py, every
field with its meaning; re-exported here) or from another experiment, via `load`, and changes only
what its tutorial or paper changes, so the file reads as the diff from a plain Keras setup.

The choices of a field (optimizers, activations, ...) are not listed here: each lives in one
registry beside the code that implements it (`optim.OPTIMIZERS`, `layers.ACTIVATIONS`, ...), and
`validation.validate` reads them, so adding a choice is one edit in one file.
"""

import importlib.util
import pathlib
import traceback
from typing import Optional

import ml_collections

from mnist_jax.defaults import default_config
from mnist_jax.errors import ConfigError
from mnist_jax.hyperparams import flatten
from mnist_jax.paths import EXPERIMENTS_DIR


def available() -> list[str]:
  """Names accepted by `--config=NAME`: the experiment files in experiments/."""
  return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve(name_or_path: str) -> pathlib.Path:
  """`adam_mlp` -> experiments/adam_mlp.py; a path to a .py file is taken as it is."""
  path = pathlib.Path(name_or_path)
  if path.suffix == ".py" or "/" in name_or_path:
    if path.is_file():
      return path
    raise ConfigError(f"Config file {name_or_path!r} does not exist. "
                      f"Give a path to a .py file with get_config(), or one of: "
                      f"{', '.join(available())}.")
  candidate = EXPERIMENTS_DIR / f"{name_or_path}.py"
  if candidate.is_file():
    return candidate
  raise ConfigError(f"Unknown config {name_or_path!r}. Available configs: "
                    f"{', '.join(available())}. A path to a .py file with get_config() works too.")


def load(name_or_path: str) -> ml_collections.ConfigDict:
  """The config of an experiment, by name or path, validated.

  Experiments that extend another one call this too (`load("adam_mlp_784")`), so a config file is
  always loaded by its path, never imported as a package module.
  """
  from mnist_jax import validation  # pylint: disable=import-outside-toplevel  # it imports jax
  config = load_file(resolve(name_or_path))
  validation.validate(config)
  return config


def load_file(path: pathlib.Path) -> ml_collections.ConfigDict:
  """Run a config file's `get_config()`; any failure becomes one ConfigError paragraph naming the
  file, the line and the Python error (a file can fail to parse, to import, or in get_config)."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"mnist_jax_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"Config file {path} has no get_config() function. Define one that "
                        f"returns a ConfigDict, e.g. starting from "
                        f"mnist_jax.config.default_config().")
    config = module.get_config()
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError(f"Config file {path} does not parse: {e.msg} at line {e.lineno}. Fix the "
                      f"file (or pick another --config).") from None
  except Exception as e:  # pylint: disable=broad-except  # the file's own code failed
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
             if pathlib.Path(frame.filename) == path]
    where = f" at line {lines[-1]}" if lines else ""
    raise ConfigError(f"Config file {path} failed{where}: {type(e).__name__}: {e}. Fix the file "
                      f"(or pick another --config).") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() in {path} returned a {type(config).__name__}, not an "
                      f"ml_collections.ConfigDict. Start from mnist_jax.config.default_config() "
                      f"and change its fields.")
  missing = sorted(set(flatten(default_config().to_dict())) - set(flatten(config.to_dict())))
  if missing:
    raise ConfigError(f"The config of {path} lacks the field(s) {', '.join(missing)}. Start from "
                      f"mnist_jax.config.default_config(), which has every field the trainer "
                      f"reads.")
  return config


def closest(config) -> Optional[tuple[str, dict]]:
  """(name, overrides): the experiment in experiments/ from which `config` differs in the fewest
  fields, and those fields' values in `config` (flattened keys); None when no experiment loads."""
  target = flatten(config.to_dict())
  best = None
  for name in available():
    try:  # a file that does not load here (being edited, or newer than this code) is no base
      base = flatten(load(name).to_dict())
    except ConfigError:
      continue
    overrides = {key: value for key, value in target.items() if base.get(key) != value}
    if best is None or len(overrides) < len(best[1]):
      best = (name, overrides)
  return best
