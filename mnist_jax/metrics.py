"""Classification metrics of a run's predictions: the numbers scikit-learn gives, in numpy alone.

A report needs a confusion matrix, a per-class classification report and the list of mistakes;
numpy computes them in microseconds, and scikit-learn (hundreds of MB) is then not a requirement.
`tests/test_metrics.py` checks them against scikit-learn's definitions on hand-made cases.
"""

import numpy as np


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
