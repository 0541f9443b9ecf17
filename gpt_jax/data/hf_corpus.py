"""Hugging Face `datasets` as a corpus: `data.corpus=hf:NAME[:CONFIG]`.

NAME is any of
  - a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
  - parquet / jsonl / json / csv files: one file, a glob, or a directory of them
    (local, or on gs:// through fsspec);
  - a hub dataset id, read from the local Hugging Face cache (set
    HF_DATASETS_OFFLINE=1 on machines without internet).
The text is in data.text_key (default "text"). The validation split is
data.validation_split, else "validation", else "test", else the last
data.validation_fraction of "train".

Datasets are Arrow tables, memory-mapped and random-access, so a shard of the token
store is read by index range exactly like a TFDS data source. Streaming
(`streaming=True`) is not used: a streamed dataset has no length or random access,
so its documents could not be cut into the same shards by any number of processes.
A corpus too large for one disk is instead given as parquet files in a bucket
(gs://...): parquet files are read in place (gpt_jax.data.parquet_files: row counts
from the footers, a shard's rows from the row groups that hold them), never copied
into a local cache, so every host of a pod reads only its own shards' text. jsonl,
csv, save_to_disk directories and hub ids are loaded by `datasets`.
"""

import functools
import os
from collections.abc import Callable, Iterator

from gpt_jax import workdir as workdir_lib
from gpt_jax.data import parquet_files
from gpt_jax.data.corpus import Corpus
from gpt_jax.errors import UserError

_FILE_BUILDERS = {'.parquet': 'parquet', '.jsonl': 'json', '.json': 'json', '.csv': 'csv'}


class HfCorpus(Corpus):
  """A `datasets` Dataset(Dict) with a train and a validation split."""

  def __init__(
    self,
    source: str,
    config_name: str,
    text_key: str,
    validation_split: str,
    validation_fraction: float,
  ):
    self.source, self.config_name = source, config_name
    self.text_key, self.validation_split = text_key, validation_split
    self.validation_fraction = validation_fraction

  @property
  def name(self) -> str:
    return f'hf:{self.source}' + (f':{self.config_name}' if self.config_name else '')

  @functools.cached_property
  def _splits(self) -> dict:
    """'train' / 'validation' -> (table, first row, end row); a table is a ParquetTable or a
    DatasetTable."""
    loaded = _load(self.source, self.config_name)
    names = list(loaded)
    if 'train' not in loaded:
      raise UserError(f'{self.name} has no train split (it has {", ".join(names)})')
    if self.validation_split and self.validation_split not in loaded:
      raise UserError(
        f'data.validation_split={self.validation_split!r}: {self.name} has splits '
        f'{", ".join(names)}'
      )
    train = loaded['train']
    for split in loaded.values():
      if self.text_key not in split.column_names:
        raise UserError(
          f'{self.name} has no column {self.text_key!r} (it has '
          f'{", ".join(split.column_names)}); set --config.data.text_key'
        )
    validation = self.validation_split or next(
      (name for name in ('validation', 'test') if name in loaded), ''
    )
    if validation:
      return {
        'train': (train, 0, len(train)),
        'validation': (loaded[validation], 0, len(loaded[validation])),
      }
    held_out = round(len(train) * self.validation_fraction)
    if not 0 < held_out < len(train):
      raise UserError(
        f'data.validation_fraction={self.validation_fraction} holds out '
        f'{held_out} of the {len(train)} documents of {self.name}:train (it has no '
        'validation split); choose a fraction that keeps some on both sides'
      )
    return {
      'train': (train, 0, len(train) - held_out),
      'validation': (train, len(train) - held_out, len(train)),
    }

  @property
  def split_names(self) -> dict[str, str]:
    return {
      split: f'{table.split or "train"}[{first}:{end}]'
      for split, (table, first, end) in self._splits.items()
    }

  def prepare(self) -> None:
    for split in ('train', 'validation'):
      if self.num_documents(split) == 0:
        raise UserError(f'the {split} split of {self.name} holds no documents')

  def num_documents(self, split: str) -> int:
    _, first, end = self._splits[split]
    return end - first

  def documents(
    self, split: str, start: int = 0, stop: int | None = None, batch_size: int = 256
  ) -> Iterator[list[str]]:
    table, first, end = self._splits[split]
    stop = end - first if stop is None else stop
    for texts in table.texts(self.text_key, first + start, first + stop, batch_size):
      yield [text if isinstance(text, str) else '' for text in texts]

  def identity(self) -> dict:
    splits = {}
    for split, (table, first, end) in self._splits.items():
      fraction = (end - first) / max(len(table), 1)
      splits[split] = dict(
        spec=self.split_names[split],
        documents=end - first,
        bytes=int(table.text_bytes(self.text_key) * fraction),
        **table.identity(),
      )
    return dict(name=self.name, text_key=self.text_key, splits=splits)

  def opener(self, reopen: Callable[[], Corpus]) -> Callable[[], Corpus]:
    """This corpus as it is, its tables opened once prepared: a pod host's ~100 workers would
    otherwise each read every parquet footer again (c4/en: ~1,000 files) or load the dataset
    again."""
    del reopen
    return functools.partial(_itself, self)


def _itself(corpus: HfCorpus) -> HfCorpus:
  return corpus


class DatasetTable:
  """A `datasets.Dataset` as the rows HfCorpus reads (what ParquetTable offers for files)."""

  def __init__(self, dataset):
    self.dataset, self.split = dataset, dataset.split
    self.column_names = dataset.column_names

  def __len__(self) -> int:
    return len(self.dataset)

  def text_bytes(self, key: str) -> int:  # pylint: disable=unused-argument
    return self.dataset.data.nbytes  # every column, as before: existing stores keep their shards

  def identity(self) -> dict:
    return dict(fingerprint=self.dataset._fingerprint)  # pylint: disable=protected-access

  def texts(self, key: str, start: int, stop: int, batch_size: int) -> Iterator[list]:
    column = self.dataset.select_columns([key])
    for row in range(start, stop, batch_size):
      yield column[row : min(row + batch_size, stop)][key]


def _load(source: str, config_name: str) -> dict:
  """split -> table: parquet files read in place, else what `datasets` loads."""
  import datasets  # pylint: disable=import-outside-toplevel

  try:
    files = None if config_name else parquet_files.resolve(source)
    return parquet_files.open_tables(files) if files else _load_with_datasets(source, config_name)
  except UserError:
    raise
  except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
    raise UserError(
      f'data.corpus=hf:{source}: cannot load it '
      f'({str(error).splitlines()[0] if str(error) else type(error).__name__}); give '
      'a save_to_disk directory, parquet/jsonl/csv files, or a cached hub id'
    ) from None


def _load_with_datasets(source: str, config_name: str) -> dict:
  """split -> DatasetTable, from a save_to_disk directory, data files or the hub."""
  import datasets  # pylint: disable=import-outside-toplevel

  path = workdir_lib.path(source)
  if (path / 'dataset_dict.json').exists() or (path / 'state.json').exists():
    loaded = datasets.load_from_disk(str(path))
  elif os.path.splitext(source)[1] in _FILE_BUILDERS:
    loaded = datasets.load_dataset(
      _FILE_BUILDERS[os.path.splitext(source)[1]], data_files={'train': source}
    )
  else:
    loaded = datasets.load_dataset(source, config_name or None)
  loaded = loaded if isinstance(loaded, datasets.DatasetDict) else {'train': loaded}
  return {split: DatasetTable(dataset) for split, dataset in loaded.items()}


def open_hf_corpus(data_config) -> HfCorpus:
  rest = data_config.corpus[len('hf:') :]
  source, colon, config_name = rest.rpartition(':')
  if not colon or '/' in config_name:  # no CONFIG: the colon (if any) is a URL's, gs://...
    source, config_name = rest, ''
  if not source:
    raise UserError('data.corpus=hf:NAME[:CONFIG] needs a NAME (hub id, directory or files)')
  return HfCorpus(
    source,
    config_name,
    data_config.text_key or 'text',
    data_config.validation_split,
    data_config.validation_fraction,
  )
