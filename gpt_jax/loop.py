"""The training loop that pretraining and fine-tuning share.

Both run the same steps: dispatch an update, log the previous one's metrics,
evaluate and checkpoint on their schedule, stop cleanly on SIGTERM (a TPU VM's
preemption notice) at a step boundary, count updates skipped for a non-finite
loss or gradient, and tell a watchdog (gpt_jax.watchdog) what they are doing, which
ends a run that stops making progress. They differ only in what they evaluate and what a
checkpoint records, which they pass in.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import checkpoint, flops, sharding, watchdog
from gpt_jax.errors import UserError
from gpt_jax.model import ModelConfig
from gpt_jax.report import RunLog, StepLogger, StepProfiler
from gpt_jax.spike import SpikeWatch
from gpt_jax.train import TrainConfig, Trainer, TrainState


def step_logger(
  log: RunLog,
  model_config: ModelConfig,
  mesh,
  *,
  every: int,
  total_steps: int,
  tokens_of: Callable[[Any], tuple[int, int]],  # of a host batch: an array, or a dict of them
) -> StepLogger:
  """A StepLogger whose MFU counts the model's FLOPs against every device's peak.

  `tokens_of(batch)`: (tokens the whole step computes on, their sequence length), from this
  process's host batch.
  """
  peak, source = flops.peak_flops_per_device(jnp.dtype(model_config.dtype))
  log.info(f'MFU against a peak of {peak / 1e12:.2f} TFLOP/s per device ({source})')

  def work(batch) -> tuple[int, float]:
    tokens, seq_len = tokens_of(batch)
    return tokens, flops.train_flops_per_token(model_config, seq_len) * tokens

  return StepLogger(log, every, total_steps, work, peak * mesh.size)


class NonFiniteGuard:
  """Counts updates skipped for a non-finite loss or gradient; stops a run that diverged.

  The skip flags of a call are read one call late, so the host never waits for
  the device on its account.
  """

  def __init__(self, limit: int, log: RunLog, last_good_checkpoint: Callable[[], int | None]):
    self._limit, self._log, self._last_good = limit, log, last_good_checkpoint
    self._pending: tuple[int, jax.Array] | None = None  # (step, device flags) not yet read
    self.in_a_row = self.total = 0

  def after_steps(self, done: int, skipped: jax.Array) -> None:
    """Call after dispatching the steps up to `done`; `skipped` holds their flags (one per
    step, in order, or a scalar for one step)."""
    self.flush()
    self._pending = (done, skipped)

  def flush(self) -> None:
    if self._pending is None:
      return
    done, skipped = self._pending
    self._pending = None
    flags = np.asarray(skipped).reshape(-1)
    for step, skipped_step in enumerate(flags, done - len(flags) + 1):
      self._count(step, bool(skipped_step))

  def _count(self, step: int, skipped: bool) -> None:
    if not skipped:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.total += 1
    self._log.info(
      f'step {step}: non-finite loss or gradients, update skipped '
      f'({self.in_a_row} in a row, {self.total} in all)'
    )
    if self.in_a_row >= self._limit:
      raise UserError(
        f'training diverged: {self._limit} steps in a row, up to step {step}, had a '
        f'non-finite loss or gradients (train.max_nonfinite_in_a_row={self._limit}); no '
        f'update was applied, so the last checkpoint (step {self._last_good()}) is good: '
        'lower optim.learning_rate or check the data, then rerun to resume from it'
      )


@dataclasses.dataclass
class Schedule:
  """When the loop evaluates and saves, and what that means for this run."""

  is_eval_step: Callable[[int], bool]
  evaluate: Callable[[dict, int], dict]  # (params, step) -> metrics, logged by the callee
  save: Callable[[int, TrainState, dict | None], None]  # (step, state, eval metrics or None)
  save_every: int = 0  # also save every this many steps (0: only after evaluations)


@dataclasses.dataclass
class Outcome:
  """Where a run stopped: at its last step, or at a step boundary after SIGTERM."""

  state: TrainState
  last_train: dict  # the last logged train metrics
  last_eval: dict  # the last evaluation's metrics ({} when none ran)
  preempted: bool
  skipped_steps: int  # updates skipped for a non-finite loss or gradient


CPU_STEPS_PER_CALL = 8


def updates_per_call(steps_per_call: int, platform: str) -> int:
  """train.steps_per_call as the loop runs it: 0 (auto) is CPU_STEPS_PER_CALL on a CPU, where
  XLA pages in a call's temporaries afresh once per call, and 1 on TPU / GPU."""
  if steps_per_call < 0:
    raise UserError(
      f'train.steps_per_call={steps_per_call}: use 0 (auto: 8 on a CPU, 1 on TPU / GPU), '
      '1 (one compiled call per update) or more'
    )
  if steps_per_call == 0:
    return CPU_STEPS_PER_CALL if platform == 'cpu' else 1
  return steps_per_call


def run(
  trainer: Trainer,
  state: TrainState,
  batches: Iterator,
  *,
  first_step: int,
  total_steps: int,
  schedule: Schedule,
  steps: StepLogger,
  guard: NonFiniteGuard,
  log: RunLog,
  train_config: TrainConfig,
  profiler: StepProfiler | None = None,
  spikes: SpikeWatch | None = None,
) -> Outcome:
  """Trains from `first_step` to `total_steps` on `batches` (host arrays of this process).

  Runs train.steps_per_call updates per compiled call where it can (see `_call_size`);
  evaluations, saves and the preemption check happen between calls. The watchdog ends a run
  without progress for train.hang_timeout_s, or still stuck train.preemption_grace_s after a
  SIGTERM. `spikes` (gpt_jax.spike) sees every step's loss and raises spike.Spike out of the
  loop at a loss spike; the caller flushes it after the loop for the last call's.
  """
  steps_per_call = updates_per_call(
    train_config.steps_per_call, trainer.mesh.devices.flat[0].platform
  )

  def periodic_save(done: int) -> bool:
    return bool(schedule.save_every) and done % schedule.save_every == 0

  def state_needed_after(done: int) -> bool:  # a call must end at such a step
    return (
      schedule.is_eval_step(done)
      or periodic_save(done)
      or bool(profiler and profiler.is_boundary(done))
    )

  last_eval, preempted = {}, False
  done = calls = first_step  # calls: a counter that grows by one per call
  log.start_progress(first_step, total_steps)
  with (
    checkpoint.PreemptionWatch() as preemption,
    watchdog.Watchdog(train_config.hang_timeout_s, train_config.preemption_grace_s) as dog,
  ):
    while done < total_steps:
      if profiler:
        profiler.step(done, log)
      size = _call_size(done, steps_per_call, total_steps, state_needed_after)
      host_batches = _next_batches(batches, size, dog, done)
      for group in _stackable_groups(host_batches):
        dog.pet(f'train step {done + len(group)}')
        state, metrics = _dispatch(trainer, state, group)
        done += len(group)
        _check_losses(guard, spikes, done, metrics)
        steps.after_steps(done, metrics, group)
      evaluated = schedule.is_eval_step(done)
      if evaluated:
        dog.pet(f'evaluation at step {done}')
        steps.flush()
        last_eval = schedule.evaluate(state.params, done)
        steps.restart_clock(done)  # evaluation is not training time
      # Every process asks after every call, counting calls: the multi-host preemption
      # service agrees on a stopping point by counting up one at a time.
      calls += 1
      preempted = preemption.should_stop(calls)
      if evaluated or preempted or periodic_save(done):
        dog.pet(f'saving checkpoint {done}')
        steps.flush()  # a resumed run starts logging after the checkpoint's step
        schedule.save(done, state, last_eval if evaluated else None)
      if preempted:
        log.info(f'SIGTERM: saved step {done} of {total_steps}; rerun the same command to resume')
        break
  if profiler:
    profiler.stop(log)
  guard.flush()
  return Outcome(state, steps.flush(), last_eval, preempted, guard.total)


def _next_batches(batches: Iterator, size: int, dog: watchdog.Watchdog, done: int) -> list:
  dog.pet(f'reading the batches of step {done + 1}')
  return [next(batches) for _ in range(size)]


def _check_losses(
  guard: NonFiniteGuard, spikes: SpikeWatch | None, done: int, metrics: dict
) -> None:
  """Hands a call's skipped updates to the non-finite guard and its losses to the spike
  watch, if the run has one; it checks the previous call's, so the host does not wait."""
  guard.after_steps(done, metrics.pop('update_skipped'))
  if spikes:
    spikes.after_steps(done, metrics['loss'])


def _call_size(
  done: int, steps_per_call: int, total_steps: int, state_needed_after: Callable[[int], bool]
) -> int:
  """How many updates the next call runs: `steps_per_call` when `done` is a multiple of it,
  they fit before `total_steps` and none but the last ends at a step where the loop needs
  the state (an evaluation, a save, the profiler's window); else one.

  Groups start at multiples of `steps_per_call`, so a run resumed from any step groups
  the later steps as the uninterrupted run did.
  """
  end = done + steps_per_call
  if (
    steps_per_call > 1
    and done % steps_per_call == 0
    and end <= total_steps
    and not any(state_needed_after(step) for step in range(done + 1, end))
  ):
    return steps_per_call
  return 1


def _stackable_groups(host_batches: list) -> list[list]:
  """The batches as one group when they can be stacked into one call (the same shapes:
  always for pretraining; fine-tuning pads each batch to its own bucket length), else
  one group per batch."""

  def shapes(batch):
    return jax.tree.structure(batch), [np.shape(leaf) for leaf in jax.tree.leaves(batch)]

  first = shapes(host_batches[0])
  if all(shapes(batch) == first for batch in host_batches[1:]):
    return [host_batches]
  return [[batch] for batch in host_batches]


def _dispatch(trainer: Trainer, state: TrainState, group: list) -> tuple[TrainState, dict]:
  """Dispatches the updates of `group` (host batches) in one call, unwaited."""
  if len(group) == 1:
    batch = jax.tree.map(lambda x: sharding.global_batch(x, trainer.mesh), group[0])
    return trainer.train_step(state, batch)
  stacked = jax.tree.map(
    lambda *rows: sharding.global_batch(np.stack(rows), trainer.mesh, steps_axis=True), *group
  )
  return trainer.train_steps(state, stacked)
