"""The report of a run: its numbers, figures, TensorBoard scalars, and the command to rebuild it."""
import json
import re

import numpy as np
import pytest

from conftest import PNG_SIGNATURE, TINY_FLAGS, run_program, tensorboard_scalars
from mnist_jax import config as config_lib
from mnist_jax import report


def test_confusion_matrix_counts_the_test_set(trained_run, predictions):
  workdir = trained_run
  run, probs = predictions
  labels = run.splits.test.labels
  correct = int(np.sum(probs.argmax(-1) == labels))
  counts = np.loadtxt(workdir / "confusion_matrix.csv", delimiter=",", dtype=int)
  assert counts.shape == (10, 10)
  assert counts.sum() == len(labels) == 10_000
  assert np.trace(counts) == correct
  assert counts.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()  # rows: true
  summary = json.loads((workdir / "summary.json").read_text())
  assert correct == round(summary["test_accuracy"] * len(labels))  # the same model as training's
  saved = json.loads((workdir / "classification_report.json").read_text())
  assert saved["accuracy"] == pytest.approx(correct / len(labels))
  wrong = json.loads((workdir / "misclassified.json").read_text())
  assert len(wrong) == len(labels) - correct
  confidence = [w["probability"] for w in wrong]
  assert confidence == sorted(confidence, reverse=True)  # most confident mistakes first


def test_every_figure_is_a_png_and_report_md_links_it(trained_run):
  workdir = trained_run
  text = (workdir / "report.md").read_text()
  for name in report.FIGURES:
    path = workdir / "figures" / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE, name
    assert 5_000 < path.stat().st_size < 400_000, name
    assert f"](figures/{name})" in text
  assert "Misclassified test digits, the 60 most confident" in text
  assert "precision    recall  f1-score   support" in text
  assert "| epoch | train_loss | train_accuracy | val_loss | val_accuracy |" in text
  assert "Total params: 623,290" in text  # the model summary
  # The command reproduces the run: the experiment plus exactly the flags that changed it.
  command = re.search(r"python -m mnist_jax\.main (.*)", text).group(1).split()
  assert command == ["--config=adam_mlp_784", *sorted(TINY_FLAGS), f"--workdir={workdir}"]


def test_reproduce_command_skips_an_experiment_that_does_not_load(monkeypatch, tmp_path):
  """A finished run's report does not depend on every file in experiments/ loading: one being
  edited, or newer than the code of a run started before it (a `git pull` mid-run), is skipped."""
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  monkeypatch.setattr(config_lib, "available", lambda: [str(broken), "adam_mlp"])
  config = config_lib.load("adam_mlp")
  config.train.epochs = 7
  assert report.reproduce_command(config, "runs/x") == (
      "python -m mnist_jax.main --config=adam_mlp --config.train.epochs=7 --workdir=runs/x")
  monkeypatch.setattr(config_lib, "available", lambda: [str(broken)])
  assert report.reproduce_command(config, "runs/x").startswith("# no config in ")


def test_tensorboard_scalars_per_epoch(trained_run):
  workdir = trained_run
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = tensorboard_scalars(workdir / "tensorboard" / "train")
  val = tensorboard_scalars(workdir / "tensorboard" / "validation")
  assert set(train) == {"loss", "accuracy", "learning_rate"} and set(val) == {"loss", "accuracy"}
  assert [s for s, _ in train["loss"]] == [1, 2]
  assert [v for _, v in train["loss"]] == pytest.approx([r["train_loss"] for r in records])
  assert [v for _, v in val["accuracy"]] == pytest.approx([r["val_accuracy"] for r in records])


def test_report_cli_rebuilds_the_report(trained_run):
  workdir = trained_run
  (workdir / "report.md").unlink()
  result = run_program("report", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr
  assert (workdir / "report.md").exists()
  assert len(list((workdir / "tensorboard" / "train").iterdir())) == 1  # rewritten, not appended
