"""Random access to windows of one split's tokens, wherever its shard files are.

A split is a sequence of shard files (flat little-endian token arrays); the
tokens of the split are their concatenation. Readers cut windows
[start, start + length) out of it, across shard boundaries:

  ArrayTokens    an array in memory (tests, small corpora)
  LocalTokens    shard files on this machine, memory-mapped: no copy, the page
                 cache does the rest (what every local run uses)
  RemoteTokens   shard files in object storage (gs://, s3://, ... through fsspec),
                 each window one byte-range request; a batch's windows are
                 requested together (concurrently by gcsfs), so a batch costs about
                 one round trip, not batch_size of them. Nothing is copied to disk.

`read(starts, length)` returns int32 (len(starts), length): the same numbers
from every reader of the same tokens.
"""

import abc
from collections.abc import Sequence

import numpy as np

from gpt_jax import workdir as workdir_lib


class ArrayTokens:
  """Windows of an in-memory token array."""

  def __init__(self, tokens: np.ndarray):
    self._tokens = tokens

  def __len__(self) -> int:
    return len(self._tokens)

  def read(self, starts: Sequence[int], length: int) -> np.ndarray:
    return np.stack([np.asarray(self._tokens[s : s + length], np.int32) for s in starts])

  def all(self) -> np.ndarray:
    return np.asarray(self._tokens)


class _ShardedTokens(abc.ABC):
  """Global token positions over shards of `sizes` tokens each."""

  def __init__(self, sizes: Sequence[int], dtype: np.dtype):
    self.dtype = np.dtype(dtype)
    self._ends = np.cumsum(np.asarray(sizes, np.int64))
    self._starts = self._ends - np.asarray(sizes, np.int64)

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def _pieces(self, start: int, stop: int):
    """(shard, first, last) token ranges, within shards, that make up [start, stop)."""
    shard = int(np.searchsorted(self._ends, start, side='right'))
    while start < stop:
      first = start - int(self._starts[shard])
      last = min(stop, int(self._ends[shard])) - int(self._starts[shard])
      if last > first:  # an empty shard (documents of blank text only) holds no piece
        yield shard, first, last
      start = int(self._ends[shard])
      shard += 1

  def read(self, starts: Sequence[int], length: int) -> np.ndarray:
    windows = self._read_windows([int(s) for s in starts], length)
    return np.stack(windows).astype(np.int32)

  @abc.abstractmethod
  def _read_windows(self, starts: list[int], length: int) -> list[np.ndarray]:
    """The windows [start, start + length) (cut at the end of the split), as token arrays."""

  def all(self) -> np.ndarray:
    """The whole split (for statistics and tests; large splits are better read in windows)."""
    return self._read_windows([0], len(self))[0]


class LocalTokens(_ShardedTokens):
  """Shard files on a local disk, memory-mapped."""

  def __init__(self, files: Sequence, sizes: Sequence[int], dtype: np.dtype):
    super().__init__(sizes, dtype)
    self._maps = [
      np.memmap(str(f), self.dtype, mode='r', shape=(n,)) if n else np.zeros(0, self.dtype)
      for f, n in zip(files, sizes)
    ]

  def _read_windows(self, starts, length):
    shards = np.searchsorted(self._ends, starts, side='right')
    return [
      self._maps[shard][start - self._starts[shard] : start - self._starts[shard] + length]
      if start + length <= self._ends[shard]
      else self._window(start, length)
      for start, shard in zip(starts, shards)
    ]

  def _window(self, start: int, length: int) -> np.ndarray:
    pieces = [
      self._maps[shard][first:last]
      for shard, first, last in self._pieces(start, min(start + length, len(self)))
    ]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class RemoteTokens(_ShardedTokens):
  """Shard files in object storage, read by byte ranges.

  `filesystem` is an fsspec filesystem (gcsfs for gs://); `files` are its paths.
  A batch's ranges go out in one `cat_ranges` call, which an asynchronous
  filesystem such as gcsfs sends concurrently: the batch costs one round trip.
  """

  def __init__(self, filesystem, files: Sequence[str], sizes: Sequence[int], dtype: np.dtype):
    super().__init__(sizes, dtype)
    self._fs, self._files = filesystem, list(files)

  def _read_windows(self, starts, length):
    pieces = [list(self._pieces(start, min(start + length, len(self)))) for start in starts]
    flat = [piece for window in pieces for piece in window]
    size = self.dtype.itemsize
    data = iter(
      self._fs.cat_ranges(
        [self._files[shard] for shard, _, _ in flat],
        [first * size for _, first, _ in flat],
        [last * size for _, _, last in flat],
      )
    )
    windows = []
    for window in pieces:
      arrays = [np.frombuffer(next(data), self.dtype) for _ in window]
      windows.append(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
    return windows


def open_tokens(
  files: Sequence, sizes: Sequence[int], dtype: np.dtype, filesystem=None
) -> _ShardedTokens:
  """The right reader for shard `files` (epath paths or URLs): memory maps for local files,
  range requests otherwise. `filesystem` overrides the fsspec filesystem (e.g. to add
  latency in a benchmark)."""
  if filesystem is None and all(workdir_lib.is_local(f) for f in files):
    return LocalTokens(files, sizes, dtype)
  import fsspec  # pylint: disable=import-outside-toplevel

  located = [fsspec.core.url_to_fs(str(f)) for f in files]
  filesystem = filesystem or (located[0][0] if located else fsspec.filesystem('file'))
  return RemoteTokens(filesystem, [path for _, path in located], sizes, dtype)
