"""Optax optimizers and learning-rate schedules for pretraining and fine-tuning."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gpt_jax import config as config_lib
from gpt_jax.errors import UserError

# Leaves that GPT-1's "modified L2" decays: matrices (kernels and embeddings).
# Biases and LayerNorm gains are exempt. We test the leaf name, not ndim,
# because the fused qkv bias is stored as (3, heads, head_dim).
_DECAYED_LEAVES = ('kernel', 'embedding')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optim section: clipping, Adam with decoupled weight decay, its schedule, accumulation."""

  learning_rate: float  # the schedule's peak
  schedule: str  # 'cosine' (pretraining) or 'linear' (fine-tuning)
  warmup_steps: int  # of the cosine schedule
  warmup_fraction: float  # of the linear schedule, a fraction of the steps
  b1: float
  b2: float
  eps: float
  weight_decay: float
  clip_norm: float
  grad_accum_steps: int

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict) -> 'OptimConfig':
    return config_lib.section_view(cls, section, 'optim')


def decay_mask(params: Any) -> Any:
  """True for every weight matrix / embedding, False for biases and LayerNorm parameters."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], 'key', None) in _DECAYED_LEAVES, params
  )


def pretrain_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `peak_lr`, then cosine decay to 0 at `total_steps`."""
  # A run shorter than the warmup still ends at 0: the warmup is cut to fit.
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak_lr,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=0.0,
  )


def finetune_schedule(peak_lr: float, warmup_fraction: float, total_steps: int) -> optax.Schedule:
  """Linear warmup over `warmup_fraction` of the steps, then linear decay to 0."""
  warmup_steps = max(1, math.ceil(warmup_fraction * total_steps))
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, peak_lr, warmup_steps),
      optax.linear_schedule(peak_lr, 0.0, max(total_steps - warmup_steps, 1)),
    ],
    boundaries=[warmup_steps],
  )


def make_schedule(optim_config: OptimConfig, total_steps: int) -> optax.Schedule:
  if optim_config.schedule == 'cosine':
    return pretrain_schedule(optim_config.learning_rate, optim_config.warmup_steps, total_steps)
  if optim_config.schedule == 'linear':
    return finetune_schedule(optim_config.learning_rate, optim_config.warmup_fraction, total_steps)
  raise UserError(f"optim.schedule={optim_config.schedule!r}: expected 'cosine' or 'linear'")


def make_optimizer(
  optim_config: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Global-norm clipping, then Adam with decoupled weight decay. Returns (tx, schedule)."""
  schedule = make_schedule(optim_config, total_steps)
  tx = optax.chain(
    optax.clip_by_global_norm(optim_config.clip_norm),
    optax.adamw(
      schedule,
      b1=optim_config.b1,
      b2=optim_config.b2,
      eps=optim_config.eps,
      weight_decay=optim_config.weight_decay,
      mask=decay_mask,
    ),
  )
  return tx, schedule


def accumulate_gradients(
  loss_and_grad: Callable, params: Any, batch: Any, num_microbatches: int, *args: Any
) -> tuple[tuple[jax.Array, dict], Any]:
  """Mean loss, aux and gradients over `num_microbatches` equal slices of `batch`.

  `batch` is a pytree of arrays sharing their leading (row) dimension;
  `loss_and_grad(params, microbatch, index, *args)` returns ((loss, aux), grads).
  A scan keeps one microbatch's activations live at a time.
  """
  if num_microbatches == 1:
    return loss_and_grad(params, batch, 0, *args)
  rows = jax.tree.leaves(batch)[0].shape[0]
  if rows % num_microbatches:
    raise UserError(
      f'batch of {rows} rows cannot be split into {num_microbatches} '
      'microbatches; make the batch a multiple of optim.grad_accum_steps'
    )
  # Strided split (row i goes to microbatch i % n): each device keeps its own
  # rows, so no data moves between devices.
  micro = jax.tree.map(
    lambda x: jnp.moveaxis(x.reshape(-1, num_microbatches, *x.shape[1:]), 1, 0), batch
  )

  def body(carry, inputs):
    index, microbatch = inputs
    return jax.tree.map(jnp.add, carry, loss_and_grad(params, microbatch, index, *args)), None

  first = jax.tree.map(lambda x: x[0], micro)
  zero = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(loss_and_grad, params, first, 0, *args)
  )
  total, _ = jax.lax.scan(body, zero, (jnp.arange(num_microbatches), micro))
  return jax.tree.map(lambda x: x / num_microbatches, total)
