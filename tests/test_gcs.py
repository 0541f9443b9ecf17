"""Every path on gs://, against a real GCS API on loopback (fake-gcs-server, see fake_gcs.py).

In this process: tokenizer, token store and run logs in a bucket, windows read by byte
ranges equal to the local store's, one-line errors for missing buckets and
unfinished stores. The pod-shaped run (two processes, everything in the bucket,
killed and resumed) is tests/test_gcs_pod.py.
"""

import json
import os

import numpy as np
import pytest
from etils import epath

from gpt_jax import cli
from gpt_jax import config as config_lib
from gpt_jax import workdir as workdir_lib
from gpt_jax.data import corpora, workflow
from gpt_jax.data import store as store_lib
from gpt_jax.errors import UserError
from gpt_jax.report import RunLog

TEXTS = [
  f'document {i}: ' + 'the quick brown fox jumps over the lazy dog. ' * (5 + i % 7)
  for i in range(60)
]


def make_config(tmp_path, data_dir, *overrides):
  corpus = tmp_path / 'corpus.jsonl'
  if not corpus.exists():
    corpus.write_text(''.join(json.dumps({'text': text}) + '\n' for text in TEXTS))
  return config_lib.load_config(
    'tiny',
    [
      'data.corpus=local_text',
      f'data.text_glob={corpus}',
      'data.validation_fraction=0.3',
      f'data.data_dir={data_dir}',
      f'data.tfds_dir={tmp_path / "tfds"}',
      'data.shard_mb=0.004',
      'data.prepare_workers=1',
      'model.vocab_size=320',
      'train.batch_size=8',
      'train.seq_len=16',
      'train.eval_batches=2',
      *overrides,
    ],
  )


def test_tokenizer_and_store_in_a_bucket_read_like_the_local_ones(tmp_path, gcs, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would land in ./gs:
  bucket = gcs.bucket()
  remote = make_config(tmp_path, f'{bucket}/data')
  local = make_config(tmp_path, tmp_path / 'data')
  for config in (remote, local):
    workflow.train_tokenizer(config, log=lambda _: None)
    workflow.prepare(config, log=lambda _: None)
  assert not (tmp_path / 'gs:').exists()
  stores = epath.Path(f'{bucket}/data/gpt_jax_token_stores')
  (store_dir,) = stores.iterdir()
  names = sorted(path.name for path in store_dir.iterdir())
  assert store_lib.INDEX in names and 'train-00003.bin' in names  # several shards
  local_dir = next((tmp_path / 'data' / 'gpt_jax_token_stores').iterdir())
  for name in names:  # the same bytes wherever they were written
    if name != store_lib.INDEX:
      assert (store_dir / name).read_bytes() == (local_dir / name).read_bytes(), name
  indexes = [json.loads((d / store_lib.INDEX).read_text()) for d in (store_dir, local_dir)]
  assert indexes[0].pop('tokenizer').startswith('gs://')  # where it came from; nothing else differs
  assert indexes[0] == {k: v for k, v in indexes[1].items() if k != 'tokenizer'}

  remote_data, local_data = workflow.pretrain_data(remote), workflow.pretrain_data(local)
  assert type(remote_data.store.tokens('train')).__name__ == 'RemoteTokens'
  for _ in range(20):  # includes windows that cross shard boundaries
    np.testing.assert_array_equal(next(remote_data.train_batches), next(local_data.train_batches))
  for a, b in zip(remote_data.eval_batches(), local_data.eval_batches(), strict=True):
    np.testing.assert_array_equal(a, b)
  # Every window of the split, from both readers, against the split read whole.
  tokens = local_data.store.tokens('train').all()
  starts = np.arange(0, len(tokens) - 17, 7)
  np.testing.assert_array_equal(
    remote_data.store.tokens('train').read(starts, 17),
    np.stack([tokens[s : s + 17] for s in starts]).astype(np.int32),
  )


def test_a_store_without_its_index_is_never_read_and_is_rebuilt(tmp_path, gcs):
  config = make_config(tmp_path, f'{gcs.bucket()}/data')
  workflow.train_tokenizer(config, log=lambda _: None)
  store = workflow.prepare(config, log=lambda _: None)
  (store.directory / store_lib.INDEX).unlink()
  with pytest.raises(UserError, match='is incomplete .no index.json'):
    workflow.pretrain_data(config)
  messages = []
  workflow.prepare(config, log=messages.append)
  assert messages[-1].startswith('wrote token store')
  assert workflow.pretrain_data(config).train_tokens == store.num_tokens('train')


def test_run_log_reaches_the_bucket_during_the_run(gcs):
  workdir = epath.Path(f'{gcs.bucket()}/run')
  log = RunLog(workdir, progress=False, upload_every_s=0)
  for step in (10, 20):
    log.scalars(step, {'loss': 4.0 - step / 10, 'learning_rate': 1e-3})
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert records[-1]['step'] == step  # uploaded without closing: a killed run keeps it
  assert any((workdir / 'tensorboard').iterdir())
  log.close()
  assert (workdir / 'curves.png').stat().length > 1000


def test_missing_bucket_is_one_line_before_any_work(tmp_path, gcs, capsys):
  del gcs
  with pytest.raises(UserError, match='bucket gs://no-such-bucket-[0-9]+ does not exist'):
    workdir_lib.check_workdir(f'gs://no-such-bucket-{os.getpid()}/run')
  flags = [
    '--config.data.corpus=local_text',
    f'--config.data.text_glob={tmp_path}/c.jsonl',
    f'--config.data.data_dir=gs://no-such-bucket-{os.getpid()}/data',
    f'--config.data.tfds_dir={tmp_path / "tfds"}',
    '--config.model.vocab_size=320',
  ]
  (tmp_path / 'c.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in TEXTS))
  assert cli.main(['tokenizer', '--config', 'tiny', *flags]) == 1
  err = capsys.readouterr().err
  assert (
    err.startswith('gpt-jax: error: tokenizer directory gs://no-such-bucket-')
    and ('does not exist' in err)
    and err.count('\n') == 1
  )  # before the corpus is even read


def test_local_text_files_read_from_a_bucket(tmp_path, gcs):
  bucket = epath.Path(gcs.bucket())
  for i, text in enumerate(TEXTS[:6]):
    (bucket / 'books' / f'{i}.txt').write_text(text)
  (bucket / 'books' / 'more' / 'rest.jsonl').write_text(
    ''.join(json.dumps({'text': text}) + '\n' for text in TEXTS[6:12])
  )
  (bucket / 'books' / 'notes.md').write_text('not a corpus file')
  for glob, expected in ((f'{bucket}/books', TEXTS[:12]), (f'{bucket}/books/*.txt', TEXTS[:6])):
    config = make_config(tmp_path, tmp_path / 'data', f'data.text_glob={glob}')
    corpus = corpora.open_corpus(config.data)
    corpus.prepare()
    found = [
      text
      for split in ('train', 'validation')
      for batch in corpus.documents(split)
      for text in batch
    ]
    assert sorted(found) == sorted(expected)
