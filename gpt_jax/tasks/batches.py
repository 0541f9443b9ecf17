"""Batches of encoded task examples for the fine-tuning loop, sharded over processes."""

from collections.abc import Iterator, Sequence

import grain
import numpy as np

from gpt_jax.errors import UserError
from gpt_jax.tasks.task import check_kind
from gpt_jax.tasks.transforms import Tokenizer, encode_example


def batches(examples: Sequence[dict], kind: str, tokenizer: Tokenizer, max_len: int,
            batch_size: int, *, shuffle_seed: int | None = None, num_epochs: int = 1,
            pad_last: bool = False, shard: tuple[int, int] = (0, 1), start: int = 0
            ) -> Iterator[dict[str, np.ndarray]]:
  """This process's batches of encoded examples (transforms.encode_example), as dicts of arrays.

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
    raise UserError(f'{len(examples)} examples make no batch of {global_batch}; '
                    'lower the batch size or add examples')
  rows = range(index, num_batches * global_batch, count)  # this process's rows
  for first in range(start * batch_size, len(rows), batch_size):
    encoded = []
    for row in rows[first:first + batch_size]:
      position = order[row % len(order)]
      example = encode_example(kind, examples[position], tokenizer, max_len)
      example['position'] = np.int32(position)
      if row >= len(order):  # padding of the last batch
        example.update(valid=np.int32(0), truncated=np.int32(0))
      encoded.append(example)
    yield {key: np.stack([example[key] for example in encoded]) for key in encoded[0]}
