"""Token log-probabilities of a language model, batched and jitted on the device mesh.

The one forward pass that evaluation (`gpt_jax.evaluation`), the zero-shot
probes (`gpt_jax.zero_shot`) and the lm-evaluation-harness adapter
(`gpt_jax.harness`) score text with: rows of tokens in, each next token's
log-probability (and whether it was the model's greedy choice) out. Parameters
are placed on the mesh by the model's logical axis names, rows are split over
data x fsdp, and every call runs at a fixed batch size (the last batch padded
with empty rows) and a width rounded up to a multiple of `WIDTH_MULTIPLE`, so a
pass compiles once per width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import sharding
from gpt_jax.errors import UserError
from gpt_jax.model import ModelConfig, decoder

WIDTH_MULTIPLE = 64  # short rows (zero-shot answers) are scored at a width rounded up to this


class Scorer:
  """`score(rows)`: log p(row[t+1] | row[:t+1]) for rows of `length` + 1 tokens."""

  def __init__(self, params, model_config: ModelConfig, mesh, batch_size: int, length: int):
    self.model_config, self.mesh, self.length = model_config, mesh, length
    self.batch_size = batch_size
    sharding.check_batch(batch_size, mesh)
    model = decoder(model_config)
    abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32))['params']
    )
    param_shardings = sharding.param_shardings(abstract, mesh)
    self._param_shardings = param_shardings
    self.params = None
    if params is not None:
      self.set_params(params)

    def score(params, rows):
      # asarray, not .astype: Flax types apply's result as logits or (logits, variables).
      logits = jnp.asarray(model.apply({'params': params}, rows[:, :-1]), jnp.float32)
      log_probs = jax.nn.log_softmax(logits)
      targets = rows[:, 1:]
      picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
      return picked, jnp.argmax(logits, axis=-1) == targets

    replicated = sharding.replicated(mesh)
    self._score = jax.jit(
      score,
      in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(replicated, replicated),
    )

  def set_params(self, params) -> None:
    """Scores with `params` from now on (same shapes; no recompilation)."""
    self.params = jax.device_put(nn.unbox(params), self._param_shardings)

  def score(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities, greedy flags), both (n, width - 1), for int rows (n, width).

    width is at most length + 1. Each row's padding is the caller's to choose
    and to ignore: padded targets score garbage.
    """
    rows = np.asarray(rows, np.int32)
    width = rows.shape[1]
    if not 1 < width <= self.length + 1:
      raise ValueError(f'rows of {width} tokens; the scorer takes 2 to {self.length + 1}')
    padded_width = min(-(-(width - 1) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE, self.length) + 1
    log_probs, greedy = [], []
    with sharding.use_mesh(self.mesh):
      for begin in range(0, len(rows), self.batch_size):
        batch = rows[begin : begin + self.batch_size]
        filled = np.zeros((self.batch_size, padded_width), np.int32)
        filled[: len(batch), :width] = batch
        picked, is_greedy = self._score(self.params, self._process_rows(filled))
        log_probs.append(np.asarray(picked)[: len(batch), : width - 1])
        greedy.append(np.asarray(is_greedy)[: len(batch), : width - 1])
    if not log_probs:
      return np.zeros((0, width - 1), np.float32), np.zeros((0, width - 1), bool)
    return np.concatenate(log_probs), np.concatenate(greedy)

  def _process_rows(self, batch: np.ndarray) -> jax.Array:
    """The global batch array, fed by each process with the rows its devices hold.

    Every process holds the whole batch (all read the same text), so a
    multi-process run only has to pick its share.
    """
    indices = sharding.batch_sharding(self.mesh).addressable_devices_indices_map(batch.shape)
    # An index is None only for a device holding none of the array; a batch sharding has none.
    rows = sorted(
      {
        row
        for index in indices.values()
        if index is not None
        for row in range(len(batch))[index[0]]
      }
    )
    return sharding.global_batch(batch[rows], self.mesh)


def score_continuations(scorer: Scorer, requests) -> list[tuple[float, int, bool]]:
  """(summed log-probability, tokens, all greedy) of each continuation after its context.

  `requests` holds (context ids, continuation ids) pairs; each context must
  hold at least one token (a caller without context puts a prefix token
  there). A sequence longer than the scorer's window keeps its last tokens,
  as lm-evaluation-harness does. Requests are scored longest first, so rows of
  similar lengths share a batch and a compiled width.
  """
  limit = scorer.length + 1
  for context, continuation in requests:
    if not context or len(continuation) >= limit:
      raise UserError(
        f'cannot score {len(continuation)} token(s) after a context of '
        f'{len(context)}: the context needs a token and the continuation '
        f'at most {limit - 1}'
      )
  order = sorted(range(len(requests)), key=lambda i: -sum(map(len, requests[i])))
  results: dict[int, tuple[float, int, bool]] = {}  # by position in `requests`
  for begin in range(0, len(order), scorer.batch_size):
    chunk = order[begin : begin + scorer.batch_size]
    sequences = [(list(requests[i][0]) + list(requests[i][1]))[-limit:] for i in chunk]
    rows = np.zeros((len(chunk), max(2, max(map(len, sequences)))), np.int32)
    for row, sequence in enumerate(sequences):
      rows[row, : len(sequence)] = sequence
    log_probs, greedy = scorer.score(rows)
    for row, (i, sequence) in enumerate(zip(chunk, sequences)):
      count, end = len(requests[i][1]), len(sequence) - 1  # targets end - count .. end - 1
      picked = log_probs[row, end - count : end].astype(np.float64)
      results[i] = (float(picked.sum()), count, bool(greedy[row, end - count : end].all()))
  return [results[i] for i in range(len(requests))]
