"""Padding-free fine-tuning: bucketed batches and the chunked LM loss.

References: today's padded-to-max_len encoding (sliced), a float64 numpy loss,
and the LM loss over the full logits buffer written out in plain jnp.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_tasks_transforms import PAD, FakeTokenizer, _log_softmax, _reference_lm_loss

from gpt_jax.model import GPTForTask, ModelConfig
from gpt_jax.tasks import transforms
from gpt_jax.tasks.batches import batches, bucket_length
from gpt_jax.tasks.task import HEAD_LAYOUTS

MAX_LEN = 40
CONFIG = ModelConfig(vocab_size=64, n_ctx=MAX_LEN, n_embd=32, n_layer=2, n_head=4, d_ff=64)


def _words(n, start=10):
  return ' '.join(str(start + i % 50) for i in range(n))


def _examples(lengths, kind='classification'):
  if kind == 'multiple_choice':
    return [
      {'context': _words(n), 'choices': ['5', _words(n % 7 + 1)], 'label': i % 2}
      for i, n in enumerate(lengths)
    ]
  return [{'text': _words(n), 'label': i % 3} for i, n in enumerate(lengths)]


@pytest.mark.parametrize(
  'longest, bucket, max_len, expected',
  [
    (25, 64, 512, 64),
    (64, 64, 512, 64),
    (65, 64, 512, 128),
    (500, 64, 512, 512),
    (33, 16, 40, 40),  # the last bucket is max_len itself
    (3, 0, 512, 512),  # bucket 0: today's padding to max_len
  ],
)
def test_bucket_length(longest, bucket, max_len, expected):
  assert bucket_length(longest, bucket, max_len) == expected


def test_encode_to_the_needed_length():
  example = {'context': '11 12 13', 'choices': ['21', '31 32 33'], 'label': 1}
  out = transforms.encode_example('multiple_choice', example, FakeTokenizer(), MAX_LEN, length=0)
  # <s> 3 context tokens $ 3 choice tokens <e> = 9; the shorter choice is padded to it.
  assert out['tokens'].shape == (2, 9)
  np.testing.assert_array_equal(out['tokens'][0, -2:], [PAD, PAD])
  np.testing.assert_array_equal(out['extract_index'], [6, 8])


@pytest.mark.parametrize('kind', ['classification', 'multiple_choice'])
def test_bucketed_batches_are_todays_batches_cut_to_the_bucket(kind):
  lengths = [3, 30, 5, 7, 50, 2, 9, 4, 6, 12, 3, 1]  # 50 is cut to MAX_LEN
  examples = _examples(lengths, kind)
  padded = list(batches(examples, kind, FakeTokenizer(), MAX_LEN, 4, bucket=0))
  bucketed = list(batches(examples, kind, FakeTokenizer(), MAX_LEN, 4, bucket=8))
  assert [b['tokens'].shape[-1] for b in padded] == [MAX_LEN] * 3
  if kind == 'classification':
    assert [b['tokens'].shape[-1] for b in bucketed] == [32, 40, 16]  # longest 32, 40, 14
  for today, new in zip(padded, bucketed):
    length = new['tokens'].shape[-1]
    longest = today['extract_index'].max() + 1
    assert length == min(-(-longest // 8) * 8, MAX_LEN)
    assert set(today) == set(new)
    for key in ('tokens', 'lm_mask'):
      np.testing.assert_array_equal(new[key], today[key][..., :length])
    np.testing.assert_array_equal(today['tokens'][..., length:], PAD)
    assert not today['lm_mask'][..., length:].any()
    for key in ('extract_index', 'label', 'valid', 'truncated', 'position'):
      np.testing.assert_array_equal(new[key], today[key])


def test_processes_share_the_global_batch_length():
  """Each process's rows of a global batch have the length of the global batch's longest."""
  examples = _examples([2, 3, 30, 2, 4, 2, 3, 2, 1, 2, 3, 17])
  whole = list(
    batches(examples, 'classification', FakeTokenizer(), MAX_LEN, 4, bucket=8, shuffle_seed=3)
  )
  shards = [
    list(
      batches(
        examples,
        'classification',
        FakeTokenizer(),
        MAX_LEN,
        2,
        bucket=8,
        shuffle_seed=3,
        shard=(i, 2),
      )
    )
    for i in range(2)
  ]
  for b, batch in enumerate(whole):
    for i, shard in enumerate(shards):
      assert shard[b]['tokens'].shape == (2, batch['tokens'].shape[-1])
      np.testing.assert_array_equal(shard[b]['tokens'], batch['tokens'][i::2])
  # Resuming at batch 1 gives the same batches as before.
  resumed = batches(
    examples, 'classification', FakeTokenizer(), MAX_LEN, 4, bucket=8, shuffle_seed=3, start=1
  )
  for before, after in zip(whole[1:], resumed):
    np.testing.assert_array_equal(before['tokens'], after['tokens'])


# ---------------------------------------------------------------------------
# The loss on bucketed batches.


def _model_and_params(kind, num_outputs):
  model = GPTForTask(CONFIG, HEAD_LAYOUTS[kind], num_outputs=num_outputs)
  shape = (1, 2, 8) if kind == 'multiple_choice' else (1, 8)
  params = model.init(
    jax.random.key(0), jnp.zeros(shape, jnp.int32), jnp.zeros(shape[:-1], jnp.int32)
  )['params']
  return model, jax.tree.map(
    lambda p: p.unbox() if hasattr(p, 'unbox') else p, params, is_leaf=lambda p: hasattr(p, 'unbox')
  )


@pytest.mark.parametrize(
  'kind, chunk', [('classification', 5), ('multiple_choice', 3), ('classification', 128)]
)
def test_bucketed_loss_equals_padded_loss_and_numpy(kind, chunk):
  model, params = _model_and_params(kind, 1 if kind == 'multiple_choice' else 3)
  examples = _examples([3, 11, 5, 2], kind)
  [padded] = batches(examples, kind, FakeTokenizer(), MAX_LEN, 4, bucket=0)
  [bucketed] = batches(examples, kind, FakeTokenizer(), MAX_LEN, 4, bucket=4)
  assert bucketed['tokens'].shape[-1] == (20 if kind == 'multiple_choice' else 16)
  loss_fn = transforms.finetune_loss_fn(model, lm_chunk=chunk)
  loss_padded, aux_padded = loss_fn(params, padded, None, True)
  loss_bucketed, aux_bucketed = loss_fn(params, bucketed, None, True)

  task_logits, lm_logits = model.apply(
    {'params': params}, padded['tokens'], padded['extract_index']
  )
  task = -_log_softmax(task_logits)[np.arange(4), padded['label']].mean()
  lm = _reference_lm_loss(lm_logits, padded['tokens'], padded['lm_mask'], np.ones(4))
  for loss, aux in ((loss_padded, aux_padded), (loss_bucketed, aux_bucketed)):
    np.testing.assert_allclose(aux['lm_loss'], lm, rtol=2e-5)
    np.testing.assert_allclose(loss, task + 0.5 * lm, rtol=2e-5)


def _full_logits_lm_loss(model, params, batch):
  """Today's LM loss: the whole (sequences, length, vocab) logits at once, masked."""
  _, lm_logits = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  length = batch['tokens'].shape[-1]
  log_probs = jax.nn.log_softmax(lm_logits.reshape(-1, length, CONFIG.vocab_size)[:, :-1])
  targets = batch['tokens'].reshape(-1, length)[:, 1:]
  mask = batch['lm_mask'].reshape(-1, length)[:, 1:]
  losses = -jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  return ((losses * mask).sum(-1) / mask.sum(-1)).mean()


def test_chunked_lm_loss_gradients_equal_the_full_logits_gradients():
  model, params = _model_and_params('classification', 2)
  [batch] = batches(
    _examples([3, 13, 6, 2]), 'classification', FakeTokenizer(), MAX_LEN, 4, bucket=8
  )

  def chunked(params):
    _, hidden = model.apply(
      {'params': params}, batch['tokens'], batch['extract_index'], method='task_logits_and_hidden'
    )
    return transforms.lm_loss(
      lambda *inputs: model.apply({'params': params}, *inputs, 3, method='next_token_loss'),
      hidden,
      batch['tokens'],
      batch['lm_mask'],
      jnp.ones(4),
    )

  loss, grads = jax.value_and_grad(chunked)(params)
  expected_loss, expected = jax.value_and_grad(_full_logits_lm_loss, argnums=1)(
    model, params, batch
  )
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_no_buffer_of_every_position_times_the_vocabulary():
  """XLA's temporaries for the loss and its gradient stay under one full logits buffer."""
  config = ModelConfig(vocab_size=8192, n_ctx=256, n_embd=32, n_layer=1, n_head=2, d_ff=64)
  model = GPTForTask(config, 'single', num_outputs=2)
  batch = {
    'tokens': jnp.ones((8, 256), jnp.int32),
    'extract_index': jnp.full(8, 255),
    'lm_mask': jnp.ones((8, 256), jnp.int32),
    'label': jnp.zeros(8, jnp.int32),
    'valid': jnp.ones(8, jnp.int32),
  }
  params = jax.eval_shape(
    lambda: model.init(jax.random.key(0), batch['tokens'], batch['extract_index'])['params']
  )
  full_logits_bytes = 8 * 256 * 8192 * 4  # 64 MiB

  def temp_bytes(chunk):
    grad = jax.grad(
      lambda p: transforms.finetune_loss_fn(model, lm_chunk=chunk)(p, batch, None, True)[0]
    )
    return jax.jit(grad).lower(params).compile().memory_analysis().temp_size_in_bytes

  # All positions at once, left to autodiff, hold at least one whole logits buffer.
  assert temp_bytes(0) > full_logits_bytes
  # Chunks of 32 positions: everything together is smaller than one such buffer.
  assert temp_bytes(32) < full_logits_bytes
