"""Small shared builders for tests."""

import jax
import jax.numpy as jnp
import ml_collections

import tiny
from gpt_jax import train
from gpt_jax.model import ModelConfig


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
  """The tiny config shrunk further, with a byte-sized vocabulary."""
  config = tiny.get_config()
  config.model.update(vocab_size=64, n_ctx=32, n_embd=32, n_head=4, d_ff=64)
  config.model.update(**model_overrides)
  config.train.update(batch_size=8, seq_len=16)
  return config


def make_trainer(config, mesh, total_steps: int = 10):
  return train.make_pretrainer(ModelConfig.from_config(config.model), config.optim, mesh,
                               config.train.seq_len, total_steps)


def max_relative_difference(tree_a, tree_b) -> float:
  """Largest per-parameter ||a - b|| / ||b|| (norms over each whole array)."""
  diffs = jax.tree.map(
      lambda a, b: float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30)), tree_a, tree_b)
  return max(jax.tree.leaves(diffs))
