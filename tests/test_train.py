"""The pretraining step learns, and the loop resolves its length from the corpus."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import make_trainer, max_relative_difference, tiny_config

from gpt_jax import optim, pretrain, sharding, train
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig


def test_tiny_model_overfits_one_batch():
  config = tiny_config(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  config.optim.update(learning_rate=3e-3, warmup_steps=10, weight_decay=0.0)
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1))
  _, trainer = make_trainer(config, mesh, total_steps=300)
  state = trainer.init(jax.random.key(0))
  batch = sharding.global_batch(
    np.random.default_rng(0).integers(0, 64, (8, 17)).astype(np.int32), mesh
  )
  first = None
  for _ in range(300):
    state, metrics = trainer.train_step(state, batch)
    first = first if first is not None else float(metrics['loss'])
  assert first > 3.5  # about ln(64) at the start
  assert float(metrics['loss']) < 0.1


def test_eval_loss_is_mean_next_token_cross_entropy():
  config = tiny_config()
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1))
  model, trainer = make_trainer(config, mesh)
  state = trainer.init(jax.random.key(0))
  batch = np.random.default_rng(1).integers(0, 64, (8, 17)).astype(np.int32)
  result = pretrain.evaluate(trainer, state.params, [batch])
  logits = np.asarray(
    model.apply({'params': jax.device_get(state.params)}, batch[:, :-1]), np.float64
  )
  log_probs = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  expected = -np.take_along_axis(log_probs, batch[:, 1:, None], -1).mean()
  assert result['loss'] == pytest.approx(expected, rel=1e-5)
  assert result['perplexity'] == pytest.approx(np.exp(expected), rel=1e-5)


def test_num_steps_from_epochs_and_corpus_size():
  cfg = ml_collections.ConfigDict(dict(num_steps=-1, num_epochs=100.0, batch_size=64, seq_len=512))
  assert pretrain.resolve_num_steps(cfg, train_tokens=64 * 512 * 30) == 3000
  cfg.num_steps = 7
  assert pretrain.resolve_num_steps(cfg, None) == 7
  cfg.num_steps = -1
  with pytest.raises(UserError, match='num_epochs'):
    pretrain.resolve_num_steps(cfg, None)


def test_trainer_accumulating_four_micro_batches_of_two_equals_one_batch_of_eight():
  config = tiny_config(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1))
  batch = sharding.global_batch(
    np.random.default_rng(2).integers(0, 64, (8, 17)).astype(np.int32), mesh
  )
  runs = {}
  for accumulate in (1, 4):
    model = GPT(ModelConfig.from_config(config.model))
    # Plain SGD: the update is the gradient itself (Adam's first step would hide its size).
    trainer = train.Trainer(
      init_params=lambda rng, model=model: model.init(rng, jnp.zeros((1, 16), jnp.int32))['params'],
      loss_fn=train.lm_loss_fn(model),
      tx=optax.sgd(0.5),
      schedule=optax.constant_schedule(0.5),
      mesh=mesh,
      grad_accum_steps=accumulate,
    )
    state = trainer.init(jax.random.key(0))
    losses = []
    for _ in range(2):
      state, metrics = trainer.train_step(state, batch)
      losses.append(float(metrics['loss']))
    runs[accumulate] = losses, jax.device_get(state.params)
  np.testing.assert_allclose(runs[4][0], runs[1][0], rtol=1e-6)
  assert max_relative_difference(runs[4][1], runs[1][1]) <= 1e-6


def test_logged_learning_rate_is_the_one_applied_after_a_skipped_update():
  """A skipped update leaves optax's count behind the step; the log follows the count."""
  config = ml_collections.ConfigDict(
    dict(
      learning_rate=0.1,
      schedule='linear',
      warmup_fraction=0.5,
      b1=0.0,
      b2=0.0,
      eps=0.0,
      weight_decay=0.0,
      clip_norm=1e9,
    )
  )
  tx, schedule = optim.make_optimizer(config, total_steps=8)  # 0, .025, .05, .075, .1, ...
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))

  def loss_fn(params, batch, rng, deterministic):
    return jnp.sum(params['w'] * batch.mean(0)), {}

  trainer = train.Trainer(
    init_params=lambda rng: {'w': jnp.zeros(8)},
    loss_fn=loss_fn,
    tx=tx,
    schedule=schedule,
    mesh=mesh,
  )
  state = trainer.init(jax.random.key(0))
  gradient = np.linspace(-1, 1, 8, dtype=np.float32)[None].repeat(8, 0)
  bad = gradient.copy()
  bad[0, 0] = np.nan
  logged, moved = [], []
  for batch in (gradient, gradient, bad, gradient, gradient):
    before = np.asarray(jax.device_get(state.params['w']))
    state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
    logged.append(float(metrics['learning_rate']))
    # Adam with b1 = b2 = eps = 0 moves every weight by exactly the learning rate.
    moved.append(float(np.abs(np.asarray(jax.device_get(state.params['w'])) - before).max()))
  applied = [float(schedule(count)) for count in (0, 1, 2, 2, 3)]  # the skip reuses count 2
  np.testing.assert_allclose(logged, applied, rtol=1e-6)
  np.testing.assert_allclose(
    [m for i, m in enumerate(moved) if i != 2], applied[:2] + applied[3:], rtol=1e-5
  )
  assert moved[2] == 0.0 and int(state.step) == 5
