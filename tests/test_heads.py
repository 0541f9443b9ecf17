"""The task heads on the decoder: what they read, their symmetry, params, and a sharded step."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec
from test_tasks_transforms import FakeTokenizer

from gpt_jax import sharding, train
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, GPTForTask, ModelConfig, add_token_rows
from gpt_jax.tasks import transforms
from gpt_jax.tasks.task import HEAD_LAYOUTS

CONFIG = ModelConfig(vocab_size=64, n_ctx=16, n_embd=32, n_layer=2, n_head=4, d_ff=64)
MAX_LEN = 12


def _unbox(tree):
  return jax.tree.map(
    lambda p: p.unbox() if hasattr(p, 'unbox') else p, tree, is_leaf=lambda p: hasattr(p, 'unbox')
  )


def _init(model, batch, rng=0):
  return model.init(jax.random.key(rng), batch['tokens'], batch['extract_index'])['params']


def _batch(kind, examples):
  return transforms.encode_examples(kind, examples, FakeTokenizer(), MAX_LEN)[0]


def _reference_states(params, batch):
  """float64 final hidden states at each sequence's <e>, from the plain decoder."""
  tokens = batch['tokens'].reshape(-1, MAX_LEN)
  hidden = GPT(CONFIG).apply({'params': params['transformer']}, tokens, method=GPT.hidden_states)
  rows = np.arange(len(tokens))
  states = np.asarray(hidden, np.float64)[rows, batch['extract_index'].reshape(-1)]
  return states.reshape(*batch['tokens'].shape[:-1], -1)


def _linear(params, states):
  return states @ np.asarray(params['classifier']['kernel'], np.float64) + np.asarray(
    params['classifier']['bias'], np.float64
  )


def test_classification_head_reads_the_extract_state():
  model = GPTForTask(CONFIG, HEAD_LAYOUTS['classification'], num_outputs=3)
  batch = _batch('classification', [{'text': 'a b c'}, {'text': 'd e f g h'}])
  params = _unbox(_init(model, batch))
  logits, lm_logits = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  np.testing.assert_allclose(logits, _linear(params, _reference_states(params, batch)), atol=1e-5)
  assert lm_logits.shape == (2, MAX_LEN, CONFIG.vocab_size)
  # What follows <e> (padding) cannot reach the head; causal attention.
  changed = batch['tokens'].copy()
  changed[0, batch['extract_index'][0] + 1 :] = 9
  np.testing.assert_array_equal(
    model.apply({'params': params}, changed, batch['extract_index'])[0], logits
  )


def test_similarity_is_symmetric_in_its_two_texts():
  model = GPTForTask(CONFIG, HEAD_LAYOUTS['similarity'], num_outputs=2)
  ab = _batch('similarity', [{'text_a': 'a man plays guitar', 'text_b': 'someone plays music'}])
  ba = _batch('similarity', [{'text_a': 'someone plays music', 'text_b': 'a man plays guitar'}])
  params = _unbox(_init(model, ab))
  logits_ab, _ = model.apply({'params': params}, ab['tokens'], ab['extract_index'])
  logits_ba, _ = model.apply({'params': params}, ba['tokens'], ba['extract_index'])
  np.testing.assert_allclose(logits_ab, logits_ba, atol=1e-6)
  states = _reference_states(params, ab)  # (1, 2 orders, embed)
  # The two orders' states differ (by far more than the tolerance above); their sum doesn't.
  assert np.abs(states[0, 0] - states[0, 1]).max() > 1e-4
  np.testing.assert_allclose(logits_ab, _linear(params, states.sum(1)), atol=1e-5)


def test_multiple_choice_scores_each_choice_and_normalises_over_choices():
  model = GPTForTask(CONFIG, HEAD_LAYOUTS['multiple_choice'])
  choices = ['on the mat', 'in the hat', 'under a tree', 'far away']
  batch = _batch(
    'multiple_choice',
    [
      {'context': 'the cat sat', 'choices': choices},
      {'context': 'it rained', 'choices': choices[::-1]},
    ],
  )
  params = _unbox(_init(model, batch))
  logits, lm_logits = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  assert logits.shape == (2, 4) and lm_logits.shape == (2, 4, MAX_LEN, CONFIG.vocab_size)
  np.testing.assert_allclose(
    logits, _linear(params, _reference_states(params, batch))[..., 0], atol=1e-5
  )
  # Each choice is scored on its own: reordering the choices reorders the scores.
  permuted = _batch('multiple_choice', [{'context': 'the cat sat', 'choices': choices[::-1]}])
  np.testing.assert_allclose(
    model.apply({'params': params}, permuted['tokens'], permuted['extract_index'])[0][0],
    logits[0, ::-1],
    atol=1e-6,
  )


def test_multiple_choice_candidates_share_one_classifier_dropout_mask():
  """OpenAI's code drops the same features of every candidate of an example."""
  no_dropout = dataclasses.replace(CONFIG, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  model = GPTForTask(no_dropout, HEAD_LAYOUTS['multiple_choice'], clf_pdrop=0.5)
  same = ['on the mat'] * 4  # identical candidates: identical states
  batch = _batch(
    'multiple_choice',
    [{'context': 'the cat sat', 'choices': same}, {'context': 'it rained', 'choices': same}],
  )
  params = _unbox(_init(model, batch))
  logits, _ = model.apply(
    {'params': params},
    batch['tokens'],
    batch['extract_index'],
    deterministic=False,
    rngs={'dropout': jax.random.key(3)},
  )
  np.testing.assert_allclose(logits, np.broadcast_to(logits[:, :1], logits.shape), atol=1e-6)
  # The mask is real: it differs between examples and from no dropout.
  states = _reference_states(params, batch)
  assert np.abs(logits[:, 0] - _linear(params, states)[:, 0, 0]).max() > 1e-4
  assert np.abs(logits[0, 0] - logits[1, 0]).max() > 1e-4


def test_param_layout_loads_pretrained_decoder_weights():
  model = GPTForTask(CONFIG, HEAD_LAYOUTS['classification'], num_outputs=2)
  batch = _batch('classification', [{'text': 'a b'}])
  boxed = _init(model, batch)
  assert set(boxed) == {'transformer', 'classifier'}
  assert nn.get_partition_spec(boxed)['classifier']['kernel'] == PartitionSpec('embed', 'classes')
  pretrained = _unbox(GPT(CONFIG).init(jax.random.key(7), batch['tokens'])['params'])
  assert jax.tree.structure(pretrained) == jax.tree.structure(_unbox(boxed)['transformer'])
  params = {'transformer': pretrained, 'classifier': _unbox(boxed)['classifier']}
  _, lm_logits = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  np.testing.assert_array_equal(
    lm_logits, GPT(CONFIG).apply({'params': pretrained}, batch['tokens'])
  )


def test_add_token_rows():
  pretrained = _unbox(GPT(CONFIG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params'])
  grown = add_token_rows(pretrained, 3, jax.random.key(1))
  old, new = pretrained['tokens_embed']['embedding'], grown['tokens_embed']['embedding']
  assert new.shape == (CONFIG.vocab_size + 3, CONFIG.n_embd)
  np.testing.assert_array_equal(new[: CONFIG.vocab_size], old)
  assert grown['h_0'] is pretrained['h_0']
  # The new rows are N(0, 0.02): checked on a wide embedding for a tight estimate.
  wide = add_token_rows(
    {'tokens_embed': {'embedding': jnp.zeros((5, 4096))}}, 3, jax.random.key(2)
  )['tokens_embed']['embedding'][5:]
  assert abs(float(wide.std()) - 0.02) < 0.001 and abs(float(wide.mean())) < 0.001
  # A decoder with the larger vocabulary runs on them; old tokens' logits don't change.
  tokens = jnp.arange(6)[None]
  grown_logits = GPT(dataclasses.replace(CONFIG, vocab_size=67)).apply({'params': grown}, tokens)
  np.testing.assert_allclose(
    grown_logits[..., :64], GPT(CONFIG).apply({'params': pretrained}, tokens), atol=1e-6
  )


def test_wrong_shapes_and_settings_are_user_errors():
  batch = _batch('classification', [{'text': 'a'}])
  with pytest.raises(UserError, match='rank 3'):
    _init(GPTForTask(CONFIG, HEAD_LAYOUTS['similarity'], num_outputs=1), batch)
  with pytest.raises(UserError, match='num_outputs=4'):
    _init(GPTForTask(CONFIG, HEAD_LAYOUTS['multiple_choice'], num_outputs=4), batch)


def test_sharded_train_step_matches_one_device():
  """One fine-tuning update (plain SGD, so it moves by the gradient) on a (2, 2, 2) mesh
  equals the gradient step computed on one device."""
  no_dropout = dataclasses.replace(
    CONFIG, n_layer=1, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0
  )  # the train step runs in training mode
  model = GPTForTask(no_dropout, HEAD_LAYOUTS['entailment'], num_outputs=3, clf_pdrop=0.0)
  examples = [
    {'premise': f'w{i} w{i + 1} w{i + 2}', 'hypothesis': f'v{i}', 'label': i % 3} for i in range(8)
  ]
  batch = _batch('entailment', examples)
  loss_fn = transforms.finetune_loss_fn(model)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  trainer = train.Trainer(
    init_params=lambda rng: _init(model, batch),
    loss_fn=loss_fn,
    tx=optax.sgd(1.0),
    schedule=optax.constant_schedule(1.0),
    mesh=mesh,
  )
  state = trainer.init(jax.random.key(0))
  initial = jax.device_get(state.params)
  state, metrics = trainer.train_step(
    state, jax.tree.map(lambda x: sharding.global_batch(x, mesh), batch)
  )

  one_device = jax.devices()[0]
  (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=3)(
    jax.device_put(initial, one_device), jax.device_put(batch, one_device), None, True
  )
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['lm_loss'], aux['lm_loss'], rtol=1e-5)
  jax.tree.map(
    lambda new, old, grad: np.testing.assert_allclose(new, old - grad, atol=1e-6),
    jax.device_get(state.params),
    initial,
    jax.device_get(grads),
  )


def test_finetuning_updates_in_one_call_equal_one_call_each_on_the_mesh():
  """train.steps_per_call with fine-tuning's dict batches (rank-3 entailment tokens), dropout
  on: two updates stacked in one call give the bits of two calls."""
  model = GPTForTask(
    dataclasses.replace(CONFIG, n_layer=1), HEAD_LAYOUTS['entailment'], num_outputs=3
  )
  batches = [
    _batch(
      'entailment',
      [
        {'premise': f'w{i} w{i + j}', 'hypothesis': f'v{j}', 'label': (i + j) % 3} for i in range(8)
      ],
    )
    for j in range(2)
  ]
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  trainer = train.Trainer(
    init_params=lambda rng: _init(model, batches[0]),
    loss_fn=transforms.finetune_loss_fn(model, 0.5),
    tx=optax.adam(1e-3),
    schedule=optax.constant_schedule(1e-3),
    mesh=mesh,
  )
  state, losses = trainer.init(jax.random.key(0)), []
  for batch in batches:
    state, metrics = trainer.train_step(
      state, jax.tree.map(lambda x: sharding.global_batch(x, mesh), batch)
    )
    losses.append(float(metrics['loss']))
  stacked = jax.tree.map(
    lambda *xs: sharding.global_batch(np.stack(xs), mesh, steps_axis=True), *batches
  )
  called, metrics = trainer.train_steps(trainer.init(jax.random.key(0)), stacked)
  np.testing.assert_array_equal(metrics['loss'], losses)
  for a, b in zip(jax.tree.leaves(called.params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(a, b)
