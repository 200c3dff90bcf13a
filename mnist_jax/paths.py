"""Where the repository keeps what a run reads, and how a file is replaced safely. A leaf: it
imports nothing of the package."""

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = REPO_ROOT / "experiments"  # --config=NAME is experiments/NAME.py
RESULTS_DIR = EXPERIMENTS_DIR / "results"  # the committed runs behind experiments/RESULTS.md
DATA_DIR = REPO_ROOT / "data"  # data/<name> (IDX files), data/tfds (the tfds data_dir)


def relative(path) -> str:
  """`path` relative to the repository when inside it (shorter log lines), else as given."""
  path = pathlib.Path(path)
  try:
    return str(path.resolve().relative_to(REPO_ROOT))
  except ValueError:
    return str(path)


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Write a temporary file, then rename it: a kill leaves the old file or the new, never half."""
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)
