"""Studying a run: the report, predict on your own image, and the quickstart notebook."""
import json
import pathlib
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, run_cli
from mnist_jax import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_module(module, *args):
  """`python -m mnist_jax.MODULE ARGS`, as a user runs it."""
  return subprocess.run([sys.executable, "-m", f"mnist_jax.{module}", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """One tiny run of T1's model A (l2_rows preprocessing, a validation split), report included."""
  workdir = tmp_path_factory.mktemp("run")
  run_cli("--config=adam_mlp_784", f"--workdir={workdir}", *TINY_FLAGS)
  return workdir


@pytest.fixture(scope="module")
def predictions(workdir):
  """(run, test-set probabilities) restored in this process."""
  run = report.load_run(workdir)
  return run, report.probabilities(run, run.splits.test.images)


# ---------------------------------------------------------------------------------------------
# Metrics


LABELS = [0, 0, 1, 1, 1, 2, 3]
PREDICTED = [0, 1, 1, 1, 2, 2, 0]  # class 3 is never predicted: precision 0/0 counts as 0


def test_classification_report_equals_hand_computed():
  got = report.classification_report(LABELS, PREDICTED, num_classes=4)
  expected = {
      "0": {"precision": 1 / 2, "recall": 1 / 2, "f1-score": 1 / 2, "support": 2},
      "1": {"precision": 2 / 3, "recall": 2 / 3, "f1-score": 2 / 3, "support": 3},
      "2": {"precision": 1 / 2, "recall": 1, "f1-score": 2 / 3, "support": 1},
      "3": {"precision": 0, "recall": 0, "f1-score": 0, "support": 1},
      "accuracy": 4 / 7,
      "macro avg": {"precision": (1 / 2 + 2 / 3 + 1 / 2) / 4, "recall": (1 / 2 + 2 / 3 + 1) / 4,
                    "f1-score": (1 / 2 + 2 / 3 + 2 / 3) / 4, "support": 7},
      "weighted avg": {"precision": (1 + 2 + 1 / 2) / 7, "recall": 4 / 7,
                       "f1-score": (1 + 2 + 2 / 3) / 7, "support": 7},
  }
  assert list(got) == list(expected)  # scikit-learn's order too
  for name, value in expected.items():
    assert got[name] == pytest.approx(value), name


def test_classification_report_text_has_scikit_learns_layout():
  text = report.format_classification_report(
      report.classification_report(LABELS, PREDICTED, num_classes=4), digits=2)
  assert text == (
      "              precision    recall  f1-score   support\n"
      "\n"
      "           0       0.50      0.50      0.50         2\n"
      "           1       0.67      0.67      0.67         3\n"
      "           2       0.50      1.00      0.67         1\n"
      "           3       0.00      0.00      0.00         1\n"
      "\n"
      "    accuracy                           0.57         7\n"
      "   macro avg       0.42      0.54      0.46         7\n"
      "weighted avg       0.50      0.57      0.52         7\n")


def test_confusion_matrix_counts_the_test_set(workdir, predictions):
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


# ---------------------------------------------------------------------------------------------
# The files of the report


def test_every_figure_is_a_png_and_report_md_links_it(workdir):
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


def _read_scalars(directory: pathlib.Path) -> dict:
  """{tag: [(step, value)]} from TensorBoard event files, read without TensorFlow."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  scalars = {}
  for path in directory.glob("events.out.tfevents.*"):
    raw, pos = path.read_bytes(), 0
    while pos < len(raw):  # TFRecord: length, its CRC, the Event, its CRC
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_scalars_per_epoch(workdir):
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = _read_scalars(workdir / "tensorboard" / "train")
  val = _read_scalars(workdir / "tensorboard" / "validation")
  assert set(train) == {"loss", "accuracy", "learning_rate"} and set(val) == {"loss", "accuracy"}
  assert [s for s, _ in train["loss"]] == [1, 2]
  assert [v for _, v in train["loss"]] == pytest.approx([r["train_loss"] for r in records])
  assert [v for _, v in val["accuracy"]] == pytest.approx([r["val_accuracy"] for r in records])


def test_report_cli_rebuilds_the_report(workdir):
  (workdir / "report.md").unlink()
  result = run_module("report", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr
  assert (workdir / "report.md").exists()
  assert len(list((workdir / "tensorboard" / "train").iterdir())) == 1  # rewritten, not appended


def test_a_directory_without_a_run_is_named(tmp_path):
  with pytest.raises(report.RunError, match="is not the workdir of a run"):
    report.load_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# predict


def test_to_mnist_leaves_an_mnist_digit_as_it_is(predictions):
  from mnist_jax.predict import to_mnist  # pylint: disable=import-outside-toplevel
  run, _ = predictions
  for image in run.splits.test.images[:20]:
    assert np.corrcoef(to_mnist(image).ravel(), image.ravel())[0, 1] > 0.9


def test_predict_own_image_gives_the_models_label(workdir, predictions, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  run, probs = predictions
  test = run.splits.test
  # A clear digit: the one the model classifies right most confidently.
  confidence = np.where(probs.argmax(-1) == test.labels, probs.max(-1), 0)
  index = int(np.argmax(confidence))
  label = int(test.labels[index])
  # Drawn the way a user would: dark ink on white, in colour, 100x100.
  path = tmp_path / "my_digit.png"
  Image.fromarray(255 - test.images[index]).resize((100, 100), Image.Resampling.BILINEAR) \
      .convert("RGB").save(path)
  result = run_module("predict", f"--workdir={workdir}", str(path), f"--save={tmp_path / 'p.png'}")
  assert result.returncode == 0, result.stderr
  assert f"Predicted digit: {label}" in result.stdout
  assert len(re.findall(r"^  \d: \d\.\d{4}", result.stdout, re.M)) == 10
  assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE

  result = run_module("predict", f"--workdir={workdir}", f"--index={index}")
  assert result.returncode == 0, result.stderr
  assert f"Predicted digit: {label}" in result.stdout and f"True label: {label}" in result.stdout


def test_predict_on_a_text_file_fails_clearly(workdir, tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("not a digit\n")
  result = run_module("predict", f"--workdir={workdir}", str(path))
  assert result.returncode != 0
  assert result.stderr.strip() == (f"ERROR: {path} is not an image file that Pillow can read "
                                   f"(PNG, JPEG, ...).")


# ---------------------------------------------------------------------------------------------
# The notebook


def test_quickstart_notebook_runs_to_the_end(tmp_path, monkeypatch):
  import nbformat  # pylint: disable=import-outside-toplevel
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  # A kernelspec for this very Python, so the notebook runs in the tested environment.
  spec = tmp_path / "kernels" / "mnist_jax_test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "mnist_jax test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
  notebook = nbformat.read(REPO / "experiments" / "quickstart.ipynb", as_version=4)
  NotebookClient(notebook, kernel_name="mnist_jax_test", timeout=60,
                 resources={"metadata": {"path": str(REPO / "experiments")}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  text = "".join(o.get("text", "") for o in outputs)
  accuracy = float(re.search(r"test accuracy (\d\.\d+)", text).group(1))
  assert accuracy > 0.8
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the curve, the prediction
