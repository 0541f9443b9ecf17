"""Properties of the decoder that need no reference implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig


def _model_and_params(**overrides):
  config = ModelConfig(
    vocab_size=50, n_ctx=16, n_embd=32, n_layer=2, n_head=4, d_ff=64, **overrides
  )
  model = GPT(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params']
  return model, jax.tree.map(
    lambda p: p.unbox() if hasattr(p, 'unbox') else p, params, is_leaf=lambda p: hasattr(p, 'unbox')
  )


def test_changing_future_tokens_leaves_past_logits_unchanged():
  model, params = _model_and_params()
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 50, (2, 16))
  for t in (0, 5, 14):
    changed = tokens.copy()
    changed[:, t + 1 :] = rng.integers(0, 50, (2, 15 - t))
    a = model.apply({'params': params}, tokens)
    b = model.apply({'params': params}, changed)
    np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])
    assert np.abs(a[:, t + 1 :] - b[:, t + 1 :]).max() > 1e-4  # the future did change


def test_initialisation_follows_the_paper():
  _, params = _model_and_params()
  kernel = np.asarray(params['h_0']['mlp']['c_fc']['kernel'])
  assert abs(kernel.std() - 0.02) < 0.002 and abs(kernel.mean()) < 0.002
  np.testing.assert_array_equal(params['h_1']['attn']['c_attn']['bias'], 0)
  np.testing.assert_array_equal(params['h_1']['ln_2']['scale'], 1)
  np.testing.assert_array_equal(params['h_1']['ln_2']['bias'], 0)
  assert 'ln_f' not in params  # GPT-1 has no final LayerNorm


def test_output_layer_is_the_transposed_token_embedding():
  model, params = _model_and_params()
  tokens = jnp.arange(8)[None]
  hidden = model.apply({'params': params}, tokens, method=GPT.hidden_states)
  logits = model.apply({'params': params}, tokens)
  expected = (
    np.asarray(hidden, np.float64) @ np.asarray(params['tokens_embed']['embedding'], np.float64).T
  )
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_dropout_only_in_training_mode():
  model, params = _model_and_params()
  tokens = jnp.arange(16)[None]
  eval_a = model.apply({'params': params}, tokens)
  eval_b = model.apply({'params': params}, tokens, deterministic=True)
  train = model.apply(
    {'params': params}, tokens, deterministic=False, rngs={'dropout': jax.random.key(1)}
  )
  np.testing.assert_array_equal(eval_a, eval_b)
  assert np.abs(train - eval_a).max() > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model, params = _model_and_params(dtype='bfloat16')
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = model.apply({'params': params}, jnp.arange(8)[None])
  assert logits.dtype == jnp.float32
  reference = GPT(model.config.__class__(**{**model.config.__dict__, 'dtype': 'float32'}))
  full = reference.apply({'params': params}, jnp.arange(8)[None])
  assert np.abs(logits - full).max() < 0.1


def test_remat_gives_identical_gradients():
  model, params = _model_and_params()
  remat_model, _ = _model_and_params(remat=True)
  tokens = jnp.arange(16)[None] % 50

  def loss(m):
    return lambda p: m.apply({'params': p}, tokens).mean()

  a = jax.grad(loss(model))(params)
  b = jax.grad(loss(remat_model))(params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_sequence_longer_than_context_is_a_clear_error():
  model, params = _model_and_params()
  with pytest.raises(UserError, match='exceeds the model context'):
    model.apply({'params': params}, jnp.zeros((1, 17), jnp.int32))


def test_config_errors_are_clear():
  with pytest.raises(UserError, match='n_layr'):
    ModelConfig.from_config({'n_layr': 2})
  with pytest.raises(UserError, match='not divisible'):
    ModelConfig.from_config({'n_embd': 30, 'n_head': 4})
