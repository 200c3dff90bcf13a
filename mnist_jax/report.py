"""The report of a run: what the tutorials showed, rebuilt from its workdir alone.

    python -m mnist_jax.report --workdir=runs/t3

reads config.json, metrics.jsonl, summary.json and the last checkpoint, and (re)writes:

    report.md                       all of it on one page, and the command that reproduces the run
    figures/curves.png              loss and accuracy per epoch, training and validation
    figures/samples.png             40 random training digits (5x8) with their labels
    figures/confusion_matrix.png    test-set counts, true label x predicted label
    figures/misclassified.png       the most confident mistakes, true and predicted labels
    figures/first_test_digits.png   the first test digits with their predictions
    figures/prediction.png          a random test digit beside its 10 probabilities
    classification_report.txt/json  precision, recall, f1, support per class (scikit-learn's)
    confusion_matrix.csv            the counts (rows: true label)
    misclassified.json              every mistake, most confident first
    tensorboard/                    per-epoch scalars for `tensorboard --logdir` (no TensorFlow)

`load_run` restores a run for any tool (predict.py uses it). The metrics are numpy and the
figures matplotlib `Figure`s, both pure functions of arrays; `build` does the file writing.
matplotlib and tensorboardX are imported only when a figure or event file is made, so importing
this module costs training nothing.
"""

import dataclasses
import json
import math
import pathlib
import shlex
import shutil
import sys
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from mnist_jax import checkpoints, data, train
from mnist_jax import config as config_lib

FIGURES = {
    "curves.png": "loss and accuracy per epoch",
    "samples.png": "random training digits with their labels",
    "confusion_matrix.png": "confusion matrix of the test set",
    "misclassified.png": "misclassified test digits, most confident first",
    "first_test_digits.png": "the first test digits with their predictions",
    "prediction.png": "a test digit beside its 10 probabilities",
}
MAX_MISCLASSIFIED_SHOWN = 60
NUM_SAMPLES, SAMPLE_COLUMNS = 40, 8  # T3's 5x8 grid
NUM_FIRST_TEST = 10


class RunError(RuntimeError):
  """A workdir that holds no usable run; the message says what is missing."""


# ---------------------------------------------------------------------------------------------
# Restoring a run


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run, restored from its workdir."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  state: train.TrainState
  epoch: int  # epochs completed by the restored checkpoint
  splits: data.Splits
  history: list[dict]  # metrics.jsonl, one record per epoch
  summary: dict  # summary.json; {} for a run that has not finished


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """config.json as a ConfigDict: lists back to tuples, fields added since at their defaults."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise RunError(f"{workdir} is not the workdir of a run (it has no config.json). Train one "
                   f"with `python -m mnist_jax.main --config=NAME --workdir={workdir}`.")
  return ml_collections.ConfigDict(_merge(config_lib.default_config().to_dict(),
                                          json.loads(path.read_text())))


def _merge(defaults: dict, saved: dict) -> dict:
  merged = dict(defaults)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = _merge(merged[key], value)
    else:
      merged[key] = tuple(value) if isinstance(value, list) else value
  return merged


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run(workdir, replica: int = 0) -> Run:
  """Config, data splits and the tested parameters of the run in `workdir`.

  The tested parameters are the last epoch's, or the best epoch's when early stopping restored
  them; of a run of several replicas (seeds, sweep), those of replica `replica`.
  """
  workdir = pathlib.Path(workdir)
  config = load_config(workdir)
  splits = data.load(config.data)
  # The template is the state train_and_evaluate built (input size and steps per epoch, which
  # shape learning-rate schedules, come from the data), traced for its shapes only: compiling
  # the initialisation would take seconds for values the checkpoint replaces.
  input_dim = int(np.prod(splits.train.images.shape[1:]))
  steps_per_epoch = math.ceil(len(splits.train) / config.train.batch_size)
  num_replicas = len(train.replica_settings(config))
  if not 0 <= replica < num_replicas:
    raise RunError(f"Replica {replica} does not exist: the run has {num_replicas}.")
  template = jax.eval_shape(lambda: train.init_run(config, input_dim, steps_per_epoch)[0])
  summary_path = workdir / "summary.json"
  summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
  directory, epoch = workdir / "checkpoints", None
  if summary.get("tested_epoch", summary.get("epochs")) != summary.get("epochs"):
    directory, epoch = workdir / "checkpoints_best", summary["tested_epoch"]  # restore_best
  if not directory.is_dir():
    raise RunError(f"{workdir} has no {directory.name}/ directory: the run saved no parameters yet.")
  checkpointer = checkpoints.Checkpointer(directory, config.train.keep_checkpoints)
  try:
    restored = checkpointer.restore(template, epoch=epoch)
  finally:
    checkpointer.close()
  if restored is None:
    raise RunError(f"No usable checkpoint in {directory}: train the run (again) to make one.")
  state, epoch = restored
  if num_replicas > 1:
    state = jax.tree.map(lambda x: x[replica], state)
  history = [r for r in _read_jsonl(workdir / "metrics.jsonl") if r["epoch"] <= epoch]
  return Run(workdir, config, state, epoch, splits, history, summary)


def probabilities(run: Run, images: np.ndarray) -> np.ndarray:
  """Softmax probabilities (N, classes) for uint8 images (N, H, W), preprocessed as in training."""
  x = data.preprocess(images, run.config.data.preprocess)
  return np.asarray(train.predict_probabilities(run.state, x, run.config.train.eval_batch_size))


# ---------------------------------------------------------------------------------------------
# Metrics (numpy; the same numbers as scikit-learn's)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """counts[i, j]: examples of true class i predicted as j (scikit-learn's orientation)."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes)


def _divide(numerator, denominator):
  """Elementwise division with 0/0 = 0 (scikit-learn's zero_division default, minus its warning)."""
  return np.divide(numerator, denominator, out=np.zeros(len(numerator)),
                   where=np.asarray(denominator) > 0)


def classification_report(labels, predictions, num_classes: int) -> dict:
  """scikit-learn's `classification_report(..., labels=range(num_classes), output_dict=True)`."""
  counts = confusion_matrix(labels, predictions, num_classes)
  true_positives = np.diag(counts).astype(np.float64)
  support = counts.sum(axis=1)
  precision = _divide(true_positives, counts.sum(axis=0))
  recall = _divide(true_positives, support)
  f1 = _divide(2 * precision * recall, precision + recall)
  report = {str(c): {"precision": float(precision[c]), "recall": float(recall[c]),
                     "f1-score": float(f1[c]), "support": int(support[c])}
            for c in range(num_classes)}
  total = int(support.sum())
  report["accuracy"] = float(true_positives.sum() / max(total, 1))
  weights = support if total else None
  for name, average in (("macro avg", np.mean(np.stack([precision, recall, f1]), axis=1)),
                        ("weighted avg", np.average(np.stack([precision, recall, f1]), axis=1,
                                                    weights=weights))):
    report[name] = {"precision": float(average[0]), "recall": float(average[1]),
                    "f1-score": float(average[2]), "support": total}
  return report


def format_classification_report(report: dict, digits: int = 4) -> str:
  """The text scikit-learn prints for the same report (same columns and widths)."""
  averages = ("accuracy", "macro avg", "weighted avg")
  classes = [name for name in report if name not in averages]
  width = max([len("weighted avg"), digits] + [len(name) for name in classes])
  headers = ("precision", "recall", "f1-score", "support")
  row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
  text = ("{:>{width}s} " + " {:>9}" * 4).format("", *headers, width=width) + "\n\n"
  for name in classes:
    text += row.format(name, *(report[name][h] for h in headers), width=width, digits=digits)
  total = report["macro avg"]["support"]
  text += "\n" + ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
      "accuracy", "", "", report["accuracy"], total, width=width, digits=digits)
  for name in averages[1:]:
    text += row.format(name, *(report[name][h] for h in headers), width=width, digits=digits)
  return text


def misclassified(labels, probs) -> np.ndarray:
  """Indices of the wrong predictions, the most confident mistakes first."""
  predictions = probs.argmax(-1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probs[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")]


# ---------------------------------------------------------------------------------------------
# Figures


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


def confusion_matrix_figure(counts: np.ndarray):
  """Counts with labelled axes, each cell annotated (scikit-learn's ConfusionMatrixDisplay)."""
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
         title=f"Confusion matrix ({counts.sum():,} test digits, {np.trace(counts):,} correct)")
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


# ---------------------------------------------------------------------------------------------
# TensorBoard


_TENSORBOARD_TAGS = {  # metrics.jsonl key -> (run, tag); Keras's layout, so TensorBoard overlays
    "train_loss": ("train", "loss"),  # training and validation curves of the same tag
    "train_accuracy": ("train", "accuracy"),
    "learning_rate": ("train", "learning_rate"),
    "val_loss": ("validation", "loss"),
    "val_accuracy": ("validation", "accuracy"),
}


def write_tensorboard(history: Sequence[dict], logdir: pathlib.Path) -> None:
  """Per-epoch scalars as TensorBoard event files (tensorboardX: TensorFlow not needed).

  Rewritten from metrics.jsonl each time, so a rebuilt report never duplicates points.
  """
  # tensorboardX imports torch, when installed, only to accept torch tensors (a second or more):
  # hide it for the duration of this import; we pass plain floats.
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if hide_torch:
      del sys.modules["torch"]
  shutil.rmtree(logdir, ignore_errors=True)
  writers = {}
  for record in history:
    for key, (run, tag) in _TENSORBOARD_TAGS.items():
      if key in record:
        if run not in writers:
          writers[run] = SummaryWriter(logdir=str(logdir / run))
        writers[run].add_scalar(tag, record[key], global_step=record["epoch"])
  for writer in writers.values():
    writer.close()


# ---------------------------------------------------------------------------------------------
# The command that reproduces a run


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return ",".join(map(str, value)) if value else "()"
  return str(value)


def reproduce_command(config, workdir) -> str:
  """The `mnist_jax.main` command for `config`: the closest experiment plus one override per
  field that differs, so that it works for runs started from notebooks or old configs too."""
  target = _flatten(config.to_dict())
  best = None
  for name in config_lib.available():
    base = _flatten(config_lib.load(name).to_dict())
    overrides = {key: value for key, value in target.items() if base.get(key) != value}
    if best is None or len(overrides) < len(best[1]):
      best = (name, overrides)
  name, overrides = best
  args = [f"--config={name}"]
  args += [f"--config.{key}={_flag_value(value)}" for key, value in sorted(overrides.items())]
  args.append(f"--workdir={workdir}")
  return "python -m mnist_jax.main " + " ".join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------------------------
# report.md


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


_EPOCH_COLUMNS = {"train_loss": ".4f", "train_accuracy": ".4f", "val_loss": ".4f",
                  "val_accuracy": ".4f", "learning_rate": ".4g", "seconds": ".2f"}


def _epoch_table(history: Sequence[dict]) -> str:
  columns = [c for c in _EPOCH_COLUMNS if history and c in history[0]]
  rows = [[r["epoch"]] + [format(r[c], _EPOCH_COLUMNS[c]) for c in columns] for r in history]
  return _table(["epoch"] + columns, rows)


def _replicas_section(summary: dict) -> list[str]:
  """A run of several replicas: each one's test result; the figures show replica 0."""
  if "replicas" not in summary:
    return []
  rows = [[k, r["seed"], f"{r['learning_rate']:g}", f"{r['test_loss']:.4f}",
           f"{r['test_accuracy']:.4f}"] for k, r in enumerate(summary["replicas"])]
  return ["## Replicas", "",
          f"{len(rows)} replicas trained in one vmapped program; the test numbers above are their "
          f"mean (accuracy std {summary['test_accuracy_std']:.4f}), the curves show the mean, and "
          f"the test-set figures below show replica 0.", "",
          _table(["replica", "seed", "learning rate", "test loss", "test accuracy"], rows), ""]


def markdown(run: Run, probs: np.ndarray, report: dict, example: int) -> str:
  """report.md: one page that reads top to bottom like a tutorial's notebook."""
  test, config, history, workdir = run.splits.test, run.config, run.history, run.workdir
  predictions = probs.argmax(-1)
  confidence = probs.max(-1)
  wrong = misclassified(test.labels, probs)
  last = history[-1] if history else {"train_loss": float("nan"), "train_accuracy": float("nan")}
  # summary.json holds the numbers the training log printed; an unfinished run's are computed.
  test_loss = run.summary.get("test_loss", float(
      -np.mean(np.log(np.maximum(probs[np.arange(len(test)), test.labels], 1e-12)))))
  test_accuracy = run.summary.get("test_accuracy", report["accuracy"])

  results = [["training (last epoch, running mean)", last["train_loss"], last["train_accuracy"]]]
  if "val_loss" in last:
    results.append(["validation (last epoch)", last["val_loss"], last["val_accuracy"]])
  results.append(["test", test_loss, test_accuracy])
  results = [[name, f"{loss:.4f}", f"{accuracy:.4f}"] for name, loss, accuracy in results]
  splits = [[name, split.images.shape, split.labels.shape] for name, split in
            (("train", run.splits.train), ("validation", run.splits.val), ("test", test))
            if split is not None]
  first = [[i, test.labels[i], predictions[i], f"{confidence[i]:.4f}"]
           for i in range(min(NUM_FIRST_TEST, len(test)))]
  if run.summary:
    status = f"finished: {run.epoch} epochs, {int(run.state.step):,} steps"
  else:
    status = (f"**unfinished**: restored from the checkpoint after epoch {run.epoch} "
              f"of {config.train.epochs}")
  seconds = sum(r["seconds"] for r in history)
  quoted = shlex.quote(str(workdir))
  gap = last["train_accuracy"] - test_accuracy
  shown = min(len(wrong), MAX_MISCLASSIFIED_SHOWN)

  return "\n".join([
      f"# Run `{workdir}`",
      "",
      f"Status: {status}; training time {seconds:.1f} s; data: {run.splits.source}.",
      "",
      "Reproduce it, rebuild this report, classify an image:",
      "",
      "```bash",
      reproduce_command(config, workdir),
      f"python -m mnist_jax.report --workdir={quoted}",
      f"python -m mnist_jax.predict --workdir={quoted} my_digit.png",
      "```",
      "",
      "## Results",
      "",
      _table(["", "loss", "accuracy"], results),
      "",
      f"Training minus test accuracy: {gap:+.4f} (positive: the model fits its training data "
      f"better than unseen digits). {len(wrong):,} of {len(test):,} test digits are misclassified.",
      "",
      _table(["split", "images", "labels"], splits),
      "",
      *_replicas_section(run.summary),
      "## Training curves",
      "",
      "![loss and accuracy per epoch](figures/curves.png)",
      "",
      _epoch_table(history),
      "",
      "## Test set",
      "",
      "![confusion matrix](figures/confusion_matrix.png)",
      "",
      "Classification report ([JSON](classification_report.json)):",
      "",
      "```",
      format_classification_report(report).rstrip(),
      "```",
      "",
      f"Misclassified test digits, the {shown} most confident of {len(wrong):,} "
      f"(all of them are in [misclassified.json](misclassified.json)):",
      "",
      "![misclassified test digits](figures/misclassified.png)",
      "",
      "The first test digits and their predictions:",
      "",
      _table(["test index", "label", "predicted", "probability"], first),
      "",
      "![first test digits](figures/first_test_digits.png)",
      "",
      f"Test digit {example} (label {test.labels[example]}) is predicted as "
      f"**{predictions[example]}**; its probabilities:",
      "",
      "![a test digit and its probabilities](figures/prediction.png)",
      "",
      "## Training data",
      "",
      "![random training digits](figures/samples.png)",
      "",
      "## Model",
      "",
      "```",
      train.model_summary(run.state, config),
      "```",
      "",
      "## Config",
      "",
      "```json",
      json.dumps(config.to_dict(), indent=2, sort_keys=True),
      "```",
      "",
      f"TensorBoard: `tensorboard --logdir {shlex.quote(str(workdir / 'tensorboard'))}`",
      "",
  ])


# ---------------------------------------------------------------------------------------------
# Everything, written to the workdir


def build(workdir) -> pathlib.Path:
  """(Re)build every report file of the run in `workdir`; returns the path of report.md."""
  run = load_run(workdir)
  workdir, train_split, test = run.workdir, run.splits.train, run.splits.test
  probs = probabilities(run, test.images)
  predictions, confidence = probs.argmax(-1), probs.max(-1)
  num_classes = run.config.model.num_classes
  counts = confusion_matrix(test.labels, predictions, num_classes)
  report = classification_report(test.labels, predictions, num_classes)
  wrong = misclassified(test.labels, probs)
  # "Random" digits, as the tutorials showed, but the same ones each time a run's report is built.
  rng = np.random.RandomState(run.config.seed)
  samples = rng.choice(len(train_split), min(NUM_SAMPLES, len(train_split)), replace=False)
  example = int(rng.randint(len(test)))
  shown = wrong[:MAX_MISCLASSIFIED_SHOWN]
  first = np.arange(min(NUM_FIRST_TEST, len(test)))

  figures = {
      "curves.png": curves_figure(run.history),
      "samples.png": digit_grid_figure(
          train_split.images[samples], [str(l) for l in train_split.labels[samples]],
          columns=SAMPLE_COLUMNS, title="Training digits and their labels"),
      "confusion_matrix.png": confusion_matrix_figure(counts),
      "misclassified.png": digit_grid_figure(
          test.images[shown],
          [f"true {test.labels[i]} pred {predictions[i]}\n({confidence[i]:.2f})" for i in shown],
          title=f"Misclassified test digits: {len(shown)} most confident of {len(wrong)}"),
      "first_test_digits.png": digit_grid_figure(
          test.images[first], [f"pred {predictions[i]} (true {test.labels[i]})" for i in first],
          caption_colors=["tab:red" if predictions[i] != test.labels[i] else "black" for i in first]),
      "prediction.png": prediction_figure(test.images[example], probs[example],
                                          int(test.labels[example])),
  }
  for name, fig in figures.items():
    save_figure(fig, workdir / "figures" / name)

  (workdir / "classification_report.txt").write_text(format_classification_report(report))
  (workdir / "classification_report.json").write_text(json.dumps(report, indent=2) + "\n")
  np.savetxt(workdir / "confusion_matrix.csv", counts, fmt="%d", delimiter=",")
  mistakes = [{"index": int(i), "label": int(test.labels[i]), "predicted": int(predictions[i]),
               "probability": round(float(confidence[i]), 6)} for i in wrong]
  (workdir / "misclassified.json").write_text(json.dumps(mistakes, indent=1) + "\n")
  write_tensorboard(run.history, workdir / "tensorboard")
  path = workdir / "report.md"
  path.write_text(markdown(run, probs, report, example))
  return path


def main(argv):
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    sys.exit(f"ERROR: unexpected arguments {argv[1:]}; use --workdir=DIR.")
  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    path = build(_WORKDIR.value)
  except (RunError, data.DataError, checkpoints.CheckpointError) as e:
    sys.exit(f"ERROR: {e}")
  print(f"Report: {path}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  # Defined here, not at import: main.py and predict.py import this module and own their flags.
  _WORKDIR = flags.DEFINE_string("workdir", None, "The workdir of a run, e.g. runs/t3.",
                                 required=True)
  app.run(main)
