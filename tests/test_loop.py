"""The training loop's calls of several updates (train.steps_per_call) and its skip guard."""

import jax
import numpy as np
import pytest
from helpers import make_trainer, tiny_config

from gpt_jax import loop, sharding
from gpt_jax.errors import UserError


def _call_sizes(first_step: int, total_steps: int) -> dict[int, int]:
  """{step a call starts at: its length} with steps_per_call=4 and the state needed every 10."""
  sizes, done = {}, first_step
  while done < total_steps:
    sizes[done] = loop._call_size(done, 4, total_steps, lambda step: step % 10 == 0)
    done += sizes[done]
  return sizes


def test_calls_start_at_multiples_and_never_straddle_a_step_that_needs_the_state():
  assert _call_sizes(0, 30) == {
    0: 4,
    4: 4,
    8: 1,
    9: 1,
    10: 1,
    11: 1,
    12: 4,
    16: 4,
    20: 4,
    24: 4,
    28: 1,
    29: 1,
  }
  # Resumed from any step, the run groups the later steps as the uninterrupted run did.
  resumed = _call_sizes(13, 30)
  assert resumed == {
    13: 1,
    14: 1,
    15: 1,
    **{s: n for s, n in _call_sizes(0, 30).items() if s >= 16},
  }


def test_batches_of_different_shapes_run_one_call_each():
  """Fine-tuning pads each batch to its own bucket: those cannot be stacked."""
  same = [{'tokens': np.zeros((2, 64))}, {'tokens': np.ones((2, 64))}]
  assert loop._stackable_groups(same) == [same]
  mixed = [{'tokens': np.zeros((2, 64))}, {'tokens': np.zeros((2, 128))}]
  assert loop._stackable_groups(mixed) == [[mixed[0]], [mixed[1]]]


@pytest.mark.parametrize('grad_accum_steps', [1, 2])
def test_steps_in_one_call_equal_one_call_per_step_bit_for_bit(grad_accum_steps):
  config = tiny_config()
  config.optim.grad_accum_steps = grad_accum_steps
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  _, trainer = make_trainer(config, mesh)
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 64, (8, 17)).astype(np.int32) for _ in range(3)]

  state, per_step = trainer.init(jax.random.key(0)), []
  for batch in batches:
    state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
    per_step.append(jax.device_get(metrics))
  called, stacked = trainer.train_steps(
    trainer.init(jax.random.key(0)), sharding.global_batch(np.stack(batches), mesh, steps_axis=True)
  )

  for name, values in jax.device_get(stacked).items():
    np.testing.assert_array_equal(values, [m[name] for m in per_step], err_msg=name)
  assert int(called.step) == 3
  for a, b in zip(
    jax.tree.leaves(called.params) + jax.tree.leaves(called.opt_state),
    jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)


class _Log:
  def __init__(self):
    self.messages = []

  def info(self, message):
    self.messages.append(message)


def test_guard_counts_skips_inside_a_call_and_stops_at_the_limit():
  log = _Log()
  guard = loop.NonFiniteGuard(limit=3, log=log, last_good_checkpoint=lambda: 8)
  guard.after_steps(4, np.array([False, True, False, True]))  # steps 1-4 in one call
  guard.after_steps(5, np.array(True))  # step 5 alone
  guard.flush()
  assert (guard.total, guard.in_a_row) == (3, 2)
  assert [m.split(':')[0] for m in log.messages] == ['step 2', 'step 4', 'step 5']
  guard.after_steps(7, np.array([False, True]))
  guard.after_steps(10, np.array([True, True, False]))  # the third in a row is step 9
  with pytest.raises(UserError, match=r'3 steps in a row, up to step 9.*\(step 8\)'):
    guard.flush()


def test_steps_per_call_auto_is_eight_on_a_cpu_and_one_elsewhere():
  assert [loop.updates_per_call(0, platform) for platform in ('cpu', 'tpu', 'gpu')] == [8, 1, 1]
  assert loop.updates_per_call(3, 'tpu') == 3


def test_a_negative_steps_per_call_is_a_clear_error():
  with pytest.raises(UserError, match=r'train.steps_per_call=-1: use 0 \(auto'):
    loop.updates_per_call(-1, 'cpu')
