"""Model FLOPs, hardware peaks and utilisation (MFU); fine-tuning task metrics."""

import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
_PEAK_FLOPS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,  # v5e
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6 lite': 918e12,  # v6e (Trillium)
    'NVIDIA H100': 989e12,
    'NVIDIA H200': 989e12,
    'NVIDIA A100': 312e12,
}


def train_flops_per_token(model_config, seq_len: int) -> float:
  """Model FLOPs of one training token: 3 x (2 x matmul parameters + attention).

  Counts the forward pass's matrix multiplies (projections, MLP, the tied
  output layer and the two attention products over the full square, as in the
  PaLM paper's MFU definition) and triples it for the backward pass.
  Embedding look-ups, LayerNorms and softmax are not counted.
  """
  d, layers = model_config.n_embd, model_config.n_layer
  matmul_params = layers * (4 * d * d + 2 * d * model_config.d_ff) + d * model_config.vocab_size
  attention = layers * 2 * 2 * seq_len * d
  return 3.0 * (2.0 * matmul_params + attention)


def measure_matmul_peak(dtype=jnp.float32, size: int = 2048, repeats: int = 5) -> float:
  """Best FLOP/s of a square matmul on the default device (the CPU's practical peak)."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def peak_flops_per_device(dtype=jnp.float32) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number came from)."""
  kind = jax.devices()[0].device_kind
  for name, peak in _PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak, f'{kind} data sheet'
  return measure_matmul_peak(dtype), f'measured {jnp.dtype(dtype).name} matmul on {kind}'


# Fine-tuning task metrics: functions of (predictions, labels) on the host, in
# float64. Where a metric is undefined (a constant input), it is 0, as
# scikit-learn reports for Matthews correlation.


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
  np.add.at(confusion, (index[:len(labels)], index[len(labels):]), 1)
  true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
  total, correct = confusion.sum(), np.trace(confusion)
  numerator = correct * total - predicted_counts @ true_counts
  denominator = np.sqrt((total**2 - predicted_counts @ predicted_counts) *
                        (total**2 - true_counts @ true_counts))
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
