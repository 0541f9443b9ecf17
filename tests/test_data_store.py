"""The token store: exact tokens per split, unigram statistics, reuse on re-runs, shards written
by any number of workers or processes byte for byte the same."""

import functools
import inspect
import json
import threading

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
def data_config(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  (root / 'docs.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in TEXTS))
  (root / 'empty.txt').write_text('   \n')  # skipped: no text
  return ml_collections.ConfigDict(
    dict(
      corpus='local_text',
      text_glob=str(root),
      text_key='',
      validation_split='',
      validation_fraction=0.3,
      data_dir=str(root / 'tfds'),
      download=False,
    )
  )


@pytest.fixture(scope='module')
def corpus(data_config):
  corpus = corpora.open_corpus(data_config)
  corpus.prepare()
  return corpus


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory, corpus):
  documents = (text for batch in corpus.documents('train') for text in batch)
  return tokenizer_lib.train_tokenizer(
    documents, tmp_path_factory.mktemp('tok') / 'bpe.model', vocab_size=400, max_bytes=10**7
  )


def expected_tokens(corpus, split, model_path) -> np.ndarray:
  """Each document encoded on its own by sentencepiece, followed by end-of-document."""
  processor = spm.SentencePieceProcessor(model_file=str(model_path))
  eod = processor.piece_to_id(tokenizer_lib.EOD)
  ids = [
    token
    for batch in corpus.documents(split)
    for text in batch
    for token in processor.encode(text) + [eod]
  ]
  return np.array(ids)


def test_store_holds_every_document_then_eod(tmp_path, corpus, tokenizer):
  store, reused = store_lib.build_store(tmp_path / 'store', corpus, tokenizer, show_progress=False)
  assert not reused
  assert store.dtype == np.dtype('<u2')
  for split in store_lib.SPLITS:
    np.testing.assert_array_equal(
      store.tokens(split).all(), expected_tokens(corpus, split, tokenizer.model_path)
    )
    info = store.meta['splits'][split]
    assert (
      info['documents'] == corpus.num_documents(split) == (store.tokens(split).all() == 2).sum()
    )
  assert store.meta['eod_id'] == tokenizer.eod_id == 2
  assert store.meta['splits']['train']['documents'] + store.meta['splits']['validation'][
    'documents'
  ] == len(TEXTS)


def test_unigram_entropy_matches_scipy(tmp_path, corpus, tokenizer):
  store, _ = store_lib.build_store(tmp_path / 'store', corpus, tokenizer, show_progress=False)
  every_token = np.concatenate([store.tokens('train').all(), store.tokens('validation').all()])
  assert store.unigram_entropy() == pytest.approx(
    scipy.stats.entropy(np.bincount(every_token)), rel=1e-12
  )
  train_only = scipy.stats.entropy(np.bincount(store.tokens('train').all()))
  assert store.meta['splits']['train']['unigram_entropy_nats'] == pytest.approx(
    train_only, abs=1e-6
  )
  assert store_lib.unigram_entropy(np.array([5, 0, 5])) == pytest.approx(np.log(2))


def test_rerun_reuses_and_a_new_tokenizer_rebuilds(tmp_path, corpus, tokenizer):
  directory = tmp_path / 'store'
  store_lib.build_store(directory, corpus, tokenizer, show_progress=False)
  written = (directory / 'train-00000.bin').stat().st_mtime_ns
  _, reused = store_lib.build_store(directory, corpus, tokenizer, show_progress=False)
  assert reused and (directory / 'train-00000.bin').stat().st_mtime_ns == written
  other = tokenizer_lib.train_tokenizer(
    TEXTS[:20], tmp_path / 'other.model', vocab_size=350, max_bytes=10**6
  )
  store, reused = store_lib.build_store(directory, corpus, other, show_progress=False)
  assert not reused and store.meta['tokenizer_sha256'] == other.fingerprint()
  np.testing.assert_array_equal(
    store.tokens('train').all(), expected_tokens(corpus, 'train', other.model_path)
  )


def test_incomplete_or_missing_store_is_an_error(tmp_path):
  with pytest.raises(UserError, match='does not exist; build it with `gpt-jax prepare'):
    store_lib.TokenStore(tmp_path / 'store')
  (tmp_path / 'store').mkdir()
  (tmp_path / 'store' / 'train-00000.bin').write_bytes(b'\0' * 10)  # no index: interrupted
  with pytest.raises(UserError, match='is incomplete .no index.json.*gpt-jax prepare'):
    store_lib.TokenStore(tmp_path / 'store')


def _store_bytes(directory) -> dict:
  return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# About 6 shards per split of this corpus.
SHARD_MB = 3000 / 2**20


def test_shards_are_byte_identical_for_any_number_of_workers_or_processes(
  tmp_path, corpus, tokenizer, data_config
):
  one = store_lib.build_store(
    tmp_path / 'one', corpus, tokenizer, shard_mb=SHARD_MB, show_progress=False
  )[0]
  assert len(one.meta['splits']['train']['shards']) > 3
  for split in store_lib.SPLITS:  # the shards together are the split's documents, in order
    np.testing.assert_array_equal(
      one.tokens(split).all(), expected_tokens(corpus, split, tokenizer.model_path)
    )
  store_lib.build_store(
    tmp_path / 'workers',
    corpus,
    tokenizer,
    shard_mb=SHARD_MB,
    workers=2,
    open_corpus=functools.partial(corpora.open_corpus, data_config),
    show_progress=False,
  )
  # Two processes, here threads meeting at real barriers: each writes every other shard.
  barrier = threading.Barrier(2)
  threads = [
    threading.Thread(
      target=store_lib.build_store,
      args=(tmp_path / 'processes', corpus, tokenizer),
      kwargs=dict(
        shard_mb=SHARD_MB,
        process_index=i,
        process_count=2,
        show_progress=False,
        barrier=lambda name: barrier.wait(timeout=60),
      ),
    )
    for i in range(2)
  ]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  expected = _store_bytes(tmp_path / 'one')
  assert _store_bytes(tmp_path / 'workers') == expected
  assert _store_bytes(tmp_path / 'processes') == expected


def test_an_interrupted_build_is_never_read_and_resumes(tmp_path, corpus, tokenizer):
  directory = tmp_path / 'store'
  store_lib.build_store(directory, corpus, tokenizer, shard_mb=SHARD_MB, show_progress=False)
  complete = _store_bytes(directory)
  (directory / store_lib.INDEX).unlink()  # as if killed before the commit ...
  (directory / 'train-00001.json').unlink()  # ... with one shard unfinished
  (directory / 'train-00001.bin').write_bytes(b'garbage')
  with pytest.raises(UserError, match='incomplete'):
    store_lib.TokenStore(directory)
  written = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
  store, reused = store_lib.build_store(
    directory, corpus, tokenizer, shard_mb=SHARD_MB, show_progress=False
  )
  assert not reused and _store_bytes(directory) == complete
  redone = {p.name for p in directory.iterdir() if p.stat().st_mtime_ns != written.get(p.name)}
  assert redone == {'train-00001.bin', 'train-00001.json', 'counts.npy', store_lib.INDEX}
