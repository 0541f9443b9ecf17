"""The pretraining step learns, and the loop resolves its length from the corpus."""

import jax
import ml_collections
import numpy as np
import pytest

from gpt_jax import pretrain, sharding, train
from gpt_jax.errors import UserError
from helpers import make_trainer, tiny_config


def test_tiny_model_overfits_one_batch():
  config = tiny_config(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  config.optim.update(learning_rate=3e-3, warmup_steps=10, weight_decay=0.0)
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1))
  _, trainer = make_trainer(config, mesh, total_steps=300)
  state = trainer.init(jax.random.key(0))
  batch = sharding.global_batch(
      np.random.default_rng(0).integers(0, 64, (8, 17)).astype(np.int32), mesh)
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
  logits = np.asarray(model.apply({'params': jax.device_get(state.params)}, batch[:, :-1]),
                      np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                                keepdims=True)) \
      - logits.max(-1, keepdims=True)
  expected = -np.take_along_axis(log_probs, batch[:, 1:, None], -1).mean()
  assert result['loss'] == pytest.approx(expected, rel=1e-5)
  assert result['perplexity'] == pytest.approx(np.exp(expected), rel=1e-5)


def test_num_steps_from_epochs_and_corpus_size():
  cfg = ml_collections.ConfigDict(dict(num_steps=-1, num_epochs=100.0, batch_size=64,
                                       seq_len=512))
  assert pretrain.resolve_num_steps(cfg, train_tokens=64 * 512 * 30) == 3000
  cfg.num_steps = 7
  assert pretrain.resolve_num_steps(cfg, None) == 7
  cfg.num_steps = -1
  with pytest.raises(UserError, match='num_epochs'):
    pretrain.resolve_num_steps(cfg, None)
