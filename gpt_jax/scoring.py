"""Token log-probabilities of a language model, batched and jitted on the device mesh.

The one forward pass that evaluation (`gpt_jax.evaluation`) scores text with:
rows of tokens in, each next token's log-probability (and whether it was the
model's greedy choice) out. Parameters are placed on the mesh by the model's
logical axis names, rows are split over data x fsdp, and every call runs at one
fixed shape (the last batch padded with empty rows), so a pass compiles once.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import sharding
from gpt_jax.model import GPT, ModelConfig


class Scorer:
  """`score(rows)`: log p(row[t+1] | row[:t+1]) for rows of `length` + 1 tokens."""

  def __init__(self, params, model_config: ModelConfig, mesh, batch_size: int, length: int):
    self.model_config, self.mesh, self.length = model_config, mesh, length
    self.batch_size = batch_size
    sharding.check_batch(batch_size, mesh)
    model = GPT(model_config)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 jnp.zeros((1, length), jnp.int32))['params'])
    sharding.check_divisible(abstract, mesh)
    param_shardings = sharding.logical_to_mesh(nn.get_partition_spec(abstract), mesh)
    self.params = jax.device_put(nn.unbox(params), param_shardings)

    def score(params, rows):
      logits = model.apply({'params': params}, rows[:, :-1]).astype(jnp.float32)
      log_probs = jax.nn.log_softmax(logits)
      targets = rows[:, 1:]
      picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
      return picked, jnp.argmax(logits, axis=-1) == targets

    replicated = sharding.replicated(mesh)
    self._score = jax.jit(score, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                          out_shardings=(replicated, replicated))

  def score(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities, greedy flags), both (len(rows), length), for int rows (n, length + 1).

    Rows shorter than length + 1 are the caller's to pad (padded targets score
    garbage that the caller ignores).
    """
    rows = np.asarray(rows, np.int32)
    log_probs, greedy = [], []
    with sharding.use_mesh(self.mesh):
      for begin in range(0, len(rows), self.batch_size):
        batch = rows[begin:begin + self.batch_size]
        filled = np.zeros((self.batch_size, self.length + 1), np.int32)
        filled[:len(batch)] = batch
        picked, is_greedy = self._score(self.params, sharding.global_batch(filled, self.mesh))
        log_probs.append(np.asarray(picked)[:len(batch)])
        greedy.append(np.asarray(is_greedy)[:len(batch)])
    if not log_probs:
      return np.zeros((0, self.length), np.float32), np.zeros((0, self.length), bool)
    return np.concatenate(log_probs), np.concatenate(greedy)
