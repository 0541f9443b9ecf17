"""`data.corpus=hf:...`: Hugging Face datasets from save_to_disk directories and data files
(local or in a bucket), as documents, a tokenizer and a token store."""

import json

import datasets
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etils import epath

from gpt_jax import config as config_lib
from gpt_jax.data import corpora, workflow
from gpt_jax.errors import UserError

TEXTS = [f'record {i}: a fox and a dog met {i % 5} times by the river. ' * (3 + i % 4)
         for i in range(40)]


def data_config(corpus, **fields):
  return ml_collections.ConfigDict(dict(dict(
      corpus=corpus, text_key='', validation_split='', validation_fraction=0.25, data_dir='',
      download=False), **fields))


def documents(corpus, split):
  return [text for batch in corpus.documents(split, batch_size=7) for text in batch]


def test_jsonl_file_with_a_configurable_text_field(tmp_path):
  path = tmp_path / 'docs.jsonl'
  path.write_text(''.join(json.dumps({'body': t, 'id': i}) + '\n' for i, t in enumerate(TEXTS)))
  corpus = corpora.open_corpus(data_config(f'hf:{path}', text_key='body'))
  corpus.prepare()
  # No validation split in one file: the last quarter of train is held out.
  assert documents(corpus, 'train') == TEXTS[:30] and documents(corpus, 'validation') == TEXTS[30:]
  assert [t for batch in corpus.documents('train', 5, 12) for t in batch] == TEXTS[5:12]
  assert corpus.identity()['splits']['train']['documents'] == 30
  with pytest.raises(UserError, match="has no column 'text' .*body, id.*data.text_key"):
    corpora.open_corpus(data_config(f'hf:{path}')).prepare()


def test_save_to_disk_directory_keeps_its_validation_split_and_feeds_a_store(tmp_path):
  directory = tmp_path / 'saved'
  datasets.DatasetDict({
      'train': datasets.Dataset.from_dict({'text': TEXTS[:32]}),
      'validation': datasets.Dataset.from_dict({'text': TEXTS[32:]}),
  }).save_to_disk(str(directory))
  config = config_lib.load_config('tiny', [
      f'data.corpus=hf:{directory}', f'data.data_dir={tmp_path / "data"}',
      'model.vocab_size=320', 'data.prepare_workers=1'])
  tokenizer = workflow.train_tokenizer(config, log=lambda _: None)
  store = workflow.prepare(config, log=lambda _: None)
  for split, texts in (('train', TEXTS[:32]), ('validation', TEXTS[32:])):
    expected = np.concatenate([tokenizer.encode(t) + [tokenizer.eod_id] for t in texts])
    np.testing.assert_array_equal(store.tokens(split).all(), expected)
  assert 'hf_' in str(store.directory)  # named after the corpus


def test_parquet_in_a_bucket(gcs):
  url = f'{gcs.bucket()}/corpus/train.parquet'
  with epath.Path(url).open('wb') as file:
    pq.write_table(pa.table({'text': TEXTS}), file)
  corpus = corpora.open_corpus(data_config(f'hf:{url}'))
  corpus.prepare()
  assert corpus.name == f'hf:{url}'
  assert documents(corpus, 'train') + documents(corpus, 'validation') == TEXTS


def test_a_corpus_that_cannot_be_loaded_is_one_line(tmp_path):
  with pytest.raises(UserError, match=r'hf:.*missing\.parquet: cannot load it'):
    corpora.open_corpus(data_config(f'hf:{tmp_path / "missing.parquet"}')).prepare()
