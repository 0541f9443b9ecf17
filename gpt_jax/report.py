"""What a run tells its user while it trains and after.

- console: one line per logged step, and a progress bar (step, loss, tokens/s,
  MFU, ETA) when the output is a terminal;
- `metrics.jsonl`: one JSON record per logged step and split;
- `tensorboard/`: TensorBoard event files (gpt_jax.tensorboard, no TensorFlow);
- `curves.png`: loss and learning-rate curves (and validation metrics), drawn
  when the run ends;
- `profile/`: a JAX profiler trace of a window of steps, when asked for.

Only process 0 writes, so a multi-host run logs each step once.
"""

import collections
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath

from gpt_jax import tensorboard
from gpt_jax import workdir as workdir_lib
from gpt_jax.workdir import CURVES_FILE, METRICS_FILE


def _format(name: str, value) -> str:
  if isinstance(value, float):
    if name == 'learning_rate':
      return f'{name} {value:.3e}'
    if name == 'mfu':
      return f'mfu {100 * value:.1f}%'
    if name.endswith('tokens_per_s'):
      return f'{name} {value:,.0f}'
    return f'{name} {value:.4f}' if math.isfinite(value) else f'{name} {value}'
  return f'{name} {value}'


class RunLog:
  """Console lines, progress bar, metrics.jsonl and TensorBoard events of one run.

  A bucket workdir (`gs://...`) cannot be appended to, so its metrics.jsonl,
  TensorBoard events and curves are written in a local staging directory
  (starting from the workdir's metrics.jsonl, if any) and uploaded whenever
  `upload_every_s` seconds have passed at a logged step, and by `close()`: a run
  killed outright loses at most that window of records.
  """

  def __init__(
    self,
    workdir: str | Path | None,
    stream=None,
    progress: bool | None = None,
    trackers=(),
    upload_every_s: float = 60.0,
  ):
    self._enabled = jax.process_index() == 0
    self._trackers = list(trackers)  # e.g. gpt_jax.tracking.WandbTracker
    self._stream = stream
    self._workdir = workdir_lib.path(workdir) if workdir is not None else None
    self._progress = progress  # None: a bar only when the output is a terminal
    self._file = self._tensorboard = self._bar = None
    self._upload_every_s, self._uploaded_at = upload_every_s, time.monotonic()
    if self._workdir is not None and self._enabled:
      self._workdir.mkdir(parents=True, exist_ok=True)
      self._local = self._workdir
      if not workdir_lib.is_local(self._workdir):
        self._local = epath.Path(tempfile.mkdtemp(prefix='gpt_jax_log.'))
        if (self._workdir / METRICS_FILE).exists():
          (self._workdir / METRICS_FILE).copy(self._local / METRICS_FILE)
      self._file = open(self._local / METRICS_FILE, 'a', encoding='utf-8')
      self._tensorboard = tensorboard.EventWriter(self._local / workdir_lib.TENSORBOARD_DIR)
    self._start = time.time()

  def info(self, message: str) -> None:
    if not self._enabled:
      return
    if self._bar is not None:
      self._bar.write(message, file=self._out())
    else:
      print(message, file=self._out(), flush=True)

  def _out(self):
    return self._stream or sys.stdout

  def start_progress(self, first_step: int, total_steps: int, unit: str = 'step') -> None:
    """Shows a progress bar from `first_step` to `total_steps` (only on a terminal by default)."""
    if not self._enabled:
      return
    from tqdm import tqdm

    disable = not self._out().isatty() if self._progress is None else not self._progress
    self._bar = tqdm(
      total=total_steps,
      initial=first_step,
      unit=unit,
      file=self._out(),
      disable=disable,
      dynamic_ncols=True,
      leave=False,
    )

  def advance(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def scalars(self, step: int, values: dict, split: str = 'train') -> None:
    values = {k: v if isinstance(v, (int, str)) else float(v) for k, v in values.items()}
    if not self._enabled:
      return
    self.info(f'{split} step {step} | ' + ' | '.join(_format(k, v) for k, v in values.items()))
    if self._bar is not None and split == 'train':
      shown = ('loss', 'tokens_per_s', 'mfu')
      self._bar.set_postfix_str(', '.join(_format(k, values[k]) for k in shown if k in values))
    if self._file:
      record = {'split': split, 'step': step, 'time': round(time.time() - self._start, 3), **values}
      self._file.write(json.dumps(record) + '\n')
      self._file.flush()
    if self._tensorboard:
      for name, value in values.items():
        if isinstance(value, (int, float)):
          self._tensorboard.add_scalar(f'{split}/{name}', value, step)
      self._tensorboard.flush()  # as metrics.jsonl: a live TensorBoard sees every logged step
    for tracker in self._trackers:
      tracker.log(step, split, values)
    if (
      self._tensorboard is not None  # opened with self._file
      and self._local != self._workdir
      and time.monotonic() - self._uploaded_at >= self._upload_every_s
    ):
      self._upload()

  def _upload(self) -> None:
    _upload(self._local, self._workdir)
    self._uploaded_at = time.monotonic()

  def close(self) -> None:
    """Flushes everything, closes the trackers and draws the curves PNG."""
    for tracker in self._trackers:
      tracker.close()
    self._trackers = []
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tensorboard:
      self._tensorboard.close()
      self._tensorboard = None
    if self._file:
      self._file.close()
      self._file = None
      plot_curves(self._local / METRICS_FILE, self._local / CURVES_FILE)
      if self._local != self._workdir:
        self._upload()
        self._local.rmtree()

  def drop_after(self, step: int) -> None:
    """Forgets metrics.jsonl records past `step`: a resumed run logs those steps again.

    Truncates in place; the append-mode file this log writes carries on after the
    kept records.
    """
    if self._file is None:
      return
    self._file.flush()
    with open(self._local / METRICS_FILE, 'r+', encoding='utf-8') as file:
      kept = [line for line in file if _record_step(line) <= step]
      file.seek(0)
      file.writelines(kept)
      file.truncate()


def _record_step(line: str) -> float:
  """A metrics.jsonl line's step; infinite for a line cut short by a killed run."""
  try:
    return json.loads(line)['step']
  except (json.JSONDecodeError, KeyError):
    return float('inf')


def _upload(local: epath.Path, target: epath.Path) -> None:
  """Copies the staged files into the bucket directory `target`, replacing older copies."""
  for root, _, files in local.walk():
    target_dir = target / root.relative_to(local)
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
      (root / name).copy(target_dir / name, overwrite=True)


def read_metrics(path: str | Path) -> list[dict]:
  with workdir_lib.path(path).open(encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


# Fields of a record that place it rather than measure the model.
_POSITION_FIELDS = ('split', 'step', 'time', 'epoch')


def curve_series(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
  """The lines of curves.png: {panel title: {line label: (steps, values)}}.

  Panels: 'loss' (every split that logged one), 'learning rate', and, when any
  evaluation logged more than a loss, 'validation metrics'.
  """

  def series(split, name):
    points = [
      (r['step'], r[name])
      for r in records
      if r['split'] == split and isinstance(r.get(name), (int, float))
    ]
    return tuple(map(list, zip(*points)))

  splits = sorted({r['split'] for r in records})
  panels = {
    'loss': {f'{split} loss': series(split, 'loss') for split in splits},
    'learning rate': {'train learning rate': series('train', 'learning_rate')},
  }
  eval_metrics = sorted(
    {
      k
      for r in records
      if r['split'] != 'train'
      for k in r
      if k not in _POSITION_FIELDS + ('loss', 'perplexity') and isinstance(r[k], (int, float))
    }
  )
  panels['validation metrics'] = {
    (name if name.startswith(split) else f'{split} {name}'): series(split, name)
    for name in eval_metrics
    for split in splits
    if split != 'train'
  }
  return {
    title: {label: line for label, line in lines.items() if line}
    for title, lines in panels.items()
    if any(lines.values())
  }


def plot_curves(metrics_path: str | Path, png_path: str | Path) -> Path | None:
  """Draws loss, learning rate and validation metrics from metrics.jsonl; None if empty."""
  records = read_metrics(metrics_path)
  if not records:
    return None
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  panels = curve_series(records)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
  for axis, (title, lines) in zip(axes[0], panels.items()):
    for label, (steps, values) in lines.items():  # evaluations are sparse: mark each one
      axis.plot(steps, values, label=label, marker=None if label.startswith('train') else 'o')
    axis.set(xlabel='step', title=title)
    axis.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
  return Path(png_path)


class StepProfiler:
  """Writes a JAX profiler trace (TensorBoard / Perfetto) for steps [start, start + count)."""

  def __init__(self, workdir: str | Path, start: int, count: int):
    self._dir = workdir_lib.path(workdir) / workdir_lib.PROFILE_DIR
    self._start, self._stop = start, start + count
    self._active = False
    # The profiler writes local files only: a bucket's trace is staged here.
    self._local: epath.Path | None = None

  def is_boundary(self, step: int) -> bool:
    """Whether the trace starts or stops after `step` updates (a call must end there)."""
    return step in (self._start, self._stop)

  def step(self, step: int, log: RunLog) -> None:
    """Call before running `step`."""
    if step == self._start and not self._active:
      self._local = (
        self._dir
        if workdir_lib.is_local(self._dir)
        else epath.Path(tempfile.mkdtemp(prefix='gpt_jax_profile.'))
      )
      jax.profiler.start_trace(str(self._local))
      self._active = True
    elif step == self._stop and self._active:
      self.stop(log)

  def stop(self, log: RunLog) -> None:
    if self._active:
      jax.profiler.stop_trace()
      self._active = False
      if self._local is not None and self._local != self._dir:  # set when the trace started
        _upload(self._local, self._dir)
        self._local.rmtree()
      log.info(f'profiler trace of steps {self._start}-{self._stop - 1} written to {self._dir}')


class StepLogger:
  """Logs a training loop's metrics every `every` steps, with tokens/s and MFU.

  A call's metrics are fetched only after the next call has been dispatched, so
  the device never waits for the host. Compile time (the first call of each
  length) and evaluation time are kept out of the throughput figures. `work(batch)` gives
  the (tokens, model FLOPs) of a step's batch: fine-tuning batches are padded
  to lengths that vary from step to step, so the figures add up each step's own.
  """

  def __init__(
    self,
    log: RunLog,
    every: int,
    total_steps: int,
    work: Callable[[Any], tuple[float, float]],
    peak_flops: float,
  ):
    self._log, self._every, self._total = log, every, total_steps
    self._work, self._peak = work, peak_flops
    self._pending: tuple[int, int, list[int], dict] | None = None
    self._compiled: set[int] = set()  # lengths of the calls run so far
    self._dispatched: collections.deque = collections.deque()  # (step, tokens, FLOPs)
    self.last: dict = {}
    self.restart_clock(0)

  def restart_clock(self, step: int) -> None:
    """Starts a new throughput window at `step` (e.g. after an evaluation)."""
    self._window_start, self._window_step = time.perf_counter(), step
    self._take_work(step)

  def _take_work(self, step: int) -> tuple[float, float]:
    """Sums and forgets the work of the dispatched steps up to `step`."""
    tokens = flops = 0.0
    while self._dispatched and self._dispatched[0][0] <= step:
      _, step_tokens, step_flops = self._dispatched.popleft()
      tokens, flops = tokens + step_tokens, flops + step_flops
    return tokens, flops

  def after_steps(self, done: int, metrics: dict, batches: list) -> None:
    """Call after dispatching the call that ran one step per batch of `batches` and brought
    the count to `done`; `metrics` holds their values, stacked on a leading axis when
    there are several."""
    first = done - len(batches)
    for step, batch in enumerate(batches, first + 1):
      self._dispatched.append((step, *self._work(batch)))
    if len(batches) not in self._compiled:  # a call of a new length compiles first
      jax.block_until_ready(metrics)
      self._log.info(
        f'compiled and ran {_describe_call(len(batches))} in '
        f'{time.perf_counter() - self._window_start:.1f}s'
      )
      self._compiled.add(len(batches))
      self.restart_clock(done)
    self.flush()
    logged = [
      step for step in range(first + 1, done + 1) if step % self._every == 0 or step == self._total
    ]
    if logged:
      self._pending = (done, len(batches), logged, metrics)
    self._log.advance(done)

  def flush(self) -> dict:
    """Logs the pending steps now (blocking until they are done); returns the last logged values.

    Steps logged from one call share its throughput: the host sees only when the call ends.
    """
    if self._pending is not None:
      done, count, logged, metrics = self._pending
      self._pending = None
      per_step = {
        name: np.reshape(value, (count,)) for name, value in jax.device_get(metrics).items()
      }
      seconds = time.perf_counter() - self._window_start
      rates = {}
      if done > self._window_step:
        tokens, flops = self._take_work(done)
        rates = {'tokens_per_s': tokens / seconds, 'mfu': flops / seconds / self._peak}
      for step in logged:
        values = {name: column[step - done + count - 1] for name, column in per_step.items()}
        self.last = {**values, **rates}
        self._log.scalars(step, self.last)
      self.restart_clock(done)
    return self.last


def _describe_call(count: int) -> str:
  return 'the first step' if count == 1 else f'a call of {count} steps'
