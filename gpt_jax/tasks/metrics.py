"""Task metrics and the majority-class baseline.

Metrics are functions of (predictions, labels) on the host, in float64. Where a
metric is undefined (a constant input), it is 0, as scikit-learn reports for
Matthews correlation.
"""

import collections

import numpy as np

from gpt_jax.errors import UserError
from gpt_jax.tasks.task import Task


def accuracy(predictions, labels) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1_binary(predictions, labels) -> float:
  """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
  predictions, labels = np.asarray(predictions) == 1, np.asarray(labels) == 1
  true_pos = np.sum(predictions & labels)
  wrong = np.sum(predictions != labels)  # false positives + false negatives
  return float(2 * true_pos / (2 * true_pos + wrong)) if true_pos + wrong else 0.0


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation (multi-class form, Gorodkin 2004); CoLA's metric."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  classes, index = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  np.add.at(confusion, (index[: len(labels)], index[len(labels) :]), 1)
  true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
  total, correct = confusion.sum(), np.trace(confusion)
  numerator = correct * total - predicted_counts @ true_counts
  denominator = np.sqrt(
    (total**2 - predicted_counts @ predicted_counts) * (total**2 - true_counts @ true_counts)
  )
  return float(numerator / denominator) if denominator else 0.0


def pearson(predictions, labels) -> float:
  x = np.asarray(predictions, np.float64) - np.mean(predictions)
  y = np.asarray(labels, np.float64) - np.mean(labels)
  denominator = np.sqrt((x @ x) * (y @ y))
  return float(x @ y / denominator) if denominator else 0.0


def _ranks(values) -> np.ndarray:
  """1-based ranks; tied values share the mean of their ranks."""
  _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)
  return ((ends - counts + 1 + ends) / 2)[inverse]


def spearman(predictions, labels) -> float:
  return pearson(_ranks(predictions), _ranks(labels))


TASK_METRICS = {
  'accuracy': accuracy,
  'f1': f1_binary,
  'mcc': matthews_corrcoef,
  'pearson': pearson,
  'spearman': spearman,
}


def task_metrics(names, predictions, labels) -> dict[str, float]:
  """{name: value} for the metric `names` (keys of TASK_METRICS) of one task."""
  return {name: TASK_METRICS[name](predictions, labels) for name in names}


def majority_baseline(task: Task, split: str | None = None) -> float | None:
  """Accuracy of always answering a labelled split's most frequent label (or choice index).

  `split` names a validation or test split; it defaults to the task's first
  validation split. Any labelled class or multiple-choice task, not only the
  default ones. None for a split without labels (e.g. GLUE's test splits).
  """
  if task.regression:
    raise UserError(f'{task.name} is a regression task: it has no majority class')
  split = split or next(iter(task.validation))
  examples = {**task.test, **task.validation}[split]
  counts = collections.Counter(int(examples[i]['label']) for i in range(len(examples)))
  counts.pop(-1, None)  # unlabelled
  return max(counts.values()) / sum(counts.values()) if counts else None
