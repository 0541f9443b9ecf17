"""Loss-spike rollback for pretraining (train.spike; off by default, the paper did not need it).

A step whose loss lies more than `train.spike_threshold` standard deviations above the mean
of the `train.spike_window` steps before it is a spike. The run then, as PaLM did:

1. deletes the checkpoints of the spike's step and later (they hold the updates it undoes),
2. restores the newest checkpoint before the spike, step C,
3. skips the batches that fed the steps from C to the spike (steps C+1 .. S, so S - C
   batches), records that in `WORKDIR/skipped_batches.json`, logs one line, and goes on.

The record makes the data order a property of the workdir: whenever the run's data reaches
step C again (a resume from C, a later rollback to a step before C), the same batches are
skipped, so a resumed run repeats the rolled-back one exactly. A spike that comes back
`train.spike_max_rollbacks` times in a row, without a checkpoint past the previous spike in
between, stops the run with one error line.

Losses are read one call late, like the non-finite guard's flags, so the host never waits
for the device on the detector's account.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import ml_collections
import numpy as np

from gpt_jax import config as config_lib
from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError

SKIPS_FILE = 'skipped_batches.json'

State = TypeVar('State')
Result = TypeVar('Result')


@dataclasses.dataclass(frozen=True)
class SpikeConfig:
  """The train section's loss-spike fields."""

  spike: bool  # roll back on a spike (off: a spike is trained through)
  spike_threshold: float  # standard deviations above the window's mean
  spike_window: int  # steps before a step that its loss is compared with
  spike_max_rollbacks: int  # spikes in a row without getting past one: the next one stops

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict) -> 'SpikeConfig':
    view = config_lib.section_view(cls, section, 'train')
    if view.spike and (view.spike_window < 2 or view.spike_threshold <= 0):
      raise UserError(
        f'train.spike_window={view.spike_window} and train.spike_threshold='
        f'{view.spike_threshold}: use a window of at least 2 steps and a positive threshold'
      )
    return view


@dataclasses.dataclass(frozen=True)
class Skip:
  """Batches skipped once the data reaches `after_step` (the checkpoint rolled back to)."""

  after_step: int
  batches: int  # those that fed steps after_step + 1 .. spike_step
  spike_step: int
  loss: float


class Spike(Exception):
  """The loss of `step` is a spike; raised out of the training loop to roll back."""

  def __init__(self, step: int, loss: float, mean: float, std: float):
    super().__init__(f'step {step}: loss {loss:.4f}')
    self.step, self.loss, self.mean, self.std = step, loss, mean, std

  def describe(self) -> str:
    sigmas = (self.loss - self.mean) / self.std
    return f'loss {self.loss:.4f} at step {self.step}, {sigmas:.1f} standard deviations above'


class SpikeWatch:
  """Compares every step's loss with the window before it; raises Spike at a spike."""

  def __init__(self, spike_config: SpikeConfig):
    self._window, self._threshold = spike_config.spike_window, spike_config.spike_threshold
    self._losses: dict[int, float] = {}
    self._pending: tuple[int, Any] | None = None  # (step, device losses) not yet read

  def after_steps(self, done: int, losses: Any) -> None:
    """Call after dispatching the steps up to `done`; `losses` holds their losses (one per
    step, in order, or a scalar for one step). Checks the previous call's."""
    self.flush()
    self._pending = (done, losses)

  def flush(self) -> None:
    if self._pending is None:
      return
    done, losses = self._pending
    self._pending = None
    values = np.asarray(losses, dtype=np.float64).reshape(-1)
    for step, loss in enumerate(values, done - len(values) + 1):
      self._check(step, float(loss))

  def _check(self, step: int, loss: float) -> None:
    if not math.isfinite(loss):
      return  # a skipped update: the non-finite guard's business
    window = [self._losses[s] for s in range(step - self._window, step) if s in self._losses]
    if len(window) == self._window:
      mean, std = float(np.mean(window)), float(np.std(window))
      if std > 0 and loss > mean + self._threshold * std:
        raise Spike(step, loss, mean, std)
    self._losses[step] = loss
    self._losses.pop(step - self._window, None)

  def forget_after(self, step: int) -> None:
    """After a rollback to `step`: the losses of the steps undone are no history."""
    self._pending = None
    self._losses = {s: loss for s, loss in self._losses.items() if s <= step}


class SkippingBatches:
  """The batches of each step in turn, skipping those a rollback recorded.

  `next()` gives the batch of step `step + 1`; when the data reaches a recorded step it
  first discards that record's batches. `inner` keeps its own get_state()/set_state()
  (what checkpoints store); call `at(step)` after setting its state to a checkpoint's.
  """

  def __init__(self, inner: Iterator, skips: list[Skip], step: int):
    self._inner, self._skips, self.step = inner, list(skips), step

  def __iter__(self) -> 'SkippingBatches':
    return self

  def __next__(self) -> Any:
    for skip in self._skips:
      if skip.after_step == self.step:
        for _ in range(skip.batches):
          next(self._inner)
    self.step += 1
    return next(self._inner)

  def at(self, step: int) -> None:
    self.step = step

  def add(self, skip: Skip) -> None:
    self._skips.append(skip)


def read_skips(workdir: Any) -> list[Skip]:
  """The skips recorded in `workdir`, in the order they were made."""
  path = workdir_lib.path(workdir) / SKIPS_FILE
  if not path.exists():
    return []
  return [Skip(**fields) for fields in json.loads(path.read_text())]


def record_skip(workdir: Any, skip: Skip) -> None:
  """Appends `skip` to `workdir`'s record (process 0 writes it)."""
  import jax

  if jax.process_index() == 0:
    skips = [*read_skips(workdir), skip]
    text = json.dumps([dataclasses.asdict(s) for s in skips], indent=1)
    (workdir_lib.path(workdir) / SKIPS_FILE).write_text(text + '\n')


def run_with_rollbacks(
  attempt: Callable[[State, SpikeWatch | None], Result],
  state: State,
  roll_back: Callable[[Spike], tuple[State, int]],
  spike_config: SpikeConfig,
) -> Result:
  """`attempt(state, watch)` (the training loop), again from `roll_back(spike)`'s (state,
  step) after each spike, until it returns; stops in one error line once a rollback is the
  (spike_max_rollbacks + 1)-th in a row that restores a checkpoint from before the previous
  spike (no checkpoint got past it)."""
  watch = SpikeWatch(spike_config) if spike_config.spike else None
  in_a_row, last_spike = 0, None
  while True:
    try:
      return attempt(state, watch)
    except Spike as spike:
      assert watch is not None  # only a watch raises Spike
      state, step = roll_back(spike)
      in_a_row = 1 if last_spike is None or step >= last_spike else in_a_row + 1
      last_spike = spike.step
      if in_a_row > spike_config.spike_max_rollbacks:
        raise UserError(
          f'training keeps spiking: {spike.describe()} the mean of the previous '
          f'{spike_config.spike_window} steps, {in_a_row} times in a row without a checkpoint '
          f'past the previous spike (train.spike_max_rollbacks={spike_config.spike_max_rollbacks})'
          '; lower optim.learning_rate or check the data, then rerun to resume from checkpoint '
          f'{step}, past the batches skipped so far'
        ) from None
      watch.forget_after(step)
