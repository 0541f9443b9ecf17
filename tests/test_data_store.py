"""The token store: exact tokens per split, unigram statistics, reuse on re-runs."""

import inspect
import json

import ml_collections
import numpy as np
import pytest
import scipy.stats
import sentencepiece as spm

from gpt_jax.data import corpora
from gpt_jax.data import store as store_lib
from gpt_jax.data import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

TEXTS = [inspect.getdoc(obj) for obj in vars(json).values() if inspect.getdoc(obj)]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  (root / 'docs.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in TEXTS))
  (root / 'empty.txt').write_text('   \n')  # skipped: no text
  config = ml_collections.ConfigDict(dict(
      corpus='local_text', text_glob=str(root), text_key='', validation_split='',
      validation_fraction=0.3, data_dir=str(root / 'tfds'), download=False))
  corpus = corpora.open_corpus(config)
  corpus.prepare()
  return corpus


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory, corpus):
  documents = (text for batch in corpus.documents('train') for text in batch)
  return tokenizer_lib.train_tokenizer(documents, tmp_path_factory.mktemp('tok') / 'bpe.model',
                                       vocab_size=400, max_bytes=10**7)


def expected_tokens(corpus, split, model_path) -> np.ndarray:
  """Each document encoded on its own by sentencepiece, followed by end-of-document."""
  processor = spm.SentencePieceProcessor(model_file=str(model_path))
  eod = processor.piece_to_id(tokenizer_lib.EOD)
  ids = [token for batch in corpus.documents(split) for text in batch
         for token in processor.encode(text) + [eod]]
  return np.array(ids)


def test_store_holds_every_document_then_eod(tmp_path, corpus, tokenizer):
  store, reused = store_lib.build_store(tmp_path / 'store', corpus, tokenizer, show_progress=False)
  assert not reused
  assert store.dtype == np.dtype('<u2')
  for split in store_lib.SPLITS:
    np.testing.assert_array_equal(store.tokens(split), expected_tokens(corpus, split,
                                                                       tokenizer.model_path))
    info = store.meta['splits'][split]
    assert info['documents'] == corpus.num_documents(split) == (store.tokens(split) == 2).sum()
  assert store.meta['eod_id'] == tokenizer.eod_id == 2
  assert store.meta['splits']['train']['documents'] + store.meta['splits']['validation'][
      'documents'] == len(TEXTS)


def test_unigram_entropy_matches_scipy(tmp_path, corpus, tokenizer):
  store, _ = store_lib.build_store(tmp_path / 'store', corpus, tokenizer, show_progress=False)
  every_token = np.concatenate([store.tokens('train'), store.tokens('validation')])
  assert store.unigram_entropy() == pytest.approx(scipy.stats.entropy(np.bincount(every_token)),
                                                  rel=1e-12)
  train_only = scipy.stats.entropy(np.bincount(store.tokens('train')))
  assert store.meta['splits']['train']['unigram_entropy_nats'] == pytest.approx(train_only, abs=1e-6)
  assert store_lib.unigram_entropy(np.array([5, 0, 5])) == pytest.approx(np.log(2))


def test_rerun_reuses_and_a_new_tokenizer_rebuilds(tmp_path, corpus, tokenizer):
  directory = tmp_path / 'store'
  store_lib.build_store(directory, corpus, tokenizer, show_progress=False)
  written = (directory / 'train.bin').stat().st_mtime_ns
  _, reused = store_lib.build_store(directory, corpus, tokenizer, show_progress=False)
  assert reused and (directory / 'train.bin').stat().st_mtime_ns == written
  other = tokenizer_lib.train_tokenizer(TEXTS[:20], tmp_path / 'other.model', vocab_size=350,
                                        max_bytes=10**6)
  store, reused = store_lib.build_store(directory, corpus, other, show_progress=False)
  assert not reused and store.meta['tokenizer_sha256'] == other.fingerprint()
  assert not (tmp_path / 'store.partial').exists()


def test_incomplete_or_missing_store_is_an_error(tmp_path):
  (tmp_path / 'store').mkdir()
  (tmp_path / 'store' / 'train.bin').write_bytes(b'\0' * 10)  # no meta.json: interrupted
  with pytest.raises(UserError, match='gpt-jax prepare'):
    store_lib.TokenStore(tmp_path / 'store')
