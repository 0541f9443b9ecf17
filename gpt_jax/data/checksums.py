"""Block checksums of token-store shards: computed while a shard is written, verified on reads.

Every shard file is cut into blocks of `BLOCK_BYTES` (the last one shorter) and
each block's crc32c is recorded in the shard's record and the store's index, as
one hex string of 8 digits per block. Readers verify a block the first time any
window touches it and remember that it passed, so a block is hashed once per
reader however often it is read; crc32c runs at several GB/s, far ahead of what
training consumes.

A mismatch is a `DamagedShard` (a UserError): one line naming the store, the
shard, the block and the fix (`gpt-jax prepare` rebuilds exactly the damaged shards).
"""

import os
from collections.abc import Sequence

import google_crc32c
import numpy as np

from gpt_jax.errors import UserError

BLOCK_BYTES = 2**20
REPAIR = 'run `gpt-jax prepare` with the same config flags to rebuild the damaged shards'


class DamagedShard(UserError):
  """A shard whose bytes are not the ones its record describes: `what` is wrong with `name`."""

  def __init__(self, directory: str, name: str, what: str):
    super().__init__(f'token store {directory}: shard {name} {what}; {REPAIR}')
    self.name, self.what = name, what


def damage(file, what: str) -> DamagedShard:
  """The one-line error for shard `file` (a path or URL in its store's directory)."""
  return DamagedShard(*os.path.split(os.fspath(file)), what)


def block_damage(file, block: int, block_bytes: int, what: str) -> DamagedShard:
  first = block * block_bytes
  return damage(file, f'block {block} (bytes {first:,}-{first + block_bytes - 1:,}) {what}')


def size_damage(file, actual: int, expected: int) -> DamagedShard:
  return damage(
    file, f'holds {actual:,} bytes but its record says {expected:,} (truncated or overwritten)'
  )


def encode(checksums: Sequence[int]) -> str:
  return ''.join(f'{checksum:08x}' for checksum in checksums)


def decode(text: str) -> np.ndarray:
  return np.frombuffer(bytes.fromhex(text), '>u4').astype(np.uint32)


class BlockHasher:
  """The crc32c of every `block_bytes` block of a byte stream, fed in pieces of any size."""

  def __init__(self, block_bytes: int = BLOCK_BYTES):
    self.block_bytes, self.size = block_bytes, 0
    self._checksums: list[int] = []
    self._crc, self._filled = 0, 0

  def update(self, data: bytes) -> None:
    offset, self.size = 0, self.size + len(data)
    while offset < len(data):
      take = min(len(data) - offset, self.block_bytes - self._filled)
      self._crc = google_crc32c.extend(self._crc, data[offset : offset + take])
      self._filled, offset = self._filled + take, offset + take
      if self._filled == self.block_bytes:
        self._checksums.append(self._crc)
        self._crc, self._filled = 0, 0

  def hexdigest(self) -> str:
    """The checksums of every block so far, the last (partial) one included."""
    return encode(self._checksums + ([self._crc] if self._filled else []))


def out_of_vocabulary(tokens: np.ndarray, vocab_size: int) -> str:
  """'' if every id is below `vocab_size`, else what the first one out of range is."""
  if not tokens.size or int(tokens.max()) < vocab_size:
    return ''
  return f'holds token id {int(tokens.max()):,}, outside the vocabulary ({vocab_size:,} ids)'


class VerifiedBlocks:
  """Which blocks of a split's shards were verified, and the checks of those that were not.

  `checksums[k]` is shard k's decode()d checksums. Several reader threads may
  verify the same block at once; each reaches the same verdict.
  """

  def __init__(
    self,
    files: Sequence,
    checksums: Sequence[np.ndarray],
    dtype: np.dtype,
    vocab_size: int,
    block_bytes: int = BLOCK_BYTES,
  ):
    self._files, self._checksums = list(files), list(checksums)
    self._dtype, self._vocab_size, self.block_bytes = np.dtype(dtype), vocab_size, block_bytes
    counts = np.array([len(c) for c in checksums], np.int64)
    self._first_block = np.cumsum(counts) - counts  # of each shard, in `_verified`
    self._verified = np.zeros(int(counts.sum()), bool)

  def blocks(self, first_byte: int, stop_byte: int) -> range:
    """The blocks of bytes [first_byte, stop_byte) of one shard."""
    return range(first_byte // self.block_bytes, -(-stop_byte // self.block_bytes))

  def all_verified(self, shards: np.ndarray, first_bytes: np.ndarray, stop_bytes: np.ndarray):
    """Whether the first and last block of each range [first, stop) of `shards` are verified:
    all of its blocks, for ranges no longer than one block."""
    base = self._first_block[shards]
    return bool(
      self._verified[base + first_bytes // self.block_bytes].all()
      and self._verified[base + (stop_bytes - 1) // self.block_bytes].all()
    )

  def unverified(self, shard: int, first_byte: int, stop_byte: int) -> list[int]:
    base = int(self._first_block[shard])
    return [b for b in self.blocks(first_byte, stop_byte) if not self._verified[base + b]]

  def verify(self, shard: int, block: int, data: bytes) -> None:
    """Checks the bytes `data` of `block` of `shard`; raises DamagedShard if they differ."""
    if google_crc32c.value(data) != self._checksums[shard][block]:
      tokens = np.frombuffer(data, self._dtype)
      oov = out_of_vocabulary(tokens, self._vocab_size)
      what = 'does not match its crc32c checksum (changed on disk after it was written'
      raise block_damage(
        self._files[shard], block, self.block_bytes, what + (f'; it {oov})' if oov else ')')
      )
    self._verified[int(self._first_block[shard]) + block] = True


def check_file(
  path, size: int, checksums: str, dtype: np.dtype, vocab_size: int, block_bytes: int = BLOCK_BYTES
) -> DamagedShard | None:
  """What is wrong with shard file `path` (an epath.Path) against its record's `size` in bytes
  and `checksums`, or None: the whole file is read once."""
  if not path.exists():
    return damage(path, 'is missing')
  if (actual := path.stat().length) != size:
    return size_damage(path, actual, size)
  blocks = VerifiedBlocks([path], [decode(checksums)], dtype, vocab_size, block_bytes)
  with path.open('rb') as file:
    for block in range(len(decode(checksums))):
      try:
        blocks.verify(0, block, file.read(block_bytes))
      except DamagedShard as error:
        return error
  return None
