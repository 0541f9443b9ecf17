"""The paper's LSTM baseline: one LSTM layer of 2,048 units under GPT-1's tied embeddings.

Radford et al. (2018, section 5) compare the Transformer with "a single layer 2048 unit
LSTM" trained the same way. Read top to bottom: the cell (a pure function, the standard
LSTM a numpy reference reproduces), then the model, which has the decoder interface of
`gpt_jax.model.GPT` (hidden_states, logits, next_token_loss, decode), so pretraining,
fine-tuning heads, zero-shot scoring and sampling take either.

    x_t = E[token_t]                                  (no position embeddings)
    z_t = x_t @ W_x + h_{t-1} @ W_h + b               gates (4, units): [i | f | g | o]
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)
    y_t = h_t @ W_proj                                (units -> n_embd; absent if equal)
    logits_t = y_t @ E^T                              (tied with the token embedding)

`y_t` is the model's "hidden state": the task heads read it at `<e>` and the LM loss
runs on it, exactly as on the Transformer's last block. The projection keeps the tie
with an embedding of n_embd columns while the recurrent state is wider (2,048 vs 768).
Dropout (model.embd_pdrop) acts on the embeddings and (model.resid_pdrop) on h_t.
Weights are drawn from N(0, 0.02) and biases start at zero, as everywhere in GPT-1.
"""

from typing import Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax import lm_head
from gpt_jax.dropout import Dropout

GATES = 4  # input, forget, cell candidate, output

_weight_init = nn.initializers.normal(stddev=0.02)


class LSTMSizes(Protocol):
  """The fields of gpt_jax.model.ModelConfig (a frozen dataclass) the LSTM reads."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def n_ctx(self) -> int: ...

  @property
  def n_embd(self) -> int: ...

  @property
  def lstm_units(self) -> int: ...

  @property
  def embd_pdrop(self) -> float: ...

  @property
  def resid_pdrop(self) -> float: ...

  @property
  def dtype(self) -> str: ...

  @property
  def param_dtype(self) -> str: ...

  @property
  def pad_vocab_to(self) -> int: ...

  @property
  def lm_chunk(self) -> int: ...


def cell(weights: dict, carry, x_gates):
  """One LSTM step. carry: (h, c) float32 (batch, units); x_gates: x_t @ W_x + b
  (batch, 4, units). Returns the new (h, c)."""
  h, c = carry
  z = x_gates + jnp.einsum('bu,ugv->bgv', h.astype(x_gates.dtype), weights['recurrent_kernel'])
  z = z.astype(jnp.float32)
  i, f, g, o = (z[:, k] for k in range(GATES))
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return h, c


def run(weights: dict, carry, x_gates, keep=None):
  """The cell over time with lax.scan: x_gates (batch, length, 4, units) -> the states h
  (batch, length, units) and the last carry. Where `keep` (batch, length) is False (left
  padding while decoding) a step leaves the carry as it was."""

  def step(carry, inputs):
    x_t, keep_t = inputs
    new = cell(weights, carry, x_t)
    if keep_t is not None:
      new = tuple(jnp.where(keep_t[:, None], n, o) for n, o in zip(new, carry))
    return new, new[0]

  keep_by_time = None if keep is None else jnp.swapaxes(keep, 0, 1)
  carry, hs = jax.lax.scan(step, carry, (jnp.swapaxes(x_gates, 0, 1), keep_by_time))
  return jnp.swapaxes(hs, 0, 1), carry


class RecurrentState(nn.Module):
  """The (h, c) after every token decoded so far, in the 'cache' collection.

  The decoding counterpart of gpt_jax.model.KeyValueCache: each call runs the cell over
  its n new tokens from the stored state, at slots [index, index + n); slots where
  `cache_mask` (batch, cache_len) is False are padding and leave the state as it was.
  """

  units: int

  @nn.compact
  def __call__(self, weights: dict, x_gates, cache_mask) -> jax.Array:
    batch, length = x_gates.shape[:2]
    h = self.variable('cache', 'h', jnp.zeros, (batch, self.units), jnp.float32)
    c = self.variable('cache', 'c', jnp.zeros, (batch, self.units), jnp.float32)
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    keep = jax.lax.dynamic_slice_in_dim(cache_mask, index.value, length, axis=1)
    states, (h.value, c.value) = run(weights, (h.value, c.value), x_gates, keep)
    index.value = index.value + length
    return states


class LSTM(nn.Module):
  """Token embedding, one LSTM layer, a projection to n_embd, and the tied output layer."""

  config: LSTMSizes

  def setup(self) -> None:
    cfg = self.config
    units, d = cfg.lstm_units, cfg.n_embd

    def param(name, shape, axes, init=_weight_init):
      return self.param(name, nn.with_logical_partitioning(init, axes), shape, cfg.param_dtype)

    self.tokens_embed = nn.Embed(
      cfg.vocab_size,
      d,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=nn.with_logical_partitioning(_weight_init, ('vocab', 'embed')),
    )
    self.input_kernel = param('input_kernel', (d, GATES, units), ('embed', 'gates', 'lstm'))
    self.recurrent_kernel = param(
      'recurrent_kernel', (units, GATES, units), ('lstm_in', 'gates', 'lstm')
    )
    self.bias = param('bias', (GATES, units), ('gates', 'lstm'), nn.initializers.zeros)
    self.proj = param('proj', (units, d), ('lstm', 'embed')) if units != d else None
    self.drop_in = Dropout(cfg.embd_pdrop)
    self.drop_out = Dropout(cfg.resid_pdrop)
    self.state = RecurrentState(cfg.lstm_units)

  def _weights(self) -> dict:
    return {'recurrent_kernel': jnp.asarray(self.recurrent_kernel, self.config.dtype)}

  def _gates(self, tokens, deterministic: bool) -> jax.Array:
    """x_t @ W_x + b for every position at once: (batch, length, 4, units)."""
    cfg = self.config
    x = self.drop_in(self.tokens_embed(tokens), deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('activation_batch', 'activation_length', 'activation_embed'))
    kernel = jnp.asarray(self.input_kernel, cfg.dtype)
    return jnp.einsum('bld,dgu->blgu', x, kernel) + jnp.asarray(self.bias, cfg.dtype)

  def _output(self, h, deterministic: bool) -> jax.Array:
    """y_t: the states projected to n_embd (the hidden state heads and the LM head read)."""
    cfg = self.config
    h = self.drop_out(h.astype(cfg.dtype), deterministic=deterministic)
    if self.proj is not None:
      h = jnp.einsum('blu,ud->bld', h, jnp.asarray(self.proj, cfg.dtype))
    return nn.with_logical_constraint(
      h, ('activation_batch', 'activation_length', 'activation_embed')
    )

  def _zero_carry(self, batch: int):
    zeros = jnp.zeros((batch, self.config.lstm_units), jnp.float32)
    return zeros, zeros

  def __call__(self, tokens, deterministic: bool = True):
    return self.logits(self.hidden_states(tokens, deterministic))

  def hidden_states(self, tokens, deterministic: bool = True) -> jax.Array:
    """y (batch, length, n_embd) from a zero initial state."""
    h, _ = run(
      self._weights(), self._zero_carry(tokens.shape[0]), self._gates(tokens, deterministic)
    )
    return self._output(h, deterministic)

  def next_token_loss(self, hidden, targets, weights, chunk: int) -> jax.Array:
    """As GPT.next_token_loss: the chunked, padded-vocabulary LM loss of gpt_jax.lm_head."""
    cfg = self.config
    return lm_head.next_token_loss(
      hidden, self.tokens_embed.embedding, targets, weights, cfg.pad_vocab_to, chunk, cfg.dtype
    )

  def logits(self, hidden) -> jax.Array:
    """Language-model logits through the transposed token embedding, in float32."""
    logits = self.tokens_embed.attend(hidden.reshape(-1, hidden.shape[-1]))
    return logits.reshape(*hidden.shape[:-1], -1).astype(jnp.float32)

  def decode(self, tokens, positions, cache_mask) -> jax.Array:
    """Logits (batch, vocab) after the last of `tokens`, carrying (h, c) in the cache.

    The same call as GPT.decode (apply with mutable=['cache']); the 'cache' collection
    holds the state after every token fed so far and the slot index. `positions` is
    unused (there are no position embeddings); slots where cache_mask is False (left
    padding) leave the state untouched, so a padded row decodes as it would alone.
    """
    del positions
    states = self.state(self._weights(), self._gates(tokens, True), cache_mask)
    return self.logits(self._output(states[:, -1:], True))[:, 0]


def parameter_count(config: LSTMSizes) -> int:
  """The LSTM's parameters: embedding, the two gate kernels and bias, the projection."""
  units, d = config.lstm_units, config.n_embd
  proj = units * d if units != d else 0
  return config.vocab_size * d + GATES * units * (d + units + 1) + proj
