"""Small shared builders for tests."""

import jax
import jax.numpy as jnp
import ml_collections

import tiny
from gpt_jax import optim, train
from gpt_jax.model import GPT, ModelConfig


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
  """The tiny config shrunk further, with a byte-sized vocabulary."""
  config = tiny.get_config()
  config.model.update(vocab_size=64, n_ctx=32, n_embd=32, n_head=4, d_ff=64)
  config.model.update(**model_overrides)
  config.train.update(batch_size=8, seq_len=16)
  return config


def make_trainer(config, mesh, total_steps: int = 10):
  model = GPT(ModelConfig.from_config(config.model))
  tx, schedule = optim.make_optimizer(config.optim, total_steps)
  seq_len = config.train.seq_len
  return model, train.Trainer(
      init_params=lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))['params'],
      loss_fn=train.lm_loss_fn(model), tx=tx, schedule=schedule, mesh=mesh,
      grad_accum_steps=config.optim.grad_accum_steps)


def max_relative_difference(tree_a, tree_b) -> float:
  """Largest per-parameter ||a - b|| / ||b|| (norms over each whole array)."""
  diffs = jax.tree.map(
      lambda a, b: float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30)), tree_a, tree_b)
  return max(jax.tree.leaves(diffs))
