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
import os
from collections.abc import Sequence

import numpy as np

from gpt_jax import workdir as workdir_lib
from gpt_jax.data import checksums as checksums_lib


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
  """Global token positions over shards `files` of `sizes` tokens each.

  With `checksums` (each shard's block checksums, gpt_jax.data.checksums) every block
  is verified the first time a window touches it. Every window's ids are checked
  against `vocab_size`. A file of the wrong size fails when the reader opens.
  """

  def __init__(
    self,
    files: Sequence,
    sizes: Sequence[int],
    dtype: np.dtype,
    checksums: Sequence[np.ndarray] | None,
    vocab_size: int | None,
    block_bytes: int = checksums_lib.BLOCK_BYTES,
  ):
    self.dtype = np.dtype(dtype)
    self._files, self._vocab_size = list(files), vocab_size
    self._ends = np.cumsum(np.asarray(sizes, np.int64))
    self._starts = self._ends - np.asarray(sizes, np.int64)
    self._blocks = (
      None
      if checksums is None
      else checksums_lib.VerifiedBlocks(
        files, checksums, self.dtype, vocab_size or 2**32, block_bytes
      )
    )

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def _check_sizes(self, file_bytes: Sequence[int]) -> None:
    for file, actual, tokens in zip(self._files, file_bytes, self._ends - self._starts):
      if actual != tokens * self.dtype.itemsize:
        raise checksums_lib.size_damage(file, actual, int(tokens) * self.dtype.itemsize)

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
    starts = [int(s) for s in starts]
    windows = np.stack(self._read_windows(starts, length)).astype(np.int32)
    if self._vocab_size is not None and windows.size and windows.max() >= self._vocab_size:
      row, column = np.argwhere(windows >= self._vocab_size)[0]
      self._raise_out_of_vocabulary(starts[row] + int(column), int(windows[row, column]))
    return windows

  def _raise_out_of_vocabulary(self, position: int, token: int) -> None:
    shard = int(np.searchsorted(self._ends, position, side='right'))
    byte = (position - int(self._starts[shard])) * self.dtype.itemsize
    what = f'holds token id {token:,}, outside the vocabulary ({self._vocab_size:,} ids)'
    block_bytes = self._blocks.block_bytes if self._blocks else checksums_lib.BLOCK_BYTES
    raise checksums_lib.block_damage(self._files[shard], byte // block_bytes, block_bytes, what)

  def _byte_range(self, first, last):  # token offsets (ints or arrays) -> byte offsets
    return first * self.dtype.itemsize, last * self.dtype.itemsize

  @abc.abstractmethod
  def _read_windows(self, starts: list[int], length: int) -> list[np.ndarray]:
    """The windows [start, start + length) (cut at the end of the split), as token arrays."""

  def all(self) -> np.ndarray:
    """The whole split (for statistics and tests; large splits are better read in windows)."""
    return self._read_windows([0], len(self))[0]


class LocalTokens(_ShardedTokens):
  """Shard files on a local disk, memory-mapped."""

  def __init__(self, files: Sequence, sizes: Sequence[int], dtype: np.dtype, **checks):
    super().__init__(files, sizes, dtype, **checks)
    self._check_sizes([os.path.getsize(f) if os.path.exists(f) else 0 for f in self._files])
    self._maps = [
      np.memmap(str(f), self.dtype, mode='r', shape=(n,)) if n else np.zeros(0, self.dtype)
      for f, n in zip(files, sizes)
    ]

  def _read_windows(self, starts, length):
    starts = np.asarray(starts, np.int64)
    shards = np.searchsorted(self._ends, starts, side='right')
    firsts = starts - self._starts[shards]
    inside = starts + length <= self._ends[shards]
    self._verify(shards[inside], firsts[inside], firsts[inside] + length)
    return [
      self._maps[shard][first : first + length] if whole else self._window(start, length)
      for start, shard, first, whole in zip(starts, shards, firsts, inside)
    ]

  def _verify(self, shards: np.ndarray, firsts: np.ndarray, lasts: np.ndarray) -> None:
    """Verifies the blocks of token ranges [first, last) of `shards` not verified yet."""
    if self._blocks is None or not len(shards):
      return
    first_bytes, stop_bytes = self._byte_range(firsts, lasts)
    within_a_block = int((stop_bytes - first_bytes).max()) <= self._blocks.block_bytes
    if within_a_block and self._blocks.all_verified(shards, first_bytes, stop_bytes):
      return
    for shard, first, stop in zip(shards.tolist(), first_bytes.tolist(), stop_bytes.tolist()):
      for block in self._blocks.unverified(shard, first, stop):
        span = slice(block * self._blocks.block_bytes, (block + 1) * self._blocks.block_bytes)
        self._blocks.verify(shard, block, self._maps[shard].view(np.uint8)[span].tobytes())

  def _window(self, start: int, length: int) -> np.ndarray:
    pieces = list(self._pieces(start, min(start + length, len(self))))
    for shard, first, last in pieces:
      self._verify(np.array([shard]), np.array([first]), np.array([last]))
    arrays = [self._maps[shard][first:last] for shard, first, last in pieces]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class RemoteTokens(_ShardedTokens):
  """Shard files in object storage, read by byte ranges.

  `filesystem` is an fsspec filesystem (gcsfs for gs://); `files` are its paths.
  A batch's ranges go out in one `cat_ranges` call, which an asynchronous
  filesystem such as gcsfs sends concurrently: the batch costs one round trip.
  A range that touches a block not verified yet is widened to its whole blocks,
  verified, then cut out, in the same call.
  """

  def __init__(
    self,
    filesystem,
    files: Sequence[str],
    sizes: Sequence[int],
    dtype: np.dtype,
    paths: Sequence[str] | None = None,
    **checks,
  ):
    super().__init__(files, sizes, dtype, **checks)
    self._fs, self._paths = filesystem, list(paths or files)  # paths: the filesystem's names
    self._check_sizes(self._fs.sizes(self._paths) if self._paths else [])

  def _request(self, shard: int, first: int, last: int) -> tuple[int, int, bool]:
    """The byte range to fetch for tokens [first, last) of `shard`, and whether it is to be
    verified (then it spans whole blocks)."""
    start, stop = self._byte_range(first, last)
    if self._blocks is None or not self._blocks.unverified(shard, start, stop):
      return start, stop, False
    block_bytes, shard_bytes = self._blocks.block_bytes, self._byte_range(0, self._size(shard))[1]
    return (
      start // block_bytes * block_bytes,
      min(-(-stop // block_bytes) * block_bytes, shard_bytes),
      True,
    )

  def _size(self, shard: int) -> int:
    return int(self._ends[shard] - self._starts[shard])

  def _checked(self, shard: int, first: int, last: int, request, data: bytes) -> bytes:
    """The bytes of tokens [first, last) out of `data`, the fetched `request`."""
    fetched_from, fetched_to, to_verify = request
    if to_verify:
      assert self._blocks is not None  # _request asks for verification only with checksums
      block_bytes = self._blocks.block_bytes
      for block in self._blocks.unverified(shard, fetched_from, fetched_to):
        offset = block * block_bytes - fetched_from
        self._blocks.verify(shard, block, data[offset : offset + block_bytes])
    start, stop = self._byte_range(first, last)
    return data[start - fetched_from : stop - fetched_from]

  def _read_windows(self, starts, length):
    pieces = [list(self._pieces(start, min(start + length, len(self)))) for start in starts]
    flat = [piece for window in pieces for piece in window]
    requests = [(shard, *self._request(shard, first, last)) for shard, first, last in flat]
    unique = list(dict.fromkeys(requests))  # windows in one block fetch it once to verify it
    fetched = dict(
      zip(
        unique,
        self._fs.cat_ranges(
          [self._paths[shard] for shard, _, _, _ in unique],
          [start for _, start, _, _ in unique],
          [stop for _, _, stop, _ in unique],
        ),
      )
    )
    data = iter(
      self._checked(shard, first, last, request[1:], fetched[request])
      for (shard, first, last), request in zip(flat, requests)
    )
    windows = []
    for window in pieces:
      arrays = [np.frombuffer(next(data), self.dtype) for _ in window]
      windows.append(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))
    return windows


def open_tokens(
  files: Sequence,
  sizes: Sequence[int],
  dtype: np.dtype,
  filesystem=None,
  checksums: Sequence[np.ndarray] | None = None,
  vocab_size: int | None = None,
  block_bytes: int = checksums_lib.BLOCK_BYTES,
) -> _ShardedTokens:
  """The right reader for shard `files` (epath paths or URLs): memory maps for local files,
  range requests otherwise. `filesystem` overrides the fsspec filesystem (e.g. to add
  latency in a benchmark); `checksums` and `vocab_size` are what reads are checked against."""
  checks = dict(checksums=checksums, vocab_size=vocab_size, block_bytes=block_bytes)
  if filesystem is None and all(workdir_lib.is_local(f) for f in files):
    return LocalTokens([os.fspath(f) for f in files], sizes, dtype, **checks)
  import fsspec  # pylint: disable=import-outside-toplevel

  located = [fsspec.core.url_to_fs(str(f)) for f in files]
  filesystem = filesystem or (located[0][0] if located else fsspec.filesystem('file'))
  return RemoteTokens(
    filesystem, [str(f) for f in files], sizes, dtype, [path for _, path in located], **checks
  )
