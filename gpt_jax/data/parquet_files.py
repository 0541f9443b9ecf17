"""Parquet files read in place: an `hf:` corpus of parquet files without a local copy.

`datasets.load_dataset` downloads and converts every file of a corpus into the machine's
Arrow cache before it reads one row, so c4/en (~800 GB of text) in a bucket would have to
fit on every pod host's disk. An `hf:` corpus that is parquet files (one file, a glob, or
a directory of them; local or gs://) is read here instead:

  - the files and their splits are the ones `datasets` resolves for the same source, in its
    order (sorted within a pattern), so the documents are the same and come in the same order;
  - row counts and the text column's size come from the files' footers alone;
  - documents [start, stop) of a split are read from the files and row groups that hold
    them, and of those only the text column.

So every host of a pod tokenises its own shards of the token store reading only their rows,
straight from the bucket.
"""

import bisect
import concurrent.futures
import dataclasses
import itertools
import os
from collections.abc import Iterator

import fsspec
import pyarrow.parquet as pq

from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ParquetFile:
  """One file's footer: where it is, its size, rows per row group, bytes per column."""

  path: str  # a local path or a URL, as `datasets` resolved it
  size: int
  group_rows: tuple[int, ...]
  columns: tuple[str, ...]
  column_bytes: dict  # column -> uncompressed bytes over all row groups

  @property
  def rows(self) -> int:
    return sum(self.group_rows)

  @classmethod
  def read(cls, path: str) -> 'ParquetFile':
    """Reads the footer only."""
    filesystem, where = fsspec.core.url_to_fs(path)
    with filesystem.open(where, 'rb') as file:
      parquet = pq.ParquetFile(file)
      metadata, columns = parquet.metadata, tuple(parquet.schema_arrow.names)
    groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
    column_bytes = dict.fromkeys(columns, 0)
    for chunk in (group.column(c) for group in groups for c in range(group.num_columns)):
      name = chunk.path_in_schema.split('.')[0]  # a nested column's leaves count for it
      column_bytes[name] = column_bytes.get(name, 0) + chunk.total_uncompressed_size
    return cls(
      path, filesystem.size(where), tuple(group.num_rows for group in groups), columns, column_bytes
    )

  def texts(self, key: str, start: int, stop: int, batch_size: int) -> Iterator[list]:
    """Column `key` of rows [start, stop), reading only the row groups they lie in."""
    bounds = [0, *itertools.accumulate(self.group_rows)]
    groups = [g for g in range(len(self.group_rows)) if bounds[g] < stop and bounds[g + 1] > start]
    if not groups:
      return
    row = bounds[groups[0]]  # the file's row number of the next batch's first row
    with fsspec.open(self.path, 'rb') as file:
      for batch in pq.ParquetFile(file).iter_batches(
        batch_size, row_groups=groups, columns=[key], use_threads=False
      ):
        first, end = max(start - row, 0), min(stop - row, batch.num_rows)
        if first < end:
          yield batch.column(0).slice(first, end - first).to_pylist()
        row += batch.num_rows
        if row >= stop:
          return


class ParquetTable:
  """A split: the rows of its files one after another, readable by range."""

  def __init__(self, split: str, files: list[ParquetFile]):
    self.split, self.files = split, files
    # A column the reader may ask for is one every file has.
    self.column_names = [
      name for name in files[0].columns if all(name in file.columns for file in files)
    ]
    self._starts = [0, *itertools.accumulate(file.rows for file in files)]

  def __len__(self) -> int:
    return self._starts[-1]

  def text_bytes(self, key: str) -> int:
    return sum(file.column_bytes[key] for file in self.files)

  def identity(self) -> dict:
    """What the rows depend on: each file's path, size and row count."""
    return dict(files=[[file.path, file.size, file.rows] for file in self.files])

  def texts(self, key: str, start: int, stop: int, batch_size: int) -> Iterator[list]:
    """Column `key` of rows [start, stop), from the files that hold them."""
    index = bisect.bisect_right(self._starts, start) - 1
    for file, offset in zip(self.files[index:], self._starts[index:]):
      if offset >= stop:
        return
      yield from file.texts(key, max(start - offset, 0), stop - offset, batch_size)


def resolve(source: str) -> dict[str, list[str]] | None:
  """split -> files, as `datasets.load_dataset` finds them for `source`, when every one is a
  parquet file; None when `datasets` should load `source` (other files, a hub id, or a
  directory with a dataset card, which may configure its own splits).

  A .parquet file or glob is one 'train' split; a directory's splits come from its file and
  directory names (train-*, validation/, ...), else all of it is 'train'.
  """
  from datasets import data_files as data_files_lib  # pylint: disable=import-outside-toplevel

  if workdir_lib.is_local(source):
    source = os.path.abspath(os.path.expanduser(source))
  directory = workdir_lib.path(source)
  if source.endswith('.parquet'):
    patterns = {'train': [source]}
  elif directory.is_dir() and not (directory / 'README.md').exists():
    patterns = data_files_lib.get_data_patterns(source)
  else:
    return None
  files = data_files_lib.DataFilesDict.from_patterns(patterns, base_path=source)
  if not any(files.values()):
    raise UserError(
      f'data.corpus=hf:{source}: no parquet file matches it; check the path or '
      'glob (gs://BUCKET/DIR/*.parquet)'
    )
  if not all(path.endswith('.parquet') for split_files in files.values() for path in split_files):
    return None
  return {split: list(split_files) for split, split_files in files.items() if split_files}


def open_tables(files: dict[str, list[str]]) -> dict[str, ParquetTable]:
  """split -> its table, from every file's footer (read concurrently: in a bucket each is a
  couple of small requests)."""
  paths = sorted({path for split_files in files.values() for path in split_files})
  with concurrent.futures.ThreadPoolExecutor(min(16, len(paths))) as pool:
    footers = dict(zip(paths, pool.map(ParquetFile.read, paths)))
  return {
    split: ParquetTable(split, [footers[path] for path in split_files])
    for split, split_files in files.items()
  }
