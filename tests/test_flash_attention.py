"""model.attention=flash, our Pallas kernel, held to the `xla` path in Pallas interpret mode.

The `xla` attention (itself held to Hugging Face and to float64 numpy) is the
reference, dropout masks included: the kernel draws its masks from the same
key and element indices, so outputs and gradients agree to rounding.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_trainer, prepared_local_corpus, tiny_config

from gpt_jax import attention, cli, flash_attention, layer_layout, sharding
from gpt_jax.dropout import PieceDropout
from gpt_jax.model import GPT, ModelConfig

TOLERANCE = {'float32': 1e-5, 'bfloat16': 2e-2}


def _outputs_and_gradients(implementation, query, key, value, dropout):
  """Attention output and the gradients of <output, cosine weights> wrt q, k and v."""

  def weighted(query, key, value):
    out = attention.attend(implementation, query, key, value, None, dropout)
    weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
    return jnp.sum(out.astype(jnp.float32) * weights), out

  (_, out), grads = jax.jit(jax.value_and_grad(weighted, argnums=(0, 1, 2), has_aux=True))(
    query, key, value
  )
  return (out, *grads)


def _assert_close(ours, reference, tolerance: float) -> None:
  """Every element within `tolerance` of the reference, relative to the reference's scale."""
  ours, reference = (np.asarray(x, np.float64) for x in (ours, reference))
  scale = np.abs(reference).max()
  assert scale > 0.1  # not a degenerate comparison
  np.testing.assert_allclose(ours, reference, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize(
  'dtype, rate, length, heads, batch',
  [
    ('float32', 0.1, 128, 2, 3),
    ('float32', 0.0, 256, 12, 1),
    ('float32', 0.1, 512, 2, 1),
    ('bfloat16', 0.1, 256, 2, 1),
    ('bfloat16', 0.0, 128, 12, 1),
  ],
)
def test_flash_output_and_gradients_equal_xla(dtype, rate, length, heads, batch):
  rng = np.random.default_rng(length + heads)
  query, key, value = (
    jnp.asarray(rng.standard_normal((batch, length, heads, 16)), dtype) for _ in range(3)
  )
  dropout = None
  if rate:
    dropout = PieceDropout(jax.random.key(7), 1.0 - rate, (batch, heads, length, length))
  results = {
    name: _outputs_and_gradients(name, query, key, value, dropout) for name in ('flash', 'xla')
  }
  for ours, reference in zip(results['flash'], results['xla']):
    assert ours.dtype == reference.dtype
    _assert_close(ours, reference, TOLERANCE[dtype])


def test_splash_output_and_gradients_equal_xla_interpreted():
  rng = np.random.default_rng(2)
  query, key, value = (jnp.asarray(rng.standard_normal((1, 256, 2, 128))) for _ in range(3))
  results = {}
  for name, run in (
    ('splash', lambda q, k, v: attention.splash_attention(q, k, v, interpret=True)),
    ('xla', attention.xla_attention),
  ):

    def weighted(query, key, value, run=run):
      out = run(query, key, value)
      return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    (_, out), grads = jax.jit(jax.value_and_grad(weighted, argnums=(0, 1, 2), has_aux=True))(
      query, key, value
    )
    results[name] = (out, *grads)
  for ours, reference in zip(results['splash'], results['xla']):
    _assert_close(ours, reference, 1e-5)


# --- training: the kernel under the mesh (shard_map over batch and heads), remat and scan ---


def _training_config(**model):
  # A wide vocabulary: with the heads split over `tensor`, little stays replicated.
  config = tiny_config(n_ctx=128, n_embd=32, n_head=2, vocab_size=4096, attn_pdrop=0.1, **model)
  config.train.update(batch_size=4, seq_len=128)
  config.optim.update(learning_rate=3e-3, warmup_steps=2)
  return config


@pytest.fixture(scope='module')
def start_params():
  model = GPT(ModelConfig.from_config(_training_config().model))
  return nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])


def _losses(config, params, steps: int) -> np.ndarray:
  # Batch rows over 'data' and heads over 'tensor': each shard draws its own masks' window.
  mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=2), jax.devices()[:4])
  _, trainer = make_trainer(config, mesh, total_steps=steps)
  state = trainer.from_params(params, jax.random.key(1))
  rng = np.random.default_rng(3)
  losses = []
  for _ in range(steps):
    tokens = rng.integers(0, 16, (4, 129)).astype(np.int32)  # 16 tokens of 4,096: learnable
    state, metrics = trainer.train_step(state, sharding.global_batch(tokens, mesh))
    losses.append(float(metrics['loss']))
  return np.array(losses)


@pytest.mark.parametrize('model', [{}, dict(scan_layers=True), dict(remat='full')])
def test_twenty_training_steps_with_dropout_follow_xla(start_params, model):
  steps = 20
  config = _training_config(**model)
  losses = {}
  for implementation in ('flash', 'xla'):
    config.model.attention = implementation
    params = start_params
    if config.model.scan_layers:
      params = layer_layout.convert(params, True)
    losses[implementation] = _losses(config, params, steps)
  assert losses['xla'][0] - losses['xla'][-1] > 0.1  # it learned
  np.testing.assert_allclose(losses['flash'], losses['xla'], rtol=1e-5)


# --- the command line ---


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> list[str]:
  return prepared_local_corpus(tmp_path_factory.mktemp('corpus'))


def _pretrain(tmp_path, capsys, corpus: list[str], name: str, *flags: str):
  code = cli.main(
    [
      'pretrain',
      '--config',
      'tiny',
      '--workdir',
      str(tmp_path / name),
      *corpus,
      '--config.train.eval_batches=1',
      '--config.train.num_steps=3',
      '--config.train.log_every=1',
      '--config.train.steps_per_call=1',
      '--config.train.batch_size=8',
      '--config.mesh.fsdp=1',
      '--config.mesh.data=-1',
      '--config.model.n_layer=1',
      '--config.model.n_embd=32',
      '--config.model.d_ff=64',
      '--config.model.n_head=2',
      *flags,
    ]
  )
  out, err = capsys.readouterr()
  return code, out, err


def test_cli_pretrain_with_flash_gives_the_xla_losses(tmp_path, capsys, corpus):
  losses = {}
  flash_attention.say_interpreted.cache_clear()  # said once per process
  for implementation in ('xla', 'flash'):
    code, _, err = _pretrain(
      tmp_path, capsys, corpus, implementation, f'--config.model.attention={implementation}'
    )
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / implementation / 'metrics.jsonl').open()]
    losses[implementation] = [r['loss'] for r in records if r['split'] == 'train']
  assert 'interpreted on the CPU' in err
  assert len(losses['xla']) == 3
  np.testing.assert_allclose(losses['flash'], losses['xla'], rtol=1e-5)


@pytest.mark.parametrize(
  'flags, message',
  [
    (['--config.train.seq_len=100'], 'got length 100: use 128'),
    (['--config.model.n_head=4'], 'got 8: use model.n_head=2'),
  ],
)
def test_cli_flash_refuses_shapes_it_cannot_tile(tmp_path, capsys, corpus, flags, message):
  code, _, err = _pretrain(
    tmp_path, capsys, corpus, 'bad', '--config.model.attention=flash', *flags
  )
  assert code == 1
  assert err.startswith('gpt-jax: error: ') and err.count('\n') == 1
  assert message in err


def test_auto_is_xla_on_the_cpu_and_flash_for_accelerators(monkeypatch):
  query = jnp.zeros((1, 128, 2, 16))
  assert attention._automatic(query, None, None) == 'xla'
  monkeypatch.setattr(attention, '_target_platform', lambda: 'tpu')
  assert attention._automatic(query, None, None) == 'flash'
  assert attention._automatic(query[:, :100], None, None) == 'xla'  # untileable: xla
  assert attention._automatic(query, jnp.ones((1, 1, 128, 128), bool), None) == 'xla'
  assert dataclasses.replace(ModelConfig(), attention='auto').attention == 'auto'
