"""Batches of encoded task examples for the fine-tuning loop, sharded over processes.

Each batch is padded only as far as its longest sequence, rounded up to a
multiple of `bucket` tokens (and never beyond max_len), so a compiled step
exists for at most max_len / bucket lengths and a batch of short sentences does
not pay for max_len. OpenAI's original code trimmed each task to its longest
example; buckets go further, batch by batch.
"""

from collections.abc import Iterator, Sequence

import grain
import numpy as np

from gpt_jax.errors import UserError
from gpt_jax.tasks.task import check_kind
from gpt_jax.tasks.transforms import Tokenizer, encode_example


def bucket_length(longest: int, bucket: int, max_len: int) -> int:
  """The padded length of a batch whose longest sequence has `longest` tokens.

  bucket <= 0 pads every batch to max_len.
  """
  if bucket <= 0:
    return max_len
  return min(-(-longest // bucket) * bucket, max_len)


def pad_to_length(
  example: dict[str, np.ndarray], length: int, pad_id: int
) -> dict[str, np.ndarray]:
  """`example` (from encode_example) with its sequences padded on the right to `length`."""
  extra = length - example['tokens'].shape[-1]
  widths = [(0, 0)] * (example['tokens'].ndim - 1) + [(0, extra)]
  return {
    **example,
    'tokens': np.pad(example['tokens'], widths, constant_values=pad_id),
    'lm_mask': np.pad(example['lm_mask'], widths),
  }


def batches(
  examples: Sequence[dict],
  kind: str,
  tokenizer: Tokenizer,
  max_len: int,
  batch_size: int,
  *,
  bucket: int = 64,
  shuffle_seed: int | None = None,
  num_epochs: int = 1,
  pad_last: bool = False,
  shard: tuple[int, int] = (0, 1),
  start: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's batches of encoded examples (transforms.encode_example), as dicts of arrays.

  Sequences are cut to max_len and padded to `bucket_length(longest, bucket,
  max_len)`, the longest over the *global* batch, so that every process's rows
  share one shape (each process therefore encodes every row of a global batch
  and keeps its own).
  Training: pass `shuffle_seed` (a fresh order every epoch); the rows that do
  not fill a last global batch are dropped. Evaluation: `pad_last=True` keeps
  every example and fills the last batch with copies whose `valid` is 0.
  Multi-host: `shard=(jax.process_index(), jax.process_count())` and the
  per-process `batch_size`; every process then yields the same number of
  batches. `start` skips that many batches (a resumed run), encoding none of them.

  Each row also carries `position`, the example's index in `examples` (the
  same in every epoch): it puts predictions back in the split's order and
  counts each truncated example once.
  """
  kind = check_kind(kind)
  index, count = shard
  order = grain.MapDataset.range(len(examples))  # positions in `examples`, epoch after epoch
  if shuffle_seed is not None:
    order = order.shuffle(seed=shuffle_seed)
  order = order.repeat(num_epochs)
  global_batch = batch_size * count
  num_batches = -(-len(order) // global_batch) if pad_last else len(order) // global_batch
  if not num_batches:
    raise UserError(
      f'{len(examples)} examples make no batch of {global_batch}; '
      'lower the batch size or add examples'
    )
  for first in range(start * global_batch, num_batches * global_batch, global_batch):
    encoded = []
    for row in range(first, first + global_batch):
      position = order[row % len(order)]
      example = encode_example(kind, examples[position], tokenizer, max_len, length=0)
      example['position'] = np.asarray(position, np.int32)
      if row >= len(order):  # padding of the last batch
        example.update(valid=np.asarray(0, np.int32), truncated=np.asarray(0, np.int32))
      encoded.append(example)
    length = bucket_length(max(e['tokens'].shape[-1] for e in encoded), bucket, max_len)
    mine = [pad_to_length(e, length, tokenizer.pad_id) for e in encoded[index::count]]
    yield {key: np.stack([example[key] for example in mine]) for key in mine[0]}
