"""Model FLOPs and hardware peaks: what MFU (model FLOPs utilisation) is measured against."""

import time

import jax
import jax.numpy as jnp

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
  Embedding look-ups, LayerNorms and softmax are not counted. The LSTM (model.arch=lstm):
  3 x 2 x (its gate kernels, projection and the tied output layer).
  """
  d, layers = model_config.n_embd, model_config.n_layer
  if model_config.arch == 'lstm':
    units = model_config.lstm_units
    proj = units * d if units != d else 0
    return 3.0 * 2.0 * (4 * units * (d + units) + proj + d * model_config.vocab_size)
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
