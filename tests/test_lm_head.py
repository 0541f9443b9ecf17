"""The padded-vocabulary, chunked LM head and loss against float64 numpy and the plain path.

References: the weighted cross-entropy and its analytic gradients in float64 numpy, and the
pretraining loss of the model's own (unpadded, unchunked) logits differentiated by autodiff.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_config

from gpt_jax import lm_head, sample, train
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig

SEQUENCES, LENGTH, WIDTH, VOCAB = 3, 10, 8, 37


@pytest.fixture(scope='module')
def inputs():
  rng = np.random.default_rng(0)
  return (
    rng.normal(size=(SEQUENCES, LENGTH, WIDTH)).astype(np.float32),
    (0.5 * rng.normal(size=(VOCAB, WIDTH))).astype(np.float32),
    rng.integers(0, VOCAB, (SEQUENCES, LENGTH)).astype(np.int32),
    rng.uniform(size=(SEQUENCES, LENGTH)).astype(np.float32),
  )


def _float64_loss_and_grads(hidden, embedding, targets, weights):
  """The weighted loss, d/d hidden and d/d embedding, written out in float64."""
  hidden, embedding = hidden.astype(np.float64), embedding.astype(np.float64)
  logits = hidden @ embedding.T
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  loss = -(weights * np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]).sum()
  d_logits = weights[..., None] * (np.exp(log_probs) - np.eye(VOCAB)[targets])
  return loss, d_logits @ embedding, np.einsum('slv,sld->vd', d_logits, hidden)


@pytest.mark.parametrize('pad_to, chunk', [(128, 0), (16, 3), (128, 64)])
def test_padded_chunked_loss_and_gradients_equal_float64(inputs, pad_to, chunk):
  hidden, embedding, targets, weights = inputs
  loss, (d_hidden, d_embedding) = jax.value_and_grad(
    lambda h, e: lm_head.next_token_loss(h, e, targets, weights, pad_to, chunk), argnums=(0, 1)
  )(hidden, embedding)
  want_loss, want_hidden, want_embedding = _float64_loss_and_grads(*inputs)
  assert d_embedding.shape == embedding.shape  # the padding rows never leave the computation
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(d_hidden, want_hidden, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(d_embedding, want_embedding, rtol=1e-5, atol=1e-6)


def test_padded_logits_are_minus_infinity_past_the_vocabulary(inputs):
  hidden, embedding = inputs[0][0], inputs[1]
  padded = jnp.pad(embedding, ((0, lm_head.padded_vocab_size(VOCAB, 128) - VOCAB), (0, 0)))
  logits = lm_head.masked_logits(hidden, padded, VOCAB, 'float32')
  assert logits.shape == (LENGTH, 128)
  assert np.all(np.isneginf(logits[:, VOCAB:]))
  np.testing.assert_allclose(logits[:, :VOCAB], hidden @ embedding.T, rtol=1e-5, atol=1e-6)


def test_bfloat16_chunked_loss_equals_the_plain_bfloat16_loss(inputs):
  hidden, embedding, targets, weights = inputs

  def loss_and_grads(chunk):
    return jax.value_and_grad(
      lambda h, e: lm_head.next_token_loss(h, e, targets, weights, 128, chunk, 'bfloat16'),
      argnums=(0, 1),
    )(hidden.astype(jnp.bfloat16), embedding)

  (loss, grads), (want_loss, want_grads) = loss_and_grads(4), loss_and_grads(0)
  assert grads[0].dtype == jnp.bfloat16
  np.testing.assert_allclose(loss, want_loss, rtol=1e-3)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=2e-2, atol=2e-2)


@pytest.fixture(scope='module')
def tiny_model():
  """A tiny GPT whose vocabulary (61) is no multiple of 128, its parameters and windows."""
  config = ModelConfig.from_config(
    {**tiny_config(vocab_size=61, n_layer=1, embd_pdrop=0.0, resid_pdrop=0.0).model}
  )
  windows = np.random.default_rng(1).integers(0, 61, (4, 17)).astype(np.int32)
  params = jax.jit(GPT(config).init)(jax.random.key(0), windows[:, :-1])['params']
  return (
    config,
    jax.tree.map(
      lambda p: p.unbox() if hasattr(p, 'unbox') else p,
      params,
      is_leaf=lambda p: hasattr(p, 'unbox'),
    ),
    windows,
  )


def test_pretraining_loss_and_gradients_equal_the_plain_logits_path(tiny_model):
  config, params, windows = tiny_model

  def plain(params):  # the model's own logits, a mean cross-entropy, autodiff
    logits = GPT(config).apply({'params': params}, windows[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

  want_loss, want_grads = jax.jit(jax.value_and_grad(plain))(params)
  padded_chunked = dataclasses.replace(config, pad_vocab_to=128, lm_chunk=5)
  loss_fn = train.lm_loss_fn(GPT(padded_chunked))
  loss, grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, windows, None, True)[0]))(params)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_sampling_with_a_padded_vocabulary_never_emits_a_padded_id(tiny_model):
  config, params, _ = tiny_model
  prompts = [[1, 2, 3], [60]]

  tokens, logits = sample.generate(
    params,
    dataclasses.replace(config, pad_vocab_to=128),
    prompts,
    12,
    temperature=3.0,  # flat enough that every id has its chance
    seed=4,
    return_logits=True,
  )
  assert all(0 <= t < 61 for row in tokens for t in row)
  assert all(row.shape[-1] == 61 for row in logits)


def test_chunked_step_holds_less_than_one_full_logits_buffer():
  """XLA's temporaries for the pretraining loss and its gradient, with and without chunks."""
  config = ModelConfig(vocab_size=4000, n_ctx=128, n_embd=32, n_layer=1, n_head=2, d_ff=64)
  windows = jax.ShapeDtypeStruct((8, 129), jnp.int32)
  params = jax.eval_shape(
    lambda: GPT(config).init(jax.random.key(0), jnp.zeros((1, 128), jnp.int32))['params']
  )
  full_logits_bytes = 8 * 128 * 4096 * 4  # float32 logits of every position, padded vocab

  def temp_bytes(chunk):
    loss_fn = train.lm_loss_fn(GPT(dataclasses.replace(config, pad_vocab_to=128, lm_chunk=chunk)))
    grad = jax.grad(lambda p, w: loss_fn(p, w, None, True)[0])
    compiled = jax.jit(grad).lower(params, windows).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(0) > full_logits_bytes
  assert temp_bytes(16) < full_logits_bytes


def test_bad_padding_and_chunk_name_the_field():
  with pytest.raises(UserError, match='model.pad_vocab_to'):
    ModelConfig(pad_vocab_to=0)
  with pytest.raises(UserError, match='model.lm_chunk'):
    ModelConfig(lm_chunk=-1)
