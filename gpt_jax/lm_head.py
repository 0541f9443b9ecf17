"""GPT-1's language-model head and its next-token cross-entropy, without waste on an accelerator.

The head is the tied output layer: logits = hidden @ token_embedding.T. Two things keep a
training step from wasting the chip on it:

- The vocabulary is padded with zero rows to a multiple of `pad_to` (40,478 -> 40,576 for
  128) inside the computation only, so the two big matmuls get tile-sized shapes. The padded
  logits are -inf: outside every softmax and loss, and they get no gradient. The stored
  embedding keeps its rows, so checkpoints, exports and the parameter count do not change.
- With `chunk` > 0 the loss takes that many positions of every sequence at a time (the batch
  axis stays whole, so it stays split over the mesh) and computes each chunk's loss and its
  gradients with respect to the hidden states and the embedding in the same pass. float32
  (tokens x vocab) logits then exist one chunk at a time and only once: the backward pass
  scales the gradients it was handed instead of recomputing or storing any logits.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def padded_vocab_size(vocab_size: int, pad_to: int) -> int:
  """`vocab_size` rounded up to a multiple of `pad_to` (1: unchanged)."""
  return -(-vocab_size // pad_to) * pad_to


def masked_logits(hidden: jax.Array, embedding: jax.Array, vocab_size: int, dtype: str):
  """float32 logits (tokens, rows) of hidden states (tokens, width) through an embedding of
  `rows` >= vocab_size rows, computed in `dtype`; the columns of padding rows are -inf."""
  logits = jnp.dot(hidden.astype(dtype), embedding.astype(dtype).T).astype(jnp.float32)
  if embedding.shape[0] == vocab_size:
    return logits
  return jnp.where(jnp.arange(embedding.shape[0]) < vocab_size, logits, -jnp.inf)


def _loss_and_logit_grads(logits: jax.Array, targets: jax.Array, weights: jax.Array):
  """sum(weights * cross-entropy) of logits (tokens, rows), and its gradient w.r.t. the logits."""
  log_normaliser = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  is_target = jnp.arange(logits.shape[-1]) == targets[:, None]
  target_logits = jnp.where(is_target, logits, 0.0).sum(-1)
  loss = (weights * (log_normaliser[:, 0] - target_logits)).sum()
  probabilities = jnp.exp(logits - log_normaliser)
  return loss, weights[:, None] * (probabilities - is_target)


def _by_chunk(x: jax.Array, chunk: int) -> jax.Array:
  """(sequences, length, ...) -> (chunks, sequences, chunk, ...), zero-padded at the end."""
  chunks = -(-x.shape[1] // chunk)
  x = jnp.pad(x, ((0, 0), (0, chunks * chunk - x.shape[1])) + ((0, 0),) * (x.ndim - 2))
  return jnp.moveaxis(x.reshape(x.shape[0], chunks, chunk, *x.shape[2:]), 1, 0)


def _chunked(hidden, embedding, targets, weights, vocab_size, chunk, dtype, with_grads):
  """The weighted loss summed over chunks of positions; with_grads: also its gradients
  w.r.t. hidden (its shape and dtype) and the embedding (float32)."""
  sequences, length, width = hidden.shape
  chunk = min(chunk, length)
  head = embedding.astype(dtype)

  def add_chunk(carry, inputs):
    loss, d_embedding = carry
    hidden_chunk, target_chunk, weight_chunk = inputs
    flat = hidden_chunk.reshape(-1, width)
    logits = masked_logits(flat, head, vocab_size, dtype)
    chunk_loss, d_logits = _loss_and_logit_grads(
      logits, target_chunk.reshape(-1), weight_chunk.reshape(-1)
    )
    if not with_grads:
      return (loss + chunk_loss, d_embedding), None
    d_logits = d_logits.astype(dtype)
    d_hidden = jnp.dot(d_logits, head).astype(hidden.dtype).reshape(hidden_chunk.shape)
    d_embedding += jax.lax.dot_general(
      d_logits, flat.astype(dtype), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    return (loss + chunk_loss, d_embedding), d_hidden

  d_embedding = jnp.zeros(embedding.shape, jnp.float32) if with_grads else None
  (loss, d_embedding), d_hidden = jax.lax.scan(
    add_chunk,
    (jnp.zeros((), jnp.float32), d_embedding),
    (_by_chunk(hidden, chunk), _by_chunk(targets, chunk), _by_chunk(weights, chunk)),
  )
  if not with_grads:
    return loss, None, None
  assert d_embedding is not None  # accumulated by every chunk when with_grads
  d_hidden = jnp.moveaxis(d_hidden, 0, 1).reshape(sequences, -1, width)[:, :length]
  return loss, d_hidden, d_embedding.astype(embedding.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused_loss(hidden, embedding, targets, weights, vocab_size, chunk, dtype):
  return _chunked(hidden, embedding, targets, weights, vocab_size, chunk, dtype, False)[0]


def _fused_loss_forward(hidden, embedding, targets, weights, vocab_size, chunk, dtype):
  loss, d_hidden, d_embedding = _chunked(
    hidden, embedding, targets, weights, vocab_size, chunk, dtype, True
  )
  return loss, (d_hidden, d_embedding, targets, weights)


def _fused_loss_backward(vocab_size, chunk, dtype, residuals, cotangent):
  d_hidden, d_embedding, targets, weights = residuals
  return (
    (cotangent * d_hidden).astype(d_hidden.dtype),
    cotangent * d_embedding,
    np.zeros(targets.shape, jax.dtypes.float0),  # integer targets have no gradient
    jnp.zeros_like(weights),  # weights come from the data, not the parameters
  )


_fused_loss.defvjp(_fused_loss_forward, _fused_loss_backward)


def next_token_loss(
  hidden: jax.Array,
  embedding: jax.Array,
  targets: jax.Array,
  weights: jax.Array,
  pad_to: int = 1,
  chunk: int = 0,
  dtype: str = 'float32',
) -> jax.Array:
  """sum over (s, t) of weights[s, t] * -log softmax(hidden[s, t] @ embedding.T)[targets[s, t]].

  hidden (sequences, length, width), targets and weights (sequences, length); a weight of 0
  leaves a position out, 1 / targets.size makes the mean. The vocabulary is padded to a
  multiple of `pad_to`; `chunk` positions per sequence get their logits at a time, their
  gradients computed at once (0: the plain computation, all logits at once, left to autodiff).
  """
  vocab_size = embedding.shape[0]
  rows = padded_vocab_size(vocab_size, pad_to) - vocab_size
  embedding = jnp.pad(embedding, ((0, rows), (0, 0)))  # its gradient drops the padding again
  weights = weights.astype(jnp.float32)
  if chunk > 0:
    return _fused_loss(hidden, embedding, targets, weights, vocab_size, chunk, dtype)
  logits = masked_logits(hidden.reshape(-1, hidden.shape[-1]), embedding, vocab_size, dtype)
  # Autodiff differentiates the loss; XLA drops the logit gradients computed alongside.
  return _loss_and_logit_grads(logits, targets.reshape(-1), weights.reshape(-1))[0]
