"""Our loop-free dropout mask against JAX's and Flax's own (it must be the very same mask)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from gpt_jax import dropout, sharding
from gpt_jax.model import GPT, ModelConfig


@pytest.mark.parametrize('shape', [(1,), (7,), (3, 5), (2, 3, 4, 5), (16, 6, 33, 17)])
def test_random_bits_are_jax_random_bits(shape):
  for seed in (0, 1, 2**31 + 5):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(
      jax.jit(dropout.random_bits, static_argnums=1)(key, shape), jax.random.bits(key, shape)
    )


@pytest.mark.parametrize('impl', ['threefry2x32', 'rbg'])  # rbg: JAX's bits, then the window
def test_a_windows_bits_are_the_whole_arrays_bits_there(impl):
  key, shape = jax.random.key(4, impl=impl), (2, 3, 10, 10)
  whole = jax.random.bits(key, shape)
  for start, window in [
    ((0, 0, 0, 0), shape),
    ((0, 0, 4, 0), (2, 3, 4, 8)),
    ((1, 2, 7, 3), (1, 1, 3, 7)),
  ]:
    region = tuple(map(slice, start, np.add(start, window)))
    np.testing.assert_array_equal(dropout.random_bits(key, shape, start, window), whole[region])


def test_dropout_in_pieces_equals_dropout_of_the_whole():
  x = jax.random.normal(jax.random.key(0), (2, 3, 10, 10))
  rngs = {'dropout': jax.random.key(7)}
  whole = dropout.Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)

  def in_two_pieces(module):
    drop = module.in_pieces(x.shape)
    return jnp.concatenate([drop(x[:, :, :4], (0, 0, 0, 0)), drop(x[:, :, 4:], (0, 0, 4, 0))], 2)

  pieces = dropout.Dropout(0.3).apply({}, rngs=rngs, method=in_two_pieces)
  np.testing.assert_array_equal(pieces, whole)


def test_threefry_matches_jax_threefry_on_arbitrary_counters():
  rng = np.random.default_rng(0)
  key = rng.integers(0, 2**32, 2, dtype=np.uint32)
  counts = rng.integers(0, 2**32, (2, 1000), dtype=np.uint32)
  ours = dropout.threefry2x32(jnp.uint32(key[0]), jnp.uint32(key[1]), counts[0], counts[1])
  theirs = jax.extend.random.threefry_2x32(key, counts.reshape(-1))
  np.testing.assert_array_equal(np.concatenate(ours), theirs)


def test_non_threefry_keys_fall_back_to_jax():
  key = jax.random.key(3, impl='rbg')
  np.testing.assert_array_equal(dropout.random_bits(key, (4, 5)), jax.random.bits(key, (4, 5)))


@pytest.mark.parametrize('rate', [0.0, 0.1, 0.5, 1.0])
def test_dropout_layer_equals_flax_dropout(rate):
  x = jax.random.normal(jax.random.key(0), (4, 9, 32))
  rngs = {'dropout': jax.random.key(7)}
  ours = dropout.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
  flax_dropout = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(ours, flax_dropout)
  np.testing.assert_array_equal(dropout.Dropout(rate).apply({}, x, deterministic=True), x)


def test_keep_fraction_and_independence():
  mask = np.asarray(dropout.keep_mask(jax.random.key(0), 0.9, (64, 1024)))
  assert abs(mask.mean() - 0.9) < 0.003  # 65,536 draws: 5 standard deviations is 0.006
  other = np.asarray(dropout.keep_mask(jax.random.key(1), 0.9, (64, 1024)))
  assert abs((mask & other).mean() - 0.81) < 0.004  # independent across keys


def test_gpt_training_forward_and_gradient_unchanged_from_flax_dropout(monkeypatch):
  config = ModelConfig(vocab_size=50, n_ctx=16, n_embd=32, n_layer=2, n_head=4, d_ff=64)
  tokens = jnp.arange(32).reshape(2, 16) % 50
  params = GPT(config).init(jax.random.key(0), tokens)['params']

  def loss(params):
    logits = GPT(config).apply(
      {'params': params}, tokens, deterministic=False, rngs={'dropout': jax.random.key(5)}
    )
    return jnp.mean(logits**2)

  class Dropout(nn.Dropout):  # the class name makes the module's name, and so its rng
    def in_pieces(self, shape):  # the attention runs as one block here: one piece
      return lambda piece, start: self(piece, deterministic=False)

  monkeypatch.setattr('gpt_jax.attention.CAUSAL_BLOCK', config.n_ctx)
  ours = jax.value_and_grad(loss)(params)
  monkeypatch.setattr('gpt_jax.model.Dropout', Dropout)
  theirs = jax.value_and_grad(loss)(params)
  jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_sharded_mask_equals_the_single_device_mask():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  x = jnp.ones((8, 4, 16, 16))
  layout = NamedSharding(mesh, PartitionSpec(('data', 'fsdp'), 'tensor'))

  @jax.jit
  def apply(x):
    return dropout.Dropout(0.1).apply(
      {}, x, deterministic=False, rngs={'dropout': jax.random.key(2)}
    )

  sharded = apply(jax.device_put(x, layout))
  assert sharded.sharding.is_equivalent_to(layout, x.ndim)
  np.testing.assert_array_equal(sharded, apply(x))
