"""The attention implementations behind model.attention.

The reference for the kernels is a float64 numpy attention written here;
`xla` itself is held to Hugging Face in test_model_reference.py. Splash is a
TPU kernel: it is compiled for a v5e slice through libtpu (no TPU needed).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import needs_libtpu, tiny_config

from gpt_jax import attention, dryrun, sample, sharding
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig

SMALL = ModelConfig(vocab_size=96, n_ctx=32, n_embd=32, n_layer=2, n_head=4, d_ff=64)


def numpy_attention(query, key, value, mask):
  """softmax(q k^T / sqrt(d) where mask) v in float64; (batch, length, heads, head_dim)."""
  q, k, v = (np.asarray(x, np.float64) for x in (query, key, value))
  scores = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', probs, v)


def _qkv(batch=2, q_len=16, kv_len=16, heads=4, head_dim=8, seed=0):
  rng = np.random.default_rng(seed)
  return (
    rng.standard_normal((batch, q_len, heads, head_dim), np.float32),
    rng.standard_normal((batch, kv_len, heads, head_dim), np.float32),
    rng.standard_normal((batch, kv_len, heads, head_dim), np.float32),
  )


@pytest.mark.parametrize(
  'implementation,causal_block', [('xla', 128), ('xla', 5), ('dot_product_attention', 128)]
)
def test_causal_attention_matches_float64_reference(implementation, causal_block, monkeypatch):
  monkeypatch.setattr(attention, 'CAUSAL_BLOCK', causal_block)  # 5: blocks 5, 5, 5 and 1
  query, key, value = _qkv()
  causal = np.tril(np.ones((16, 16), bool))
  ours = jax.jit(lambda q, k, v: attention.attend(implementation, q, k, v))(query, key, value)
  np.testing.assert_allclose(ours, numpy_attention(query, key, value, causal), atol=1e-5)


@pytest.mark.parametrize('implementation', attention.IMPLEMENTATIONS)
def test_cache_mask_attention_matches_float64_reference(implementation):
  # Two new queries against a cache of 10 slots; row 1's first 3 slots are padding.
  query, key, value = _qkv(q_len=2, kv_len=10)
  slots = np.arange(10)
  mask = (slots[None, :] <= 5 + np.arange(2)[:, None])[None, None] & (
    slots >= np.array([[0], [3]])
  )[:, None, None, :]
  ours = jax.jit(lambda q, k, v, m: attention.attend(implementation, q, k, v, m))(
    query, key, value, mask
  )
  np.testing.assert_allclose(ours, numpy_attention(query, key, value, mask), atol=1e-5)


def test_causal_blocks_train_as_one_block_does(monkeypatch):
  """The same loss and gradients, attention-probability dropout included (its masks are the
  whole array's, block by block), up to the rounding of the softmax's shorter sums."""
  config = dataclasses.replace(SMALL, attn_pdrop=0.5)
  tokens = np.random.default_rng(1).integers(0, SMALL.vocab_size, (2, 30))
  params = GPT(config).init(jax.random.key(0), tokens[:, :8])['params']

  def loss(params):
    logits = GPT(config).apply(
      {'params': params}, tokens, deterministic=False, rngs={'dropout': jax.random.key(5)}
    )
    return jnp.mean(logits**2)

  results = {}
  for block in (32, 8):  # one block; blocks of 8, 8, 8 and 6 queries
    monkeypatch.setattr(attention, 'CAUSAL_BLOCK', block)
    results[block] = jax.value_and_grad(loss)(params)
  jax.tree.map(
    lambda one, blocked: np.testing.assert_allclose(blocked, one, rtol=1e-5, atol=1e-7),
    results[32],
    results[8],
  )


def test_dot_product_attention_logits_equal_xla():
  params = GPT(SMALL).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  tokens = np.random.default_rng(1).integers(0, SMALL.vocab_size, (3, 32))
  logits = {}
  for implementation in ('xla', 'dot_product_attention'):
    model = GPT(dataclasses.replace(SMALL, attention=implementation))
    logits[implementation] = np.asarray(jax.jit(model.apply)({'params': params}, tokens))
  assert np.abs(logits['xla']).max() > 0.1  # not a degenerate comparison
  np.testing.assert_allclose(logits['dot_product_attention'], logits['xla'], rtol=0, atol=1e-5)


def test_dot_product_attention_decodes_like_xla_through_the_cache():
  params = GPT(SMALL).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  prompts = [[5, 17, 3, 60, 2], [9, 9]]  # different lengths: left padding in the cache
  results = {}
  for implementation in ('xla', 'dot_product_attention'):
    config = dataclasses.replace(SMALL, attention=implementation)
    results[implementation] = sample.generate(
      params, config, prompts, 6, temperature=0.0, return_logits=True
    )
  (xla_tokens, xla_logits), (dpa_tokens, dpa_logits) = results.values()
  assert dpa_tokens == xla_tokens
  for ours, reference in zip(dpa_logits, xla_logits):
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize('implementation', ['dot_product_attention', 'splash'])
def test_kernels_without_dropout_refuse_to_train_with_attention_dropout(implementation):
  config = dataclasses.replace(SMALL, attention=implementation, attn_pdrop=0.1)
  model = GPT(config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = GPT(SMALL).init(jax.random.key(0), tokens)['params']
  with pytest.raises(UserError, match='attn_pdrop=0'):
    model.apply(
      {'params': params}, tokens, deterministic=False, rngs={'dropout': jax.random.key(1)}
    )
  if implementation == 'dot_product_attention':  # evaluation has no dropout: allowed
    model.apply({'params': params}, tokens, deterministic=True)


def test_unknown_attention_is_a_user_error():
  with pytest.raises(UserError, match="model.attention='flashy'"):
    ModelConfig.from_config({'attention': 'flashy'})


def test_splash_on_cpu_is_a_user_error():
  model = GPT(dataclasses.replace(SMALL, attention='splash', attn_pdrop=0.0))
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  with jax.set_mesh(mesh), pytest.raises(UserError, match='TPU kernel'):
    jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))


@needs_libtpu
def test_splash_and_flash_train_steps_compile_for_v5e_and_save_scores_memory(monkeypatch):
  monkeypatch.setattr(attention, 'CAUSAL_BLOCK', 1024)  # xla with the whole scores at once
  config = tiny_config(n_ctx=1024, n_head=2)  # heads of 16: flash's smallest
  config.train.update(seq_len=1024, batch_size=8)
  config.mesh.update(data=8, fsdp=1, tensor=1)
  reports = {}
  for implementation, attn_pdrop in (('xla', 0.0), ('splash', 0.0), ('flash', 0.1)):
    config.model.update(attention=implementation, attn_pdrop=attn_pdrop)
    reports[implementation] = dryrun.dry_run(config, 'v5e:2x4')
  assert all(report.fits for report in reports.values())
  # One row per chip: xla's peak holds at least one layer's (2 heads, 1024, 1024) float32
  # probabilities; splash and flash (its dropout included) never write the scores out.
  scores_bytes = 2 * 1024**2 * 4
  for kernel in ('splash', 'flash'):
    assert reports[kernel].peak_bytes + scores_bytes <= reports['xla'].peak_bytes
