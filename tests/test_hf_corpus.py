"""`data.corpus=hf:...`: Hugging Face datasets from save_to_disk directories and data files
(local or in a bucket), as documents, a tokenizer and a token store; parquet files read in
place, giving what `datasets` gives without copying the files."""

import json
import pickle

import datasets
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etils import epath

from gpt_jax import config as config_lib
from gpt_jax.data import corpora, hf_corpus, parquet_files, workflow
from gpt_jax.data import store as store_lib
from gpt_jax.data import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

TEXTS = [
  f'record {i}: a fox and a dog met {i % 5} times by the river. ' * (3 + i % 4) for i in range(40)
]


def data_config(corpus, **fields):
  return ml_collections.ConfigDict(
    dict(
      dict(
        corpus=corpus,
        text_key='',
        validation_split='',
        validation_fraction=0.25,
        data_dir='',
        download=False,
      ),
      **fields,
    )
  )


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
  datasets.DatasetDict(
    {
      'train': datasets.Dataset.from_dict({'text': TEXTS[:32]}),
      'validation': datasets.Dataset.from_dict({'text': TEXTS[32:]}),
    }
  ).save_to_disk(str(directory))
  config = config_lib.load_config(
    'tiny',
    [
      f'data.corpus=hf:{directory}',
      f'data.data_dir={tmp_path / "data"}',
      'model.vocab_size=320',
      'data.prepare_workers=1',
    ],
  )
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


# A multi-file parquet corpus: 3 train files (row groups of 4 rows; one file of 1 row) and a
# validation file, named so that `datasets` infers the splits from a directory; a null and an
# empty text among the rows.
ROWS = [*TEXTS[:17], None, *TEXTS[17:30], '', *TEXTS[30:]]
FILES = {
  'train-00000-of-00003.parquet': (0, 11, 4),
  'train-00001-of-00003.parquet': (11, 12, 4),
  'train-00002-of-00003.parquet': (12, 34, 4),
  'validation-00000-of-00001.parquet': (34, 42, 3),
}


def write_parquet_corpus(directory):
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for name, (first, end, group_rows) in FILES.items():
    table = pa.table({'id': list(range(first, end)), 'text': ROWS[first:end]})
    with (directory / name).open('wb') as file:
      pq.write_table(table, file, row_group_size=group_rows)


def through_datasets(source, monkeypatch):
  """The corpus as it was read before parquet was read in place: `datasets.load_dataset`
  (hf_corpus's code path for every other source), split as usual."""
  corpus = corpora.open_corpus(data_config(f'hf:{source}'))
  with monkeypatch.context() as patch:
    patch.setattr(hf_corpus, '_load', hf_corpus._load_with_datasets)  # pylint: disable=protected-access
    corpus.prepare()
  assert isinstance(corpus._splits['train'][0], hf_corpus.DatasetTable)  # pylint: disable=protected-access
  return corpus


def in_place(source, monkeypatch):
  """The corpus read by gpt_jax.data.parquet_files; `datasets` may load nothing."""
  corpus = corpora.open_corpus(data_config(f'hf:{source}'))
  with monkeypatch.context() as patch:
    patch.setattr(datasets, 'load_dataset', None)
    patch.setattr(datasets, 'load_from_disk', None)
    corpus.prepare()
  assert isinstance(corpus._splits['train'][0], parquet_files.ParquetTable)  # pylint: disable=protected-access
  return corpus


def test_parquet_files_read_in_place_give_the_documents_datasets_gives(tmp_path, monkeypatch):
  write_parquet_corpus(tmp_path / 'corpus')
  # A directory: splits from the file names. A glob of the train files: the last quarter of
  # them is held out for validation.
  for source in (tmp_path / 'corpus', tmp_path / 'corpus' / 'train-*.parquet'):
    reference, corpus = through_datasets(source, monkeypatch), in_place(source, monkeypatch)
    assert corpus.split_names == reference.split_names
    for split in ('train', 'validation'):
      assert documents(corpus, split) == documents(reference, split)
    train = documents(corpus, 'train')
    assert train == [text or '' for text in ROWS[: len(train)]] and train[17] == ''  # the null
    for start, stop in ((0, 3), (3, 9), (10, 13), (11, 12), (5, 24), (12, 12)):  # files, groups
      assert [t for b in corpus.documents('train', start, stop, 3) for t in b] == train[start:stop]
  identity = in_place(tmp_path / 'corpus', monkeypatch).identity()
  assert [
    [path.rsplit('/', 1)[1], rows] for path, _, rows in identity['splits']['train']['files']
  ] == [[name, end - first] for name, (first, end, _) in list(FILES.items())[:3]]
  text_bytes = sum(map(len, ROWS[34:]))  # the footers' size of the text column, for planning
  assert text_bytes / 2 < identity['splits']['validation']['bytes'] < text_bytes * 2


def test_a_store_from_parquet_in_place_is_the_datasets_one_byte_for_byte(tmp_path, monkeypatch):
  write_parquet_corpus(tmp_path / 'corpus')
  tokenizer = tokenizer_lib.train_tokenizer(
    TEXTS, tmp_path / 'bpe.model', vocab_size=320, max_bytes=10**7
  )
  corpora_by_name = dict(
    datasets=through_datasets(tmp_path / 'corpus', monkeypatch),
    in_place=in_place(tmp_path / 'corpus', monkeypatch),
  )
  stores = {
    name: store_lib.build_store(tmp_path / name, corpus, tokenizer, show_progress=False)[0]
    for name, corpus in corpora_by_name.items()
  }
  for name in ('train-00000.bin', 'validation-00000.bin', 'counts.npy'):  # one shard a split
    assert (tmp_path / 'datasets' / name).read_bytes() == (
      tmp_path / 'in_place' / name
    ).read_bytes()
  for split in store_lib.SPLITS:
    assert stores['in_place'].num_tokens(split) == stores['datasets'].num_tokens(split) > 0
  # Cut into shards of ~1,000 bytes of text (shard ranges cross files and row groups).
  sharded = store_lib.build_store(
    tmp_path / 'sharded',
    corpora_by_name['in_place'],
    tokenizer,
    shard_mb=1000 / 2**20,
    show_progress=False,
  )[0]
  assert len(sharded.meta['splits']['train']['shards']) > 3
  for split in store_lib.SPLITS:
    np.testing.assert_array_equal(
      sharded.tokens(split).all(), stores['datasets'].tokens(split).all()
    )


def test_a_range_reads_only_its_files_row_groups_and_the_text_column(tmp_path, monkeypatch):
  write_parquet_corpus(tmp_path / 'corpus')
  corpus = in_place(tmp_path / 'corpus' / 'train-*.parquet', monkeypatch)  # footers read
  expected = documents(corpus, 'train')[17:21]  # rows 5-8 of the third file: its groups 1 and 2
  for name in list(FILES)[:2]:  # any read of another file fails
    (tmp_path / 'corpus' / name).unlink()
  reads = []
  iter_batches = pq.ParquetFile.iter_batches

  def recorded(parquet, *args, **kwargs):
    reads.append((kwargs['row_groups'], kwargs['columns']))
    return iter_batches(parquet, *args, **kwargs)

  monkeypatch.setattr(pq.ParquetFile, 'iter_batches', recorded)
  assert [t for batch in corpus.documents('train', 17, 21, 2) for t in batch] == expected
  assert reads == [([1, 2], ['text'])]


def test_parquet_in_a_bucket_is_prepared_in_place(gcs, tmp_path, monkeypatch):
  bucket = gcs.bucket()
  write_parquet_corpus(f'{bucket}/corpus')
  glob = in_place(f'{bucket}/corpus/train-*.parquet', monkeypatch)
  assert documents(glob, 'train') + documents(glob, 'validation') == [
    text or '' for text in ROWS[:34]
  ]
  config = config_lib.load_config(
    'tiny',
    [
      f'data.corpus=hf:{bucket}/corpus',
      f'data.data_dir={bucket}/data',
      'model.vocab_size=320',
      'data.prepare_workers=1',
      f'data.shard_mb={1000 / 2**20}',
    ],
  )
  monkeypatch.setattr(datasets, 'load_dataset', None)
  tokenizer = workflow.train_tokenizer(config, log=lambda _: None)
  store = workflow.prepare(config, log=lambda _: None)
  assert (
    str(store.directory).startswith(f'{bucket}/data/')
    and len(store.meta['splits']['train']['shards']) > 3
  )
  for split, rows in (('train', ROWS[:34]), ('validation', ROWS[34:])):
    expected = np.concatenate([tokenizer.encode(t) + [tokenizer.eod_id] for t in rows if t])
    np.testing.assert_array_equal(store.tokens(split).all(), expected)


def test_parquet_mistakes_are_one_line(tmp_path):
  write_parquet_corpus(tmp_path / 'corpus')
  with pytest.raises(UserError, match=r"has no column 'body' \(it has id, text\); set "):
    corpora.open_corpus(data_config(f'hf:{tmp_path}/corpus', text_key='body')).prepare()
  with pytest.raises(UserError, match=r'hf:.*/corpus/test-\*\.parquet: no parquet file matches'):
    corpora.open_corpus(data_config(f'hf:{tmp_path}/corpus/test-*.parquet')).prepare()
  with pytest.raises(UserError, match=r"validation_split='test': .* has splits train$"):
    corpora.open_corpus(
      data_config(f'hf:{tmp_path}/corpus/train-*.parquet', validation_split='test')
    ).prepare()


def test_worker_processes_get_the_footers_read_once(tmp_path, monkeypatch):
  write_parquet_corpus(tmp_path / 'corpus')
  corpus = in_place(tmp_path / 'corpus', monkeypatch)
  opener = pickle.dumps(corpus.opener(lambda: pytest.fail('the worker opened it again')))
  monkeypatch.setattr(parquet_files.ParquetFile, 'read', None)  # a worker reads no footer
  worker_corpus = pickle.loads(opener)()
  for split in ('train', 'validation'):
    assert documents(worker_corpus, split) == documents(corpus, split)
