"""Classify your own image, or a test image, with a trained run."""
import re

import numpy as np

from conftest import PNG_SIGNATURE, run_program


def test_to_mnist_leaves_an_mnist_digit_as_it_is(predictions):
  from mnist_jax.predict import to_mnist  # pylint: disable=import-outside-toplevel
  run, _ = predictions
  for image in run.splits.test.images[:20]:
    assert np.corrcoef(to_mnist(image).ravel(), image.ravel())[0, 1] > 0.9


def test_predict_own_image_gives_the_models_label(trained_run, predictions, tmp_path):
  workdir = trained_run
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
  result = run_program("predict", f"--workdir={workdir}", str(path), f"--save={tmp_path / 'p.png'}")
  assert result.returncode == 0, result.stderr
  assert f"Predicted digit: {label}" in result.stdout
  assert len(re.findall(r"^  \d: \d\.\d{4}", result.stdout, re.M)) == 10
  assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE

  result = run_program("predict", f"--workdir={workdir}", f"--index={index}")
  assert result.returncode == 0, result.stderr
  assert f"Predicted digit: {label}" in result.stdout and f"True label: {label}" in result.stdout


def test_predict_on_a_text_file_fails_clearly(trained_run, tmp_path):
  workdir = trained_run
  path = tmp_path / "notes.txt"
  path.write_text("not a digit\n")
  result = run_program("predict", f"--workdir={workdir}", str(path))
  assert result.returncode != 0
  assert result.stderr.strip() == (f"ERROR: {path} is not an image file that Pillow can read "
                                   f"(PNG, JPEG, ...).")
