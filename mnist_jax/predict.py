"""Classify your own image, or a test image, with a trained run.

    python -m mnist_jax.predict --workdir=runs/t3 my_digit.png [--save=probs.png]
    python -m mnist_jax.predict --workdir=runs/t3 --index=123

Any PNG or JPEG of any size and colour works: it is made into a 28x28 digit the way MNIST was made
(white digit on black; its bounding box scaled to fit 20x20; placed so that its centre of mass is
at the centre), then preprocessed exactly as the run's training images were.
"""

import pathlib
from typing import Sequence

import numpy as np
from absl import flags

from mnist_jax import cli
from mnist_jax.errors import ConfigError, ImageError

_INDEX = flags.DEFINE_integer("index", None, "Classify this test image instead of a file.")
_SAVE = flags.DEFINE_string("save", None, "Also save the image and its probabilities as this PNG.")

MNIST_SIZE = 28
DIGIT_BOX = 20  # MNIST's digits fit a 20x20 box ...
CENTRE = 14.0  # ... whose centre of mass sits at pixel (14, 14) (measured on MNIST's test set)
INK_THRESHOLD = 0.1  # fraction of the strongest ink below which a pixel counts as background


def read_image(path) -> np.ndarray:
  """Any image file as a (H, W) float array in [0, 255]; transparent areas count as white paper."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      rgba = image.convert("RGBA")
  except FileNotFoundError:
    raise ImageError(f"{path}: no such file.") from None
  except IsADirectoryError:
    raise ImageError(f"{path} is a directory, not an image file.") from None
  except UnidentifiedImageError:
    raise ImageError(f"{path} is not an image file that Pillow can read (PNG, JPEG, ...).") from None
  except (OSError, ValueError) as e:  # truncated or damaged image data
    raise ImageError(f"{path} cannot be read as an image: {e}.") from None
  paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  return np.asarray(Image.alpha_composite(paper, rgba).convert("L"), np.float32)


def to_mnist(gray: np.ndarray) -> np.ndarray:
  """A grayscale image (H, W) of one digit -> (28, 28) uint8 in MNIST's style."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  x = np.asarray(gray, np.float32)
  border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
  background = float(np.median(border))
  if background > 127:  # dark ink on light paper: MNIST is white ink on black
    x, background = 255.0 - x, 255.0 - background
  ink = np.clip(x - background, 0, None)
  if ink.max() < 16:
    raise ImageError("no digit found: the image is blank (or has no contrast).")
  ink = ink * (255.0 / ink.max())  # the full 0..255 range, as MNIST's scans
  ink[ink < INK_THRESHOLD * 255] = 0  # paper texture, JPEG noise
  rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
  box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

  scale = DIGIT_BOX / max(box.shape)
  height, width = (max(1, round(s * scale)) for s in box.shape)
  digit = np.asarray(Image.fromarray(box.astype(np.uint8)).resize((width, height),
                                                                  Image.Resampling.LANCZOS),
                     np.float32)
  ys, xs = np.indices(digit.shape)
  mass = max(digit.sum(), 1e-6)
  top = int(np.clip(round(CENTRE - (ys * digit).sum() / mass), 0, MNIST_SIZE - height))
  left = int(np.clip(round(CENTRE - (xs * digit).sum() / mass), 0, MNIST_SIZE - width))
  canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), np.uint8)
  canvas[top:top + height, left:left + width] = np.clip(digit, 0, 255).astype(np.uint8)
  return canvas


def format_probabilities(probs: np.ndarray, label=None) -> str:
  """One line per class, the predicted one marked, then the predicted digit."""
  predicted = int(np.argmax(probs))
  lines = ["Probabilities:"]
  lines += [f"  {c}: {p:.4f}" + ("  <-" if c == predicted else "") for c, p in enumerate(probs)]
  lines.append(f"Predicted digit: {predicted} (probability {probs[predicted]:.4f})")
  if label is not None:
    lines.append(f"True label: {label}")
  return "\n".join(lines)


def main(paths: list[str]) -> int:
  from mnist_jax import figures, report  # pylint: disable=import-outside-toplevel
  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  if len(paths) + (_INDEX.value is not None) != 1:
    raise ConfigError("Give one image file, or --index=N for a test image, e.g. "
                      "python -m mnist_jax.predict --workdir=runs/t3 my_digit.png")
  workdir = cli.require_workdir()
  image = to_mnist(read_image(paths[0])) if paths else None  # a bad file fails before any loading
  run = workdir_lib.load_run(workdir)
  label = None
  if image is None:
    test = run.splits.test
    if test is None:
      raise ConfigError(f"--index picks a test image, but {workdir} keeps the test set out "
                        f"(config.data.use_test=False: it chooses on validation). Classify an "
                        f"image file instead, or use --index with a run that tests.")
    if not 0 <= _INDEX.value < len(test):
      raise ImageError(f"--index={_INDEX.value} is out of range: the test set has {len(test)} "
                       f"images (0 to {len(test) - 1}).")
    image, label = test.images[_INDEX.value], int(test.labels[_INDEX.value])
  probs = report.probabilities(run, image[None])[0]
  print(format_probabilities(probs, label))
  if _SAVE.value:
    figures.save_figure(figures.prediction_figure(image, probs, label), pathlib.Path(_SAVE.value))
    print(f"Saved {_SAVE.value}")
  return 0


def run(argv: Sequence[str]) -> int:
  """The program, in this process: `run(["predict", "--workdir=runs/t3", "x.png"])` -> exit code."""
  return cli.run(main, argv)


if __name__ == "__main__":
  cli.start(main)
