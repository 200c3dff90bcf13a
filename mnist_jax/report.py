"""The report of a run: what the tutorials showed, rebuilt from its workdir alone.

    python -m mnist_jax.report --workdir=runs/t3

reads the run back (`workdir.load_run`: config.json, metrics.jsonl, summary.json and the last
checkpoint) and (re)writes:

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

A run that keeps the test set out (config.data.use_test=False) is shown on its validation digits:
the report keeps the test set out as the run did.

The numbers come from `metrics.py`, the pictures from `figures.py`; this module writes the files.
"""

import dataclasses
import importlib
import json
import pathlib
import shlex
from typing import Optional, Sequence

import numpy as np

from mnist_jax import (
  cli,
  data,
  figures,
  hyperparams,
  metrics,
  models,
  replicas,
  sweeps,
  tensorboard,
  train,
)
from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ConfigError
from mnist_jax.paths import EXPERIMENTS_DIR

FIGURES = {
    "curves.png": "loss and accuracy per epoch",
    "samples.png": "random training digits with their labels",
    "confusion_matrix.png": "confusion matrix of the held-out digits",
    "misclassified.png": "misclassified held-out digits, most confident first",
    "first_test_digits.png": "the first held-out digits with their predictions",
    "prediction.png": "a held-out digit beside its 10 probabilities",
}
MAX_MISCLASSIFIED_SHOWN = 60
NUM_SAMPLES, SAMPLE_COLUMNS = 40, 8  # T3's 5x8 grid
NUM_FIRST_TEST = 10


def probabilities(run: workdir_lib.Run, images: np.ndarray) -> np.ndarray:
  """Softmax probabilities (N, classes) for uint8 images (N, H, W), preprocessed as in training."""
  x = data.preprocess(images, run.config.data.preprocess)
  with train.matmul_precision(run.config):
    return np.asarray(train.predict_probabilities(run.state, x, run.config.train.eval_batch_size))


def preload() -> None:
  """Import what the report draws with (matplotlib: about a second), e.g. in a thread while the
  run trains, so the report at its end starts drawing at once."""
  for module in ("matplotlib.figure", "matplotlib.ticker", "matplotlib.backends.backend_agg"):
    importlib.import_module(module)


# ---------------------------------------------------------------------------------------------
# The command that reproduces a run


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return ",".join(map(str, value)) if value else "()"
  return str(value)


def reproduce_command(config, workdir=None) -> str:
  """The `mnist_jax.main` command for `config`: the closest experiment plus one override per
  field that differs, so that it works for runs started from notebooks or old configs too."""
  closest = config_lib.closest(config)
  if closest is None:
    return f"# no config in {EXPERIMENTS_DIR} loads; this run's is {workdir}/config.json"
  name, overrides = closest
  args = [f"--config={name}"]
  args += [f"--config.{key}={_flag_value(value)}" for key, value in sorted(overrides.items())]
  if workdir is not None:
    args.append(f"--workdir={workdir}")
  return "python -m mnist_jax.main " + " ".join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------------------------
# report.md


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


_EPOCH_COLUMNS = {"train_loss": ".4f", "train_accuracy": ".4f", "val_loss": ".4f",
                  "val_accuracy": ".4f", "val_adversarial_accuracy": ".4f",
                  "learning_rate": ".4g", "seconds": ".2f"}


def _image(name: str) -> str:
  return f"![{FIGURES[name]}](figures/{name})"


def _epoch_table(history: Sequence[dict]) -> str:
  columns = [c for c in _EPOCH_COLUMNS if history and c in history[0]]
  rows = [[r["epoch"]] + [format(r[c], _EPOCH_COLUMNS[c]) for c in columns] for r in history]
  return markdown_table(["epoch"] + columns, rows)


def _replicas_section(run: workdir_lib.Run) -> list[str]:
  """A run of several seeds: each one's final result; the figures show replica 0."""
  summary, split = run.summary, data.final_split(run.config.data)
  if "replicas" not in summary or hyperparams.swept(run.config):
    return []
  name = data.SPLIT_NAMES[split]
  rows = [[k, r["seed"], f"{r[f'{split}_loss']:.4f}", f"{r[f'{split}_accuracy']:.4f}"]
          for k, r in enumerate(summary["replicas"])]
  return ["## Replicas", "",
          f"{len(rows)} replicas trained in one vmapped program; the {name} numbers above are "
          f"their mean (accuracy std {summary[f'{split}_accuracy_std']:.4f}), the curves show the "
          f"mean, and the {name}-set figures below show replica 0.", "",
          markdown_table(["replica", "seed", f"{name} loss", f"{name} accuracy"], rows),
          ""]


def sweep_figure_name(field: str) -> str:
  return f"sweep_{field}.png"


def sweep_section(trials: Sequence[sweeps.Trial], config, workdir, monitor: str,
                  figure_dir: Optional[str] = None) -> list[str]:
  """The table of a sweep's points, the point chosen on validation and the command that trains
  it alone (`config` with the point's values, into `workdir`-chosen); with `figure_dir`, the
  figures named by `sweep_figure_name` there."""
  grid = sweeps.points(trials)
  chosen = sweeps.best(grid, monitor)
  fields = list(grid[0].point)
  lines = [markdown_table(*sweeps.table(grid, chosen)), ""]
  if chosen is None:
    return lines + [
        f"Nothing is chosen: a choice needs a validation split (the test set chooses nothing). "
        f"Run the sweep again with --config.data.validation=train_tail, which holds out the "
        f"last {config.data.validation_fraction:.0%} of the training images, and {monitor} "
        f"chooses the point.", ""]
  point = ", ".join(f"{f}={sweeps.format_value(chosen.point[f])}" for f in fields)
  tested = config.data.use_test
  lines += [f"Chosen by {monitor} (mean over {len(chosen.seeds)} seed(s); "
            + ("the test numbers are shown, never used" if tested else "the test set was kept out")
            + f"): **{point}**.", ""]
  if figure_dir is not None:
    lines += [f"![{monitor} against {f}]({figure_dir}/{sweep_figure_name(f)})" for f in fields]
    lines.append("")
  final = "--config.data.validation=none" + ("" if tested else " --config.data.use_test=True")
  return lines + [f"It alone, with the same data and seed (for a final test, train it with "
                  f"{final} on all the training images):", "", "```bash",
                  reproduce_command(sweeps.point_config(config, chosen.point), f"{workdir}-chosen"),
                  "```", ""]


@dataclasses.dataclass(frozen=True)
class HeldOutAnalysis:
  """What the report shows of the held-out digits (the test set, or the validation set of a run
  that keeps the test set out), computed once from the run's probabilities."""
  split: str  # "test" or "val" (data.final_split)
  probs: np.ndarray  # (N, classes)
  predictions: np.ndarray
  confidence: np.ndarray
  wrong: np.ndarray  # indices of the mistakes, most confident first
  counts: np.ndarray  # confusion matrix, rows: true label
  report: dict  # classification report
  example: int  # the digit shown beside its probabilities

  @classmethod
  def of(cls, run: workdir_lib.Run, rng: np.random.RandomState) -> "HeldOutAnalysis":
    split = data.final_split(run.config.data)
    held_out, num_classes = getattr(run.splits, split), run.config.model.num_classes
    probs = probabilities(run, held_out.images)
    predictions = probs.argmax(-1)
    return cls(split, probs, predictions, probs.max(-1),
               metrics.misclassified(held_out.labels, probs),
               metrics.confusion_matrix(held_out.labels, predictions, num_classes),
               metrics.classification_report(held_out.labels, predictions, num_classes),
               int(rng.randint(len(held_out))))


def markdown(run: workdir_lib.Run, analysis: HeldOutAnalysis) -> str:
  """report.md: the page's template in the order it renders, like a tutorial's notebook."""
  config, history, workdir, split = run.config, run.history, run.workdir, analysis.split
  held_out, name = getattr(run.splits, split), data.SPLIT_NAMES[split]
  probs, predictions, wrong, example = (analysis.probs, analysis.predictions, analysis.wrong,
                                        analysis.example)
  report, confidence = analysis.report, analysis.confidence
  last = history[-1] if history else {"train_loss": float("nan"), "train_accuracy": float("nan")}
  # summary.json holds the numbers the training log printed; an unfinished run's are computed.
  final_loss = run.summary.get(f"{split}_loss", float(
      -np.mean(np.log(np.maximum(probs[np.arange(len(held_out)), held_out.labels], 1e-12)))))
  final_accuracy = run.summary.get(f"{split}_accuracy", report["accuracy"])

  results = [["training (last epoch, running mean)", last["train_loss"], last["train_accuracy"]]]
  if "val_loss" in last:
    results.append(["validation (last epoch)", last["val_loss"], last["val_accuracy"]])
  results.append(["test" if split == "test" else "validation (the tested parameters, as a test "
                  "measures them)", final_loss, final_accuracy])
  results = [[label, f"{loss:.4f}", f"{accuracy:.4f}"] for label, loss, accuracy in results]
  if f"{split}_adversarial_accuracy" in run.summary:
    results.append([f"{name}, fast-gradient-sign attacks (epsilon "
                    f"{config.train.adversarial_epsilon:g})", "",
                    f"{run.summary[f'{split}_adversarial_accuracy']:.4f}"])
  splits = [[label, s.images.shape, s.labels.shape] for label, s in
            (("train", run.splits.train), ("validation", run.splits.val), ("test", run.splits.test))
            if s is not None]
  first = [[i, held_out.labels[i], predictions[i], f"{confidence[i]:.4f}"]
           for i in range(min(NUM_FIRST_TEST, len(held_out)))]
  if run.summary:
    status = f"finished: {run.epoch} epochs, {int(run.state.step):,} steps"
  else:
    status = (f"**unfinished**: restored from the checkpoint after epoch {run.epoch} "
              f"of {config.train.epochs}")
  seconds = sum(r["seconds"] for r in history)
  quoted = shlex.quote(str(workdir))
  gap = last["train_accuracy"] - final_accuracy
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
      markdown_table(["", "loss", "accuracy"], results),
      "",
      f"Training minus {name} accuracy: {gap:+.4f} (positive: the model fits its training data "
      f"better than unseen digits). {len(wrong):,} of {len(held_out):,} {name} digits are "
      f"misclassified.",
      "",
      markdown_table(["split", "images", "labels"], splits),
      "",
      *_replicas_section(run),
      *(["## Sweep", "", *sweep_section(_trials(run), config, workdir, config.train.monitor,
                                        "figures")] if hyperparams.swept(config) else []),
      "## Training curves",
      "",
      _image("curves.png"),
      "",
      _epoch_table(history),
      "",
      f"## {name.capitalize()} set",
      "",
      *([] if split == "test" else [
          "The test set was kept out (config.data.use_test=False): the figures are of the "
          "validation digits.", ""]),
      _image("confusion_matrix.png"),
      "",
      "Classification report ([JSON](classification_report.json)):",
      "",
      "```",
      metrics.format_classification_report(report).rstrip(),
      "```",
      "",
      f"Misclassified {name} digits, the {shown} most confident of {len(wrong):,} "
      f"(all of them are in [misclassified.json](misclassified.json)):",
      "",
      _image("misclassified.png"),
      "",
      f"The first {name} digits and their predictions:",
      "",
      markdown_table([f"{name} index", "label", "predicted", "probability"], first),
      "",
      _image("first_test_digits.png"),
      "",
      f"{name.capitalize()} digit {example} (label {held_out.labels[example]}) is predicted as "
      f"**{predictions[example]}**; its probabilities:",
      "",
      _image("prediction.png"),
      "",
      "## Training data",
      "",
      _image("samples.png"),
      "",
      "## Model",
      "",
      "```",
      models.summary(run.state.params, run.state.batch_stats, config.model),
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


def _trials(run: workdir_lib.Run) -> list[sweeps.Trial]:
  return sweeps.trials_of_run(run.config, run.summary, run.history)


# ---------------------------------------------------------------------------------------------
# Everything, written to the workdir


def build(workdir) -> pathlib.Path:
  """(Re)build every report file of the run in `workdir`; returns the path of report.md.

  report.md is removed first and written last (atomically), so it exists only beside a complete
  report: a build killed midway leaves none, and `workdir.report_is_complete` tells.
  """
  run = workdir_lib.load_run(workdir)
  (run.workdir / workdir_lib.REPORT).unlink(missing_ok=True)
  workdir, train_split = run.workdir, run.splits.train
  # "Random" digits, as the tutorials showed, but the same ones each time a run's report is built.
  rng = np.random.RandomState(run.config.seed)
  samples = rng.choice(len(train_split), min(NUM_SAMPLES, len(train_split)), replace=False)
  analysis = HeldOutAnalysis.of(run, rng)
  held_out, name = getattr(run.splits, analysis.split), data.SPLIT_NAMES[analysis.split]
  probs, predictions, confidence, wrong, counts, report, example = (
      analysis.probs, analysis.predictions, analysis.confidence, analysis.wrong, analysis.counts,
      analysis.report, analysis.example)
  shown = wrong[:MAX_MISCLASSIFIED_SHOWN]
  first = np.arange(min(NUM_FIRST_TEST, len(held_out)))

  pictures = {
      "curves.png": figures.curves_figure(run.history),
      "samples.png": figures.digit_grid_figure(
          train_split.images[samples], [str(label) for label in train_split.labels[samples]],
          columns=SAMPLE_COLUMNS, title="Training digits and their labels"),
      "confusion_matrix.png": figures.confusion_matrix_figure(counts, name),
      "misclassified.png": figures.digit_grid_figure(
          held_out.images[shown],
          [f"true {held_out.labels[i]} pred {predictions[i]}\n({confidence[i]:.2f})" for i in shown],
          title=f"Misclassified {name} digits: {len(shown)} most confident of {len(wrong)}"),
      "first_test_digits.png": figures.digit_grid_figure(
          held_out.images[first], [f"pred {predictions[i]} (true {held_out.labels[i]})" for i in first],
          caption_colors=["tab:red" if predictions[i] != held_out.labels[i] else "black" for i in first]),
      "prediction.png": figures.prediction_figure(held_out.images[example], probs[example],
                                                  int(held_out.labels[example])),
  }
  if hyperparams.swept(run.config) and run.summary:
    grid = sweeps.points(_trials(run))
    monitor = run.config.train.monitor
    if sweeps.best(grid, monitor) is not None:
      pictures.update({sweep_figure_name(f): sweeps.figure(grid, f, monitor) for f in grid[0].point})
  for name, fig in pictures.items():
    figures.save_figure(fig, workdir / "figures" / name)

  (workdir / "classification_report.txt").write_text(metrics.format_classification_report(report))
  (workdir / "classification_report.json").write_text(json.dumps(report, indent=2) + "\n")
  np.savetxt(workdir / "confusion_matrix.csv", counts, fmt="%d", delimiter=",")
  mistakes = [{"index": int(i), "label": int(held_out.labels[i]), "predicted": int(predictions[i]),
               "probability": round(float(confidence[i]), 6)} for i in wrong]
  (workdir / "misclassified.json").write_text(json.dumps(mistakes, indent=1) + "\n")
  tensorboard.rewrite(workdir / workdir_lib.TENSORBOARD, replicas.replica_settings(run.config),
                      run.history)
  path = workdir / workdir_lib.REPORT
  workdir_lib.write_atomic(path, markdown(run, analysis))
  return path


def main(args: list[str]) -> int:
  if args:
    raise ConfigError(f"Unexpected arguments {args}: use --workdir=DIR.")
  print(f"Report: {build(cli.require_workdir())}")
  return 0


def run(argv: Sequence[str]) -> int:
  """The program, in this process: `run(["report", "--workdir=runs/t3"])` -> exit code."""
  return cli.run(main, argv)


if __name__ == "__main__":
  cli.start(main)
