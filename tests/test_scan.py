"""model.scan_layers: the scanned decoder against the unrolled one, the independent reference.

Both layouts hold the same numbers (gpt_jax.layer_layout); here the unrolled
model's losses, gradients, decoded tokens, checkpoints and Hugging Face's
OpenAIGPTLMHeadModel check the scanned one, never the scanned one itself.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import make_trainer, tiny_config
from test_hf import _write_release
from test_model_reference import SMALL, hf_logits, max_abs_diff, our_logits, random_hf_model

from gpt_jax import checkpoint, hf, layer_layout, sample, sharding, weights
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, REMAT_POLICIES, ModelConfig

CONFIG = ModelConfig(
  vocab_size=64,
  n_ctx=16,
  n_embd=32,
  n_layer=3,
  n_head=4,
  d_ff=64,
  embd_pdrop=0.0,
  attn_pdrop=0.0,
  resid_pdrop=0.0,
)
TOKENS = np.random.default_rng(0).integers(0, 64, (4, 16))


def _unrolled_params(config=CONFIG, seed=0):
  return nn.unbox(GPT(config).init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))['params'])


def _loss_and_grads(config, params):
  def loss(p):
    logits = GPT(config).apply({'params': p}, TOKENS[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, TOKENS[:, 1:]).mean()

  return jax.jit(jax.value_and_grad(loss))(params)


def _layer(tree, i):
  """Block i of an unrolled tree, or slice i of a scanned one: read by hand, not converted."""
  return tree[f'h_{i}'] if f'h_{i}' in tree else jax.tree.map(lambda x: x[i], tree['h'])


@pytest.mark.parametrize('remat', REMAT_POLICIES)
def test_scanned_and_unrolled_give_equal_losses_and_gradients(remat):
  params = _unrolled_params()
  loss, grads = _loss_and_grads(CONFIG, params)
  scanned = dataclasses.replace(CONFIG, scan_layers=True, remat=remat)
  scan_loss, scan_grads = _loss_and_grads(scanned, layer_layout.convert(params, True))
  assert abs(scan_loss - loss) <= 1e-6 * abs(loss)
  assert set(scan_grads) == {'h', 'tokens_embed', 'positions_embed'}
  for name in ('tokens_embed', 'positions_embed'):
    np.testing.assert_allclose(
      scan_grads[name]['embedding'], grads[name]['embedding'], rtol=1e-5, atol=1e-7
    )
  for i in range(CONFIG.n_layer):
    for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(_layer(scan_grads, i))[0],
      jax.tree.leaves(grads[f'h_{i}']),
      strict=True,
    ):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=f'h_{i}{path}')


def test_scanned_parameters_are_stacked_on_an_unsharded_layers_axis():
  config = tiny_config(n_layer=3, scan_layers=True)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  _, trainer = make_trainer(config, mesh)
  params = trainer.abstract_state.params
  assert params['h']['attn']['c_attn']['kernel'].shape == (3, 32, 3, 4, 8)
  spec = trainer.param_shardings['h']['attn']['c_attn']['kernel'].spec
  assert tuple(spec) == (None, 'fsdp', None, 'tensor', None)


def _learnable_batches(steps, rows=8, length=17, vocab=64):
  """Counting sequences (t, t+1, ...) mod vocab: a 20-step run visibly learns them."""
  rng = np.random.default_rng(1)
  starts = rng.integers(0, vocab, (steps, rows, 1))
  return ((starts + np.arange(length)) % vocab).astype(np.int32)


def _run(config, mesh, params, seed, batches):
  _, trainer = make_trainer(config, mesh, total_steps=len(batches))
  params = layer_layout.convert(params, config.model.scan_layers)
  state = trainer.from_params(params, jax.random.key(seed))
  losses = []
  for batch in batches:
    state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return np.array(losses)


def test_twenty_steps_with_dropout_end_at_the_same_loss_within_noise():
  config = tiny_config()
  config.optim.update(learning_rate=3e-3, warmup_steps=2)
  params = nn.unbox(
    GPT(ModelConfig.from_config(config.model)).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32)
    )['params']
  )
  batches = _learnable_batches(20)
  one = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  unrolled = _run(config, one, params, 0, batches)
  noise = _run(config, one, params, 1, batches)  # the same run with other dropout masks
  config.model.scan_layers = True
  scanned = _run(config, sharding.make_mesh(dict(data=2, fsdp=2, tensor=2)), params, 0, batches)

  def final(losses):
    return losses[-5:].mean()

  print(
    f'final loss: unrolled {final(unrolled):.4f}, other dropout seed {final(noise):.4f}, '
    f'scanned {final(scanned):.4f} (from {unrolled[0]:.4f})'
  )
  assert unrolled[0] - final(unrolled) > 0.5  # it learned
  assert abs(scanned[0] - unrolled[0]) <= 0.05  # same weights, other dropout masks
  assert abs(final(scanned) - final(unrolled)) <= max(
    3 * abs(final(noise) - final(unrolled)), 0.02 * final(unrolled)
  )


def _state_layer_arrays(state, i):
  """Block i's parameters and Adam moments of a TrainState, as host numpy."""
  adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
  return jax.tree.map(
    np.asarray, jax.device_get([_layer(state.params, i), _layer(adam.mu, i), _layer(adam.nu, i)])
  )


@pytest.mark.parametrize('saved_scanned', [False, True])
def test_checkpoint_of_one_layout_restores_into_the_other(tmp_path, saved_scanned):
  config = tiny_config(
    n_layer=3, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, scan_layers=saved_scanned
  )
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  batches = _learnable_batches(3)
  _, saver_trainer = make_trainer(config, mesh)
  state = saver_trainer.init(jax.random.key(0))
  for batch in batches[:2]:
    state, _ = saver_trainer.train_step(state, sharding.global_batch(batch, mesh))
  expected = [_state_layer_arrays(state, i) for i in range(3)]
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as saver:
    saver.save(2, state, config)
  _, reference_loss = saver_trainer.train_step(state, sharding.global_batch(batches[2], mesh))

  config.model.scan_layers = not saved_scanned
  _, trainer = make_trainer(config, mesh)
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as loader:
    restored = loader.restore_latest(trainer)
  assert layer_layout.is_scanned(restored.params) == (not saved_scanned)
  for i in range(3):
    for a, b in zip(
      jax.tree.leaves(_state_layer_arrays(restored, i)), jax.tree.leaves(expected[i]), strict=True
    ):
      np.testing.assert_array_equal(a, b)
  for array, wanted in zip(jax.tree.leaves(restored), jax.tree.leaves(trainer.state_shardings)):
    assert array.sharding == wanted
  _, loss = trainer.train_step(restored, sharding.global_batch(batches[2], mesh))
  assert abs(float(loss['loss']) - float(reference_loss['loss'])) <= 1e-6 * float(
    reference_loss['loss']
  )

  # Parameters alone: into a target of the other layout, or as saved (host numpy).
  target = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    trainer.abstract_state.params,
    trainer.param_shardings,
  )
  loaded = checkpoint.load_params(tmp_path, target)
  np.testing.assert_array_equal(
    np.asarray(_layer(loaded, 1)['mlp']['c_fc']['kernel']), expected[1][0]['mlp']['c_fc']['kernel']
  )
  assert layer_layout.is_scanned(checkpoint.load_params(tmp_path)) == saved_scanned


def test_config_stored_before_remat_policies_and_scan_still_loads(tmp_path, one_device_mesh):
  old = tiny_config().to_dict()
  del old['model']['scan_layers'], old['compile_cache_dir']
  old['model']['remat'] = True  # a boolean then
  config = ml_collections.ConfigDict(old)
  _, trainer = make_trainer(tiny_config(), one_device_mesh)
  with checkpoint.Checkpointer(tmp_path, config.checkpoint) as saver:
    saver.save(1, trainer.init(jax.random.key(0)), config)
  stored = checkpoint.load_config(tmp_path)
  assert (stored.model.remat, stored.model.scan_layers) == ('full', False)
  assert stored.compile_cache_dir == tiny_config().compile_cache_dir
  assert ModelConfig.from_config(stored.model).remat == 'full'
  assert ModelConfig(remat=False).remat == 'none'
  with pytest.raises(UserError, match='model.remat=.dots. is not a remat policy; use one of'):
    ModelConfig(remat='dots')


@pytest.fixture(scope='module')
def one_device_mesh():
  return sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


def test_scanned_kv_cache_decodes_the_unrolled_tokens_and_logits():
  config = dataclasses.replace(CONFIG, n_ctx=32)
  params = jax.tree.map(lambda x: x * 4, _unrolled_params(config, seed=3))  # peaky logits
  prompts = [[5, 17, 3, 60], [42], [7, 7, 1, 60, 2, 33, 9]]
  tokens, logits = sample.generate(params, config, prompts, 12, temperature=0.0, return_logits=True)
  scanned_params = layer_layout.convert(params, True)
  scanned_config = weights.config_from_params(scanned_params)
  assert scanned_config == dataclasses.replace(
    config, scan_layers=True, embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1
  )
  scan_tokens, scan_logits = sample.generate(
    scanned_params, scanned_config, prompts, 12, temperature=0.0, return_logits=True
  )
  assert scan_tokens == tokens
  for a, b in zip(scan_logits, logits):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _scanned(params, model_config):
  """Imported (unrolled) weights in the scanned layout, as gpt_jax.weights' callers convert them."""
  return (layer_layout.convert(params, True), dataclasses.replace(model_config, scan_layers=True))


def test_hugging_face_parity_holds_with_scanned_blocks(tmp_path):
  reference = random_hf_model(seed=2, std=0.1, **SMALL)
  tokens = np.random.default_rng(0).integers(0, SMALL['vocab_size'], (2, 12))
  params, model_config = _scanned(*hf.params_from_hf(reference))
  assert model_config.scan_layers and set(params) == {'h', 'tokens_embed', 'positions_embed'}
  diff = max_abs_diff(our_logits(params, model_config, tokens), hf_logits(reference, tokens))
  print(f'scanned import max abs logit diff: {diff:.3g}')
  assert diff <= 1e-5

  exported = hf.state_to_hf(params, model_config)  # export takes the scanned layout as it is
  for name, value in reference.state_dict().items():
    if name != 'lm_head.weight':
      np.testing.assert_array_equal(exported[name], value.numpy(), err_msg=name)

  state = _write_release(tmp_path / 'release')
  release = random_hf_model(**SMALL)
  release.load_state_dict(state, strict=False)
  params, model_config = _scanned(*hf.load_openai_release(tmp_path / 'release', n_ctx=16, n_head=4))
  assert layer_layout.is_scanned(params)
  assert max_abs_diff(our_logits(params, model_config, tokens), hf_logits(release, tokens)) <= 1e-5


def test_layout_conversion_keeps_host_arrays_and_moves_shardings():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  params = _unrolled_params()
  stacked = layer_layout.convert(params, True)
  assert stacked['h']['ln_1']['scale'].shape == (3, 32)
  assert isinstance(stacked['h']['ln_1']['scale'], jax.Array)
  spec = jax.sharding.PartitionSpec('fsdp', 'tensor')
  abstract = {
    'tokens_embed': {},
    'h_0': jax.ShapeDtypeStruct(
      (4, 6), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, spec)
    ),
  }
  abstract['h_1'] = abstract['h_0']
  up = layer_layout.convert(abstract, True)
  assert up['h'].shape == (2, 4, 6) and tuple(up['h'].sharding.spec) == (None, 'fsdp', 'tensor')
  down = layer_layout.convert(up, False)
  assert down == abstract
  host = {'tokens_embed': {}, **{f'h_{i}': np.full((2,), i, np.float32) for i in range(12)}}
  assert isinstance(layer_layout.convert(host, True)['h'], np.ndarray)
  assert layer_layout.num_layers(layer_layout.convert(host, True)) == 12
  assert [k for k in layer_layout.convert(layer_layout.convert(host, True), False)] == [
    'tokens_embed',
    *(f'h_{i}' for i in range(12)),
  ]
