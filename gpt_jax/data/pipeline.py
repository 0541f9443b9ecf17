"""Grain pipelines that cut a token array into batches of contiguous windows.

Training follows the paper ("random contiguous sequences"): each epoch cuts
the split into non-overlapping windows of seq_len + 1 tokens, starting at a
random offset so window boundaries move between epochs, and visits them in a
seeded random order. Windows are dealt round-robin to the JAX processes, so
processes read disjoint data; each batches its windows into its share of the
global batch. Everything is a pure function of (seed, step), so the iterator's
state is one integer and restoring it continues with exactly the next batch.

Evaluation reads the validation split's windows in order from offset 0.

Tokens come from a reader (`gpt_jax.data.tokens`: memory-mapped shards, a bucket
read by byte ranges, or an array) that returns a whole batch of windows at once,
so a remote store issues a batch's requests together; grain's reader threads keep
several batches in flight ahead of the training step.
"""

import grain
import numpy as np

from gpt_jax.data.tokens import ArrayTokens
from gpt_jax.errors import UserError, warn


class EpochWindows:
  """Window k of epoch e starts at offset(e) + k * seq_len; all windows of an epoch are disjoint."""

  def __init__(self, num_tokens: int, seq_len: int, seed: int):
    self.seq_len, self.seed = seq_len, seed
    whole = max(num_tokens - 1, 0) // seq_len  # windows that fit at offset 0
    # Keep one window's worth of slack (when there is more than one window) so
    # every epoch can start anywhere in [0, seq_len) and still hold num_windows.
    self.num_windows = whole - 1 if whole >= 2 else whole
    self.max_offset = min(seq_len - 1, num_tokens - 1 - self.num_windows * seq_len)

  def offset(self, epoch: int) -> int:
    if self.max_offset <= 0:
      return 0
    state = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
    return int(state % (self.max_offset + 1))

  def start(self, epoch: int, window: int) -> int:
    return self.offset(epoch) + window * self.seq_len


def _reader(tokens):
  """A reader for `tokens`: a reader already, or an array."""
  return tokens if hasattr(tokens, 'read') else ArrayTokens(tokens)


def _check_fits(
  split: str, num_tokens: int, seq_len: int, windows: int, needed: int, what: str
) -> None:
  if windows < needed:
    raise UserError(
      f'the {split} split has {num_tokens:,} tokens: too few for {what} of '
      f'train.seq_len + 1 = {seq_len + 1} tokens; use a larger corpus or a smaller '
      'train.seq_len / train.batch_size'
      + (' (or raise data.validation_fraction)' if split == 'validation' else '')
    )


def train_batches(
  tokens,
  *,
  seq_len: int,
  batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int = 2,
) -> grain.DatasetIterator:
  """An endless iterator of int32 arrays (batch_size, seq_len + 1) for one process.

  `tokens`: a reader (gpt_jax.data.tokens) or an array. `batch_size` is this
  process's share of the global batch. The iterator has `get_state()` /
  `set_state(state)` for checkpointing.
  """
  tokens = _reader(tokens)
  windows = EpochWindows(len(tokens), seq_len, seed)
  usable = windows.num_windows - windows.num_windows % process_count  # same count per process
  _check_fits(
    'train',
    len(tokens),
    seq_len,
    usable,
    process_count,
    f'one window per process ({process_count})',
  )
  per_process = usable // process_count
  if per_process < batch_size:
    warn(
      f'the train split holds {per_process:,} windows per process, fewer than one batch '
      f'({batch_size}); every batch repeats windows'
    )

  def start(index, window):
    return windows.start(index // per_process, window)

  dataset = (
    grain.MapDataset.range(usable)[process_index::process_count]
    .shuffle(seed=seed)  # a new order every epoch (the seed is folded with it)
    .repeat()
    .map_with_index(start)
    .batch(batch_size, drop_remainder=True)
    .map(lambda starts: tokens.read(starts, seq_len + 1))
  )
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * max(num_threads, 1))
  return iter(dataset.to_iter_dataset(options))


def eval_batches(
  tokens,
  *,
  seq_len: int,
  batch_size: int,
  num_batches: int,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """The first `num_batches` (all if <= 0) batches of the split's windows, in order.

  Returns a re-iterable dataset of int32 arrays (batch_size, seq_len + 1); each
  pass reads from the start.
  """
  tokens = _reader(tokens)
  num_windows = max(len(tokens) - 1, 0) // seq_len
  usable = num_windows - num_windows % process_count
  available = usable // process_count // batch_size
  _check_fits(
    'validation',
    len(tokens),
    seq_len,
    available,
    1,
    f'one batch per process ({process_count} x {batch_size}) of windows',
  )
  dataset = (
    grain.MapDataset.range(usable)[process_index::process_count]
    .batch(batch_size, drop_remainder=True)
    .map(lambda windows: tokens.read(windows * seq_len, seq_len + 1))
  )
  if 0 < num_batches < available:
    dataset = dataset[:num_batches]
  return dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
