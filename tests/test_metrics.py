"""Classification metrics against hand-computed values and scikit-learn's text layout."""
import pytest

from mnist_jax import metrics

LABELS = [0, 0, 1, 1, 1, 2, 3]
PREDICTED = [0, 1, 1, 1, 2, 2, 0]  # class 3 is never predicted: precision 0/0 counts as 0


def test_classification_report_equals_hand_computed():
  got = metrics.classification_report(LABELS, PREDICTED, num_classes=4)
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
  text = metrics.format_classification_report(
      metrics.classification_report(LABELS, PREDICTED, num_classes=4), digits=2)
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


def test_misclassified_lists_mistakes_most_confident_first():
  import numpy as np  # pylint: disable=import-outside-toplevel
  probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
  assert metrics.misclassified(np.array([0, 0, 0, 1]), probs).tolist() == [2, 3, 1]
