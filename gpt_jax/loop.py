"""The training loop that pretraining and fine-tuning share.

Both run the same steps: dispatch an update, log the previous one's metrics,
evaluate and checkpoint on their schedule, stop cleanly on SIGTERM (a TPU VM's
preemption notice) at a step boundary, and count updates skipped for a
non-finite loss or gradient. They differ only in what they evaluate and what a
checkpoint records, which they pass in.
"""

import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

from gpt_jax import checkpoint, flops, sharding
from gpt_jax.errors import UserError
from gpt_jax.model import ModelConfig
from gpt_jax.report import RunLog, StepLogger, StepProfiler


def step_logger(log: RunLog, model_config: ModelConfig, mesh, *, every: int, total_steps: int,
                tokens_of: Callable[[object], tuple[int, int]]) -> StepLogger:
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

  The skip flag of a step is read one step late, so the host never waits for
  the device on its account.
  """

  def __init__(self, limit: int, log: RunLog, last_good_checkpoint: Callable[[], int | None]):
    self._limit, self._log, self._last_good = limit, log, last_good_checkpoint
    self._pending = None  # (step, device flag) not yet read
    self.in_a_row = self.total = 0

  def after_step(self, step: int, skipped: jax.Array) -> None:
    self.flush()
    self._pending = (step, skipped)

  def flush(self) -> None:
    if self._pending is None:
      return
    step, skipped = self._pending
    self._pending = None
    if not bool(skipped):
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.total += 1
    self._log.info(f'step {step}: non-finite loss or gradients, update skipped '
                   f'({self.in_a_row} in a row, {self.total} in all)')
    if self.in_a_row >= self._limit:
      raise UserError(
          f'training diverged: {self._limit} steps in a row, up to step {step}, had a '
          f'non-finite loss or gradients (train.max_nonfinite_in_a_row={self._limit}); no '
          f'update was applied, so the last checkpoint (step {self._last_good()}) is good: '
          'lower optim.learning_rate or check the data, then rerun to resume from it')


@dataclasses.dataclass
class Schedule:
  """When the loop evaluates and saves, and what that means for this run."""

  is_eval_step: Callable[[int], bool]
  evaluate: Callable[[dict, int], dict]  # (params, step) -> metrics, logged by the callee
  save: Callable[[int, object, dict | None], None]  # (step, state, eval metrics or None)
  save_every: int = 0  # also save every this many steps (0: only after evaluations)


@dataclasses.dataclass
class Outcome:
  state: object
  last_train: dict
  last_eval: dict
  preempted: bool
  skipped_steps: int


def run(trainer, state, batches: Iterator, *, first_step: int, total_steps: int,
        schedule: Schedule, steps: StepLogger, guard: NonFiniteGuard, log: RunLog,
        profiler: StepProfiler | None = None) -> Outcome:
  """Trains from `first_step` to `total_steps` on `batches` (host arrays of this process)."""
  last_eval, preempted = {}, False
  log.start_progress(first_step, total_steps)
  with checkpoint.PreemptionWatch() as preemption:
    for step in range(first_step, total_steps):
      if profiler:
        profiler.step(step, log)
      host_batch = next(batches)
      batch = jax.tree.map(lambda x: sharding.global_batch(x, trainer.mesh), host_batch)
      state, metrics = trainer.train_step(state, batch)
      done = step + 1
      guard.after_step(done, metrics.pop('update_skipped'))
      steps.after_step(done, metrics, host_batch)
      evaluated = schedule.is_eval_step(done)
      if evaluated:
        steps.flush()
        last_eval = schedule.evaluate(state.params, done)
        steps.restart_clock(done)  # evaluation is not training time
      preempted = preemption.should_stop(done)
      if evaluated or preempted or (schedule.save_every and done % schedule.save_every == 0):
        steps.flush()  # a resumed run starts logging after the checkpoint's step
        schedule.save(done, state, last_eval if evaluated else None)
      if preempted:
        log.info(f'SIGTERM: saved step {done} of {total_steps}; rerun the same command to '
                 'resume')
        break
  if profiler:
    profiler.stop(log)
  guard.flush()
  return Outcome(state, steps.flush(), last_eval, preempted, guard.total)
