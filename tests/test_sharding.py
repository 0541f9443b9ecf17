"""The sharded train step on a (2, 2, 2) mesh of 8 CPU devices against a 1-device run."""

import jax
import numpy as np
import pytest
from helpers import make_trainer, max_relative_difference, tiny_config
from jax.sharding import PartitionSpec as P

from gpt_jax import sharding


def _run_steps(mesh_config, devices, config, batches, one_call=False):
  """The state and losses after a step per batch: a call each, or all of them in one call."""
  mesh = sharding.make_mesh(mesh_config, devices)
  _, trainer = make_trainer(config, mesh)
  state = trainer.init(jax.random.key(0))
  if one_call:
    state, metrics = trainer.train_steps(
      state, sharding.global_batch(np.stack(batches), mesh, steps_axis=True)
    )
    return state, [float(loss) for loss in metrics['loss']]
  losses = []
  for batch in batches:
    state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return state, losses


def _without_key_bias(params):
  """Host copy of params with the key bias zeroed.

  The key bias gets a zero gradient in exact arithmetic (adding a constant to
  every key shifts all scores of a query equally; softmax ignores that), so
  its float32 gradient is rounding noise that Adam's normalisation blows up to
  lr-sized steps: different but equally valid on any device layout.
  """
  params = jax.tree.map(np.array, jax.device_get(params))
  for name, block in params.items():
    if name.startswith('h_'):
      block['attn']['c_attn']['bias'][1] = 0.0
  return params


@pytest.mark.parametrize('grad_accum_steps,one_call', [(1, False), (2, True)])
def test_step_on_2x2x2_mesh_matches_single_device(grad_accum_steps, one_call):
  """With one_call, the three updates run as one call (train.steps_per_call): the stacked
  batches shard on their second axis."""
  assert len(jax.devices()) == 8
  config = tiny_config()
  config.optim.grad_accum_steps = grad_accum_steps
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 64, (8, 17)).astype(np.int32) for _ in range(3)]
  sharded, sharded_losses = _run_steps(
    dict(data=2, fsdp=2, tensor=2), jax.devices(), config, batches, one_call
  )
  single, single_losses = _run_steps(
    dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], config, batches
  )
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
  assert (
    max_relative_difference(_without_key_bias(sharded.params), _without_key_bias(single.params))
    <= 1e-5
  )

  # The parameters and Adam moments really are split over the mesh.
  params = sharded.params
  assert params['h_0']['attn']['c_attn']['kernel'].sharding.spec == P('fsdp', None, 'tensor', None)
  assert params['h_0']['mlp']['c_fc']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert params['tokens_embed']['embedding'].sharding.spec == P('tensor', 'fsdp')
  kernel = params['h_1']['mlp']['c_proj']['kernel']
  assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)
  adam_mu = sharded.opt_state[1][0].mu
  assert adam_mu['h_0']['mlp']['c_fc']['kernel'].sharding.spec == P('fsdp', 'tensor')


def test_mesh_sizes_resolve_and_fail_clearly():
  assert sharding.mesh_shape(dict(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(dict(data=-1, fsdp=1, tensor=1), 8) == (8, 1, 1)
  with pytest.raises(sharding.ShardingError, match='only one mesh axis'):
    sharding.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
  with pytest.raises(sharding.ShardingError, match='needs 12 devices'):
    sharding.mesh_shape(dict(data=3, fsdp=2, tensor=2), 8)
  with pytest.raises(sharding.ShardingError, match='cannot be split'):
    sharding.mesh_shape(dict(data=3, fsdp=-1, tensor=1), 8)


def test_unshardable_model_fails_before_compiling_naming_dimension_and_axis():
  config = tiny_config(vocab_size=63)  # odd vocabulary over tensor=2
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with pytest.raises(
    sharding.ShardingError, match=r'tokens_embed/embedding dimension 0 \(vocab, size 63\).*tensor'
  ):
    make_trainer(config, mesh)


def test_batch_that_cannot_split_over_data_and_fsdp_is_rejected():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with pytest.raises(sharding.ShardingError, match='batch_size=6'):
    sharding.check_batch(6, mesh)
  assert sharding.check_batch(8, mesh) == 8  # one process holds the whole global batch
