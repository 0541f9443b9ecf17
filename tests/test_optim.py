"""The paper's optimizer: decoupled weight decay on matrices, schedules, clipping."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gpt_jax import optim
from gpt_jax.model import GPT, ModelConfig


def _params():
  model = GPT(ModelConfig(vocab_size=20, n_ctx=8, n_embd=16, n_layer=1, n_head=2, d_ff=32))
  boxed = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  return jax.tree.map(lambda p: p.unbox(), boxed, is_leaf=lambda p: hasattr(p, 'unbox'))


def _flat(tree):
  return {
    '/'.join(str(k.key) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def test_weight_decay_touches_exactly_the_weight_matrices():
  params = _params()
  decayed = {name for name, flag in _flat(optim.decay_mask(params)).items() if flag}
  # In GPT-1's own (flattened) layout these are exactly the 2-D parameters.
  assert decayed == {
    'tokens_embed/embedding',
    'positions_embed/embedding',
    'h_0/attn/c_attn/kernel',
    'h_0/attn/c_proj/kernel',
    'h_0/mlp/c_fc/kernel',
    'h_0/mlp/c_proj/kernel',
  }
  # Apply AdamW with zero gradients: only decayed leaves move, by lr * wd * p.
  config = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-2,
      schedule='linear',
      warmup_fraction=0.5,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.01,
      clip_norm=1.0,
    )
  )
  tx, schedule = optim.make_optimizer(config, total_steps=4)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  _, state = tx.update(zeros, state, params)  # step 0 has lr 0
  updates, _ = tx.update(zeros, state, params)
  lr = float(schedule(1))
  for name, update in _flat(updates).items():
    param = np.asarray(_flat(params)[name], np.float64)
    expected = -lr * 0.01 * param if name in decayed else np.zeros_like(param)
    np.testing.assert_allclose(update, expected, atol=1e-9, err_msg=name)


def test_pretraining_schedule_warms_up_linearly_then_cosine_to_zero():
  schedule = optim.pretrain_schedule(2.5e-4, warmup_steps=2000, total_steps=10000)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(1000)), 1.25e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(2000)), 2.5e-4, rtol=1e-6)
  middle = 2000 + 8000 // 2
  np.testing.assert_allclose(float(schedule(middle)), 1.25e-4, rtol=1e-5)
  assert float(schedule(10000)) == pytest.approx(0.0, abs=1e-12)


def test_finetuning_schedule_warms_up_over_a_fraction_then_decays_linearly():
  schedule = optim.finetune_schedule(6.25e-5, warmup_fraction=0.002, total_steps=5000)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 6.25e-5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(2505)), 6.25e-5 / 2, rtol=1e-5)
  assert float(schedule(5000)) == pytest.approx(0.0, abs=1e-12)


def test_the_optimizer_clips_gradients_to_global_norm_one_before_adam():
  config = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-3,
      schedule='cosine',
      warmup_steps=0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      clip_norm=1.0,
    )
  )
  tx, _ = optim.make_optimizer(config, total_steps=10)
  params = {'a': jnp.zeros(3), 'b': jnp.zeros(4)}
  grads = {'a': jnp.array([30.0, -40.0, 0.0]), 'b': jnp.array([0.0, 0.0, 120.0, 0.0])}  # norm 130
  _, state = tx.update(grads, tx.init(params), params)
  # Adam's first moment after one update is (1 - b1) * g for the g it received: the clipped one.
  (mu,) = [leaf for path, leaf in optax.tree_utils.tree_get_all_with_path(state, 'mu')]
  expected = {k: np.asarray(g, np.float64) / 130.0 for k, g in grads.items()}
  for name in grads:
    np.testing.assert_allclose(mu[name], 0.1 * expected[name], rtol=1e-6, atol=1e-9)
  # A gradient already inside the norm passes unchanged.
  small = {'a': jnp.array([0.3, 0.0, 0.0]), 'b': jnp.zeros(4)}
  _, state = tx.update(small, tx.init(params), params)
  (mu,) = [leaf for path, leaf in optax.tree_utils.tree_get_all_with_path(state, 'mu')]
  np.testing.assert_allclose(mu['a'], [0.03, 0.0, 0.0], rtol=1e-6)


def test_accumulated_gradients_equal_the_full_batch_gradient():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(3,)))
  batch = jnp.asarray(rng.normal(size=(8, 3)))

  def loss_and_grad(params, rows, index):
    return jax.value_and_grad(lambda p: (jnp.mean((rows @ p) ** 2), {}), has_aux=True)(params)

  full = loss_and_grad(w, batch, 0)
  accumulated = optim.accumulate_gradients(loss_and_grad, w, batch, 4)
  np.testing.assert_allclose(accumulated[0][0], full[0][0], rtol=1e-6)
  np.testing.assert_allclose(accumulated[1], full[1], rtol=1e-6)
