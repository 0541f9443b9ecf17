"""Task metrics against scikit-learn and scipy on random inputs."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from gpt_jax.tasks import metrics


@pytest.mark.parametrize('seed', range(5))
def test_class_metrics_agree_with_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 200))
  labels, predictions = rng.integers(0, 2, n), rng.integers(0, 2, n)
  assert metrics.accuracy(predictions, labels) == pytest.approx(
    sk.accuracy_score(labels, predictions)
  )
  assert metrics.f1_binary(predictions, labels) == pytest.approx(sk.f1_score(labels, predictions))
  assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
    sk.matthews_corrcoef(labels, predictions)
  )
  labels, predictions = rng.integers(0, 3, n), rng.integers(0, 3, n)  # MCC's multi-class form
  assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
    sk.matthews_corrcoef(labels, predictions)
  )


@pytest.mark.parametrize('seed', range(5))
def test_correlations_agree_with_scipy(seed):
  rng = np.random.default_rng(seed)
  labels = rng.normal(size=50)
  predictions = 0.5 * labels + rng.normal(size=50)
  assert metrics.pearson(predictions, labels) == pytest.approx(
    stats.pearsonr(predictions, labels).statistic
  )
  assert metrics.spearman(predictions, labels) == pytest.approx(
    stats.spearmanr(predictions, labels).statistic
  )
  # Ties (STS-B labels come in steps of 0.2) share their mean rank.
  tied_labels, tied_predictions = rng.integers(0, 6, 50), np.round(predictions)
  assert metrics.spearman(tied_predictions, tied_labels) == pytest.approx(
    stats.spearmanr(tied_predictions, tied_labels).statistic
  )


def test_degenerate_inputs_score_zero_like_sklearn():
  labels = np.array([0, 1, 1, 0])
  constant = np.zeros(4, int)
  assert metrics.matthews_corrcoef(constant, labels) == sk.matthews_corrcoef(labels, constant) == 0
  assert metrics.f1_binary(constant, labels) == 0.0
  assert metrics.pearson(constant, labels) == 0.0


def test_task_metrics_by_name():
  result = metrics.task_metrics(('f1', 'accuracy'), [1, 0, 1, 1], [1, 0, 0, 1])
  assert result == {'f1': pytest.approx(0.8), 'accuracy': 0.75}
