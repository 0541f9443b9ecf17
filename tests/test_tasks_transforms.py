"""The four input transformations, truncation, and the fine-tuning loss against numpy."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.data.tokenizer import train_tokenizer
from gpt_jax.errors import UserError
from gpt_jax.model import GPTForTask, ModelConfig
from gpt_jax.tasks import transforms
from gpt_jax.tasks.task import HEAD_LAYOUTS

PAD, START, DELIM, EXTRACT = 0, 1, 2, 3


class FakeTokenizer:
  """Whitespace tokenizer with known ids: a number is its own id, a word hashes into the vocab."""

  pad_id, start_id, delimiter_id, extract_id = PAD, START, DELIM, EXTRACT

  def __init__(self, vocab_size: int = 64):
    self.vocab_size = vocab_size

  def encode(self, text: str) -> list[int]:
    return [
      int(word) if word.isdigit() else 4 + zlib.crc32(word.encode()) % (self.vocab_size - 4)
      for word in text.split()
    ]


def _encode(kind, max_len=8, **example):
  return transforms.encode_example(kind, example, FakeTokenizer(), max_len)


def test_classification_layout():
  out = _encode('classification', text='11 12 13', label=1)
  np.testing.assert_array_equal(out['tokens'], [START, 11, 12, 13, EXTRACT, PAD, PAD, PAD])
  assert out['extract_index'] == 4
  np.testing.assert_array_equal(out['lm_mask'], [0, 1, 1, 1, 1, 0, 0, 0])
  assert out['label'] == 1 and out['label'].dtype == np.int32
  assert out['valid'] == 1 and out['truncated'] == 0


def test_entailment_layout():
  out = _encode('entailment', premise='11 12', hypothesis='21', label=2)
  np.testing.assert_array_equal(out['tokens'], [START, 11, 12, DELIM, 21, EXTRACT, PAD, PAD])
  assert out['extract_index'] == 5
  np.testing.assert_array_equal(out['lm_mask'], [0, 1, 1, 1, 1, 1, 0, 0])


def test_similarity_layout_has_both_orders():
  out = _encode('similarity', text_a='11 12', text_b='21', label=3.5)
  np.testing.assert_array_equal(
    out['tokens'],
    [[START, 11, 12, DELIM, 21, EXTRACT, PAD, PAD], [START, 21, DELIM, 11, 12, EXTRACT, PAD, PAD]],
  )
  np.testing.assert_array_equal(out['extract_index'], [5, 5])
  np.testing.assert_array_equal(out['lm_mask'], [[0, 1, 1, 1, 1, 1, 0, 0]] * 2)
  assert out['label'].dtype == np.float32  # a score: regression


def test_multiple_choice_layout_has_one_sequence_per_choice():
  out = _encode('multiple_choice', context='11 12', choices=['21', '31 32', '41'], label=1)
  np.testing.assert_array_equal(
    out['tokens'],
    [
      [START, 11, 12, DELIM, 21, EXTRACT, PAD, PAD],
      [START, 11, 12, DELIM, 31, 32, EXTRACT, PAD],
      [START, 11, 12, DELIM, 41, EXTRACT, PAD, PAD],
    ],
  )
  np.testing.assert_array_equal(out['extract_index'], [5, 6, 5])
  np.testing.assert_array_equal(out['lm_mask'][1], [0, 1, 1, 1, 1, 1, 1, 0])


@pytest.mark.parametrize(
  'lengths, budget, expected',
  [
    ([3, 2], 6, [3, 2]),  # fits: untouched
    ([10, 2], 6, [4, 2]),  # the long segment pays; the short one survives whole
    ([10, 9], 7, [4, 3]),  # both long: equal shares, the odd token to the first
    ([5, 5, 1], 7, [3, 3, 1]),
  ],
)
def test_share_budget_cuts_the_longest_first(lengths, budget, expected):
  assert transforms.share_budget(lengths, budget) == expected


def test_truncation_keeps_special_tokens_and_is_counted():
  long = ' '.join(str(10 + i) for i in range(20))
  out = _encode('classification', max_len=6, text=long)
  np.testing.assert_array_equal(out['tokens'], [START, 10, 11, 12, 13, EXTRACT])
  assert out['extract_index'] == 5 and out['truncated'] == 1

  out = _encode('entailment', max_len=9, premise=long, hypothesis='41 42')
  np.testing.assert_array_equal(out['tokens'], [START, 10, 11, 12, 13, DELIM, 41, 42, EXTRACT])

  # Both orders of a similarity pair hold the same cut text.
  out = _encode('similarity', max_len=8, text_a=long, text_b='41 42 43 44 45 46')
  np.testing.assert_array_equal(
    out['tokens'],
    [[START, 10, 11, 12, DELIM, 41, 42, EXTRACT], [START, 41, 42, DELIM, 10, 11, 12, EXTRACT]],
  )

  # A multiple-choice context keeps its end (where the question is), each choice whole.
  out = _encode('multiple_choice', max_len=8, context=long, choices=['41', '51 52'])
  np.testing.assert_array_equal(
    out['tokens'],
    [[START, 26, 27, 28, 29, DELIM, 41, EXTRACT], [START, 27, 28, 29, DELIM, 51, 52, EXTRACT]],
  )
  assert out['truncated'] == 1

  batch, truncated = transforms.encode_examples(
    'classification', [{'text': long}, {'text': '11'}, {'text': long}], FakeTokenizer(), 6
  )
  assert truncated == 2 and batch['tokens'].shape == (3, 6)
  np.testing.assert_array_equal(batch['tokens'][:, -1], [EXTRACT, PAD, EXTRACT])


def test_the_project_tokenizer_fits_the_protocol(tmp_path):
  tokenizer = train_tokenizer(
    [transforms.__doc__, transforms.encode_example.__doc__],
    tmp_path / 't.model',
    vocab_size=400,
    max_bytes=10**6,
  )
  out = transforms.encode_example(
    'entailment', {'premise': 'the cat sat', 'hypothesis': 'a cat'}, tokenizer, 24
  )
  premise, hypothesis = tokenizer.encode('the cat sat'), tokenizer.encode('a cat')
  expected = [
    tokenizer.start_id,
    *premise,
    tokenizer.delimiter_id,
    *hypothesis,
    tokenizer.extract_id,
  ]
  np.testing.assert_array_equal(out['tokens'], expected + [tokenizer.pad_id] * (24 - len(expected)))
  assert out['extract_index'] == len(expected) - 1


def test_bad_kind_and_tiny_max_len_are_user_errors():
  with pytest.raises(UserError, match='unknown task kind'):
    _encode('regression', text='11')
  with pytest.raises(UserError, match='max_len=4'):
    _encode('entailment', max_len=4, premise='11', hypothesis='12')


# ---------------------------------------------------------------------------
# The loss, against numpy float64 from the same logits.

_CONFIG = ModelConfig(vocab_size=64, n_ctx=16, n_embd=32, n_layer=2, n_head=4, d_ff=64)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_lm_loss(lm_logits, tokens, lm_mask, valid):
  """Mean over the valid examples' sequences of each sequence's mean masked next-token loss."""
  length = tokens.shape[-1]
  sequences_per_example = tokens.size // (len(valid) * length)  # 1, 2 orders or n choices
  log_probs = _log_softmax(lm_logits).reshape(-1, length, lm_logits.shape[-1])
  tokens, lm_mask = tokens.reshape(-1, length), lm_mask.reshape(-1, length)
  per_sequence = []
  for seq, (toks, mask) in enumerate(zip(tokens, lm_mask)):
    positions = [t for t in range(length - 1) if mask[t + 1]]
    per_sequence.append(-np.mean([log_probs[seq, t, toks[t + 1]] for t in positions]))
  return np.average(per_sequence, weights=np.repeat(valid, sequences_per_example))


def _batch(kind, examples, max_len=12):
  batch, _ = transforms.encode_examples(kind, examples, FakeTokenizer(), max_len)
  return batch


def _model_and_params(kind, num_outputs):
  model = GPTForTask(_CONFIG, HEAD_LAYOUTS[kind], num_outputs=num_outputs)
  shape = {'classification': (1, 12), 'multiple_choice': (1, 3, 12), 'similarity': (1, 2, 12)}
  params = model.init(
    jax.random.key(0), jnp.zeros(shape[kind], jnp.int32), jnp.zeros(shape[kind][:-1], jnp.int32)
  )['params']
  return model, jax.tree.map(
    lambda p: p.unbox() if hasattr(p, 'unbox') else p, params, is_leaf=lambda p: hasattr(p, 'unbox')
  )


def test_classification_loss_is_task_plus_half_lm_loss():
  model, params = _model_and_params('classification', 3)
  batch = _batch(
    'classification',
    [
      {'text': 'a cat sat', 'label': 2},
      {'text': 'on the mat today', 'label': 0},
      {'text': 'x', 'label': 1},
    ],
  )
  batch['valid'][2] = 0  # padding of a last eval batch: must not count
  task_logits, lm_logits = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  valid = batch['valid'].astype(np.float64)
  task = np.average(-_log_softmax(task_logits)[np.arange(3), batch['label']], weights=valid)
  lm = _reference_lm_loss(lm_logits, batch['tokens'], batch['lm_mask'], valid)

  loss, aux = transforms.finetune_loss_fn(model)(params, batch, None, True)
  np.testing.assert_allclose(loss, task + 0.5 * lm, rtol=1e-5)
  np.testing.assert_allclose(aux['lm_loss'], lm, rtol=1e-5)
  loss, aux = transforms.finetune_loss_fn(model, lm_coef=0.0)(params, batch, None, True)
  np.testing.assert_allclose(loss, task, rtol=1e-5)
  assert 'lm_loss' not in aux


def test_multiple_choice_and_regression_losses():
  model, params = _model_and_params('multiple_choice', 1)
  batch = _batch(
    'multiple_choice',
    [
      {'context': 'the cat', 'choices': ['sat', 'ran off', 'slept'], 'label': 1},
      {'context': 'a dog barked at', 'choices': ['me', 'the moon', 'you'], 'label': 2},
    ],
  )
  task_logits, lm_logits = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  task = -_log_softmax(task_logits)[np.arange(2), batch['label']].mean()
  lm = _reference_lm_loss(lm_logits, batch['tokens'], batch['lm_mask'], np.ones(2))
  loss, _ = transforms.finetune_loss_fn(model, lm_coef=0.5)(params, batch, None, True)
  np.testing.assert_allclose(loss, task + 0.5 * lm, rtol=1e-5)

  model, params = _model_and_params('similarity', 1)
  batch = _batch(
    'similarity',
    [
      {'text_a': 'a b', 'text_b': 'c', 'label': 4.5},
      {'text_a': 'd', 'text_b': 'e f g', 'label': 0.25},
    ],
  )
  task_logits, lm_logits = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  task = np.mean((np.asarray(task_logits, np.float64)[:, 0] - [4.5, 0.25]) ** 2)
  lm = _reference_lm_loss(lm_logits, batch['tokens'], batch['lm_mask'], np.ones(2))
  loss, aux = transforms.finetune_loss_fn(model, regression=True)(params, batch, None, True)
  np.testing.assert_allclose(aux['task_loss'], task, rtol=1e-5)
  np.testing.assert_allclose(loss, task + 0.5 * lm, rtol=1e-5)


def test_training_mode_uses_dropout_and_predictions():
  model, params = _model_and_params('classification', 2)
  batch = _batch('classification', [{'text': 'a b c', 'label': 0}, {'text': 'd e', 'label': 1}])
  loss_fn = transforms.finetune_loss_fn(model)
  eval_loss, _ = loss_fn(params, batch, None, True)
  train_loss, _ = loss_fn(params, batch, jax.random.key(1), False)
  assert abs(float(train_loss) - float(eval_loss)) > 1e-4
  # Prediction runs without dropout: the logits of an evaluation forward pass.
  logits = transforms.predict_fn(model)(params, batch)
  expected, _ = model.apply({'params': params}, batch['tokens'], batch['extract_index'])
  np.testing.assert_array_equal(logits, expected)


def test_predictions_pick_the_largest_logit_or_the_score():
  logits = np.array([[0.1, 2.0, -1.0], [3.0, 2.9, 0.0], [-5.0, -4.0, -4.5]])
  np.testing.assert_array_equal(transforms.predictions(logits, regression=False), [1, 0, 1])
  scores = np.array([[4.25], [0.5], [-1.0]])
  np.testing.assert_array_equal(transforms.predictions(scores, regression=True), [4.25, 0.5, -1.0])
