"""The figures of a run's report: pure functions from arrays to matplotlib `Figure`s.

Figures are made outside pyplot (no global backend state, rendered by Agg), and matplotlib is
imported only inside them, so importing this module costs training nothing.
"""

import math
import pathlib
from typing import Optional, Sequence

import numpy as np


def _figure(width: float, height: float):
  """A matplotlib Figure outside pyplot: no global backend state, PNGs rendered by Agg."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  return Figure(figsize=(width, height), layout="constrained")


def curves_figure(history: Sequence[dict]):
  """Loss and accuracy per epoch, training beside validation (Keras's History plot)."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  fig = _figure(10, 3.8)
  epochs = [r["epoch"] for r in history]
  for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
    ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", ms=3, label="training")
    if history and f"val_{metric}" in history[0]:
      ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", ms=3, label="validation")
    ax.set(title=metric.capitalize(), xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
  return fig


def sweep_figure(lines: dict, xlabel: str, ylabel: str, log_x: bool = False,
                 categories: Optional[Sequence[str]] = None):
  """A sweep's metric against a swept value: `lines` maps a label (None: no legend) to
  (xs, means, stds), drawn with error bars; `categories` names the x positions 0, 1, ... where
  the values are not numbers."""
  fig = _figure(6.4, 4.2)
  ax = fig.subplots()
  for label, (xs, means, stds) in lines.items():
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
  if log_x:
    ax.set_xscale("log")
  if categories is not None:
    ax.set_xticks(range(len(categories)), categories)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel.split(' ')[0]} against {xlabel}")
  ax.grid(alpha=0.3)
  if any(label is not None for label in lines):
    ax.legend(fontsize=8)
  return fig


def confusion_matrix_figure(counts: np.ndarray, split: str = "test"):
  """Counts of the `split` digits with labelled axes, each cell annotated (scikit-learn's
  ConfusionMatrixDisplay)."""
  fig = _figure(6.2, 5.4)
  ax = fig.subplots()
  image = ax.imshow(counts, cmap="Blues")
  fig.colorbar(image, ax=ax, shrink=0.85)
  n = counts.shape[0]
  for i in range(n):
    for j in range(n):
      ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
              color="white" if counts[i, j] > counts.max() / 2 else "black")
  ax.set(xticks=range(n), yticks=range(n), xlabel="Predicted label", ylabel="True label",
         title=f"Confusion matrix ({counts.sum():,} {split} digits, {np.trace(counts):,} correct)")
  return fig


def digit_grid_figure(images, captions: Sequence[str], columns: int = 10, title: str = "",
                      caption_colors: Optional[Sequence[str]] = None):
  """Digits tiled into one image, each captioned above: one Axes, so even 100 digits draw fast."""
  images = np.asarray(images)
  height, width = images.shape[1:] if len(images) else (28, 28)
  lines = max([str(c).count("\n") + 1 for c in captions] + [1])
  cell_w, cell_h = width + 4, height + 2 + 8 * lines  # a caption line is ~8 digit pixels tall
  rows = max(1, math.ceil(len(images) / columns))
  mosaic = np.full((rows * cell_h, columns * cell_w), 255, np.uint8)  # white paper
  for i, image in enumerate(images):
    top, left = (i // columns) * cell_h + cell_h - height, (i % columns) * cell_w + 2
    mosaic[top:top + height, left:left + width] = image
  inches_per_pixel = 1.1 / cell_w
  fig = _figure(columns * cell_w * inches_per_pixel,
                rows * cell_h * inches_per_pixel + (0.35 if title else 0))
  ax = fig.subplots()
  ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # the true pixels
  ax.axis("off")
  colors = caption_colors or ["black"] * len(images)
  for i, (caption, color) in enumerate(zip(captions, colors)):
    ax.text((i % columns) * cell_w + cell_w / 2, (i // columns) * cell_h + cell_h - height - 1,
            caption, ha="center", va="bottom", fontsize=8, color=color)
  if not len(images):
    ax.text(columns * cell_w / 2, cell_h / 2, "(none)", ha="center", va="center", fontsize=12)
  if title:
    fig.suptitle(title)
  return fig


def prediction_figure(image: np.ndarray, probs: np.ndarray, label: Optional[int] = None):
  """A digit beside a stem plot of its probabilities (T0), the predicted class marked."""
  fig = _figure(8, 3.2)
  ax_image, ax_probs = fig.subplots(1, 2, width_ratios=[1, 1.8])
  predicted = int(np.argmax(probs))
  ax_image.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  ax_image.set_title("input, as the model sees it" if label is None else f"true label {label}")
  ax_image.axis("off")
  classes = np.arange(len(probs))
  ax_probs.stem(classes, probs, basefmt=" ")
  ax_probs.plot([predicted], [probs[predicted]], "o", color="tab:red", ms=9)
  ax_probs.set(xticks=classes, ylim=(0, 1.05), xlabel="digit", ylabel="probability",
               title=f"predicted {predicted} (probability {probs[predicted]:.3f})")
  ax_probs.grid(alpha=0.3, axis="y")
  return fig


def save_figure(fig, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
