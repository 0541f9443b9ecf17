"""Grain pipelines of windows: contiguity, determinism, process sharding, checkpointable state."""

import json

import numpy as np
import pytest

from gpt_jax.data import pipeline
from gpt_jax.errors import UserError

SEQ_LEN = 8
# Token i has value i, so every window names its own start: row[0].
TOKENS = np.arange(1000, dtype=np.uint16)


def batches(iterator, count):
  return [next(iterator) for _ in range(count)]


def train(seed=0, batch_size=4, process_index=0, process_count=1, tokens=TOKENS):
  return pipeline.train_batches(
    tokens,
    seq_len=SEQ_LEN,
    batch_size=batch_size,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    num_threads=2,
  )


def test_batches_are_contiguous_windows():
  for batch in batches(train(), 10):
    assert batch.shape == (4, SEQ_LEN + 1) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, batch[:, :1] + np.arange(SEQ_LEN + 1))
    assert batch.max() < len(TOKENS)


def test_an_epoch_covers_disjoint_windows_at_one_offset():
  windows = pipeline.EpochWindows(len(TOKENS), SEQ_LEN, seed=0)
  assert windows.num_windows == (len(TOKENS) - 1) // SEQ_LEN - 1
  starts = np.concatenate([b[:, 0] for b in batches(train(batch_size=1), windows.num_windows)])
  offsets = set(starts % SEQ_LEN)
  assert len(offsets) == 1  # one offset for the whole epoch ...
  offset = offsets.pop()
  assert sorted(starts) == [offset + k * SEQ_LEN for k in range(windows.num_windows)]
  assert list(starts) != sorted(starts)  # ... visited in shuffled order


def test_epochs_move_window_boundaries_and_order():
  windows = pipeline.EpochWindows(len(TOKENS), SEQ_LEN, seed=0)
  offsets = {windows.offset(epoch) for epoch in range(20)}
  assert len(offsets) > 3 and max(offsets) <= SEQ_LEN - 1
  n = windows.num_windows
  starts = np.concatenate([b[:, 0] for b in batches(train(batch_size=1), 2 * n)])
  first, second = starts[:n] // SEQ_LEN, (starts[n:] - windows.offset(1)) // SEQ_LEN
  assert sorted(first) == sorted(second) and list(first) != list(second)


def test_same_seed_same_batches_other_seed_other_batches():
  a, b, c = (batches(train(seed=seed), 30) for seed in (3, 3, 4))
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


def test_processes_read_disjoint_windows_that_cover_the_epoch():
  windows = pipeline.EpochWindows(len(TOKENS), SEQ_LEN, seed=0)
  process_count = 3
  per_process = windows.num_windows // process_count
  starts = [
    np.concatenate(
      [
        b[:, 0]
        for b in batches(
          train(batch_size=1, process_index=p, process_count=process_count), per_process
        )
      ]
    )
    for p in range(process_count)
  ]
  for p in range(process_count):
    for q in range(p):
      assert not set(starts[p]) & set(starts[q])
  together = sorted(np.concatenate(starts))
  offset = windows.offset(0)
  assert together == [offset + k * SEQ_LEN for k in range(per_process * process_count)]


def test_restored_iterator_continues_with_the_next_batch():
  iterator = train()
  batches(iterator, 7)
  state = json.loads(json.dumps(iterator.get_state()))  # survives a checkpoint as JSON
  expected = batches(iterator, 5)
  restored = train()
  restored.set_state(state)
  np.testing.assert_array_equal(np.stack(batches(restored, 5)), np.stack(expected))


def test_eval_batches_in_order_and_reiterable():
  dataset = pipeline.eval_batches(TOKENS, seq_len=SEQ_LEN, batch_size=4, num_batches=3)
  first, again = list(dataset), list(dataset)
  assert len(first) == 3
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  starts = np.concatenate([b[:, 0] for b in first])
  np.testing.assert_array_equal(starts, np.arange(12) * SEQ_LEN)
  everything = pipeline.eval_batches(TOKENS, seq_len=SEQ_LEN, batch_size=4, num_batches=-1)
  assert len(list(everything)) == (len(TOKENS) - 1) // SEQ_LEN // 4
  shards = [
    np.concatenate(
      [
        b[:, 0]
        for b in pipeline.eval_batches(
          TOKENS, seq_len=SEQ_LEN, batch_size=4, num_batches=2, process_index=p, process_count=2
        )
      ]
    )
    for p in range(2)
  ]
  assert not set(shards[0]) & set(shards[1])


def test_corpus_smaller_than_a_window_or_a_batch():
  with pytest.raises(UserError, match=r'train split has 8 tokens: too few .*seq_len \+ 1 = 9'):
    train(tokens=TOKENS[:SEQ_LEN])
  with pytest.raises(UserError, match='validation split has 40 tokens.*validation_fraction'):
    pipeline.eval_batches(TOKENS[:40], seq_len=SEQ_LEN, batch_size=8, num_batches=1)
  exactly_one = next(train(tokens=TOKENS[: SEQ_LEN + 1], batch_size=2))  # repeats its one window
  np.testing.assert_array_equal(exactly_one, np.stack([TOKENS[: SEQ_LEN + 1]] * 2))
