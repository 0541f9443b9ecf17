"""The data steps from a config: tokenizer -> prepare -> pretrain batches, reuse and errors."""

import inspect
import json
import textwrap

import numpy as np
import pytest

from gpt_jax import config as config_lib
from gpt_jax.data import workflow
from gpt_jax.errors import UserError

TEXTS = [
  inspect.getdoc(obj)
  for module in (json, textwrap)
  for obj in vars(module).values()
  if inspect.getdoc(obj)
]


def make_config(tmp_path, *overrides):
  corpus = tmp_path / 'corpus.jsonl'
  if not corpus.exists():
    corpus.write_text(''.join(json.dumps({'text': text}) + '\n' for text in TEXTS))
  return config_lib.load_config(
    'tiny',
    [
      'data.corpus=local_text',
      f'data.text_glob={corpus}',
      'data.validation_fraction=0.3',
      f'data.data_dir={tmp_path / "data"}',
      'model.vocab_size=400',
      'train.batch_size=8',
      'train.seq_len=32',
      'train.eval_batches=3',
      *overrides,
    ],
  )


def test_tokenizer_prepare_pretrain_data_and_reuse(tmp_path):
  config, messages = make_config(tmp_path), []
  tokenizer = workflow.train_tokenizer(config, log=messages.append)
  assert tokenizer.vocab_size == 400 and 'eod_id 2' in messages[-1]
  store = workflow.prepare(config, log=messages.append)
  assert messages[-1].startswith('wrote token store')
  data = workflow.pretrain_data(config)
  batch = next(data.train_batches)
  assert batch.shape == (8, 33) and batch.dtype == np.int32
  assert data.train_tokens == store.num_tokens('train') == len(store.tokens('train'))
  assert data.train_tokens + store.num_tokens('validation') > len(''.join(TEXTS)) / 8
  eval_batches = list(data.eval_batches())
  assert len(eval_batches) == 3 and all(b.shape == (8, 33) for b in eval_batches)
  # Windows decode back to corpus text: each run between end-of-document tokens lies in one text.
  for window in eval_batches[0]:
    for run in np.split(window, np.flatnonzero(window == tokenizer.eod_id)):
      assert any(tokenizer.decode(run) in text for text in TEXTS)
  # Rerunning either step reuses its output.
  workflow.train_tokenizer(config, log=messages.append)
  assert messages[-1].startswith('reusing tokenizer')
  workflow.prepare(config, log=messages.append)
  assert messages[-1].startswith('reusing token store')
  # Another vocabulary size is another tokenizer and another store, not an overwrite.
  bigger = make_config(tmp_path, 'model.vocab_size=500')
  assert workflow.train_tokenizer(bigger, log=messages.append).vocab_size == 500
  assert workflow.prepare(bigger, log=messages.append).directory != store.directory
  assert workflow.pretrain_data(config).tokenizer.vocab_size == 400


def test_steps_out_of_order_or_mismatched_are_one_line_errors(tmp_path):
  config = make_config(tmp_path)
  with pytest.raises(UserError, match='no tokenizer at .* `gpt-jax tokenizer`'):
    workflow.prepare(config, log=lambda _: None)
  tokenizer = workflow.train_tokenizer(config, log=lambda _: None)
  with pytest.raises(
    UserError, match='token store .* does not exist; build it with `gpt-jax prepare'
  ):
    workflow.pretrain_data(config)
  smaller_model = make_config(
    tmp_path, f'data.tokenizer={tokenizer.model_path}', 'model.vocab_size=300'
  )
  with pytest.raises(UserError, match='has 400 pieces but model.vocab_size=300'):
    workflow.prepare(smaller_model, log=lambda _: None)
  missing = make_config(tmp_path, f'data.text_glob={tmp_path / "nothing_here"}')
  with pytest.raises(UserError, match='no such file or directory'):
    workflow.train_tokenizer(missing, log=lambda _: None)
