"""Run outputs a user looks at: metrics.jsonl, TensorBoard events, the curves PNG, traces."""

import re

import numpy as np
from helpers import tensorboard_events, tensorboard_scalars
from PIL import Image
from tensorboardX import SummaryWriter

from gpt_jax.report import RunLog, StepLogger, StepProfiler, curve_series, read_metrics
from gpt_jax.tensorboard import EventWriter


def test_scalars_reach_jsonl_tensorboard_console_and_png(tmp_path, capsys):
  log = RunLog(tmp_path, progress=False)
  for step in range(10, 60, 10):
    log.scalars(
      step,
      {'loss': 5.0 - step / 20, 'learning_rate': 1e-4 * step, 'tokens_per_s': 1000.0, 'mfu': 0.25},
    )
  log.scalars(50, {'loss': 2.9, 'accuracy': 0.7}, split='eval')
  log.close()

  out = capsys.readouterr().out
  assert (
    'train step 30 | loss 3.5000 | learning_rate 3.000e-03 | tokens_per_s 1,000 | mfu 25.0%' in out
  )
  records = read_metrics(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records if r['split'] == 'train'] == [10, 20, 30, 40, 50]
  assert records[-1]['accuracy'] == 0.7

  events = tensorboard_scalars(tmp_path / 'tensorboard')
  assert [s for s, _ in events['train/loss']] == [10, 20, 30, 40, 50]
  np.testing.assert_allclose([v for _, v in events['train/loss']], [4.5, 4.0, 3.5, 3.0, 2.5])
  assert events['eval/accuracy'] == [(50, np.float32(0.7))]

  image = np.asarray(Image.open(tmp_path / 'curves.png').convert('L'))
  assert image.shape[0] > 200 and image.shape[1] > 600  # loss, lr and eval-metric panels
  assert image.std() > 10  # something is drawn


def test_event_files_hold_what_tensorboardx_writes_for_the_same_scalars(tmp_path):
  scalars = [('train/loss', 4.25, 0), ('train/loss', 3.5, 10), ('eval/accuracy', 0.7, 2**40)]
  ours, theirs = EventWriter(tmp_path / 'ours'), SummaryWriter(str(tmp_path / 'theirs'))
  for writer in (ours, theirs):
    for tag, value, step in scalars:
      writer.add_scalar(tag, value, step)
    writer.close()

  def without_times(directory):
    events = tensorboard_events(directory)
    for event in events:
      event.wall_time = 0
    return [event.SerializeToString() for event in events]

  assert without_times(tmp_path / 'ours') == without_times(tmp_path / 'theirs')
  assert tensorboard_scalars(tmp_path / 'ours')['eval/accuracy'] == [(2**40, np.float32(0.7))]


def test_curves_plot_metrics_not_positions_and_only_logged_losses():
  records = [
    {'split': 'train', 'step': s, 'time': 1.0, 'loss': 3.0, 'learning_rate': 1e-4} for s in (10, 20)
  ]
  records += [
    {'split': 'validation', 'step': s, 'time': 2.0, 'epoch': e, 'validation_accuracy': 0.5 + e / 10}
    for s, e in ((15, 1.0), (30, 2.0))
  ]
  assert curve_series(records) == {
    'loss': {'train loss': ([10, 20], [3.0, 3.0])},
    'learning rate': {'train learning rate': ([10, 20], [1e-4, 1e-4])},
    'validation metrics': {'validation_accuracy': ([15, 30], [0.6, 0.7])},
  }


def test_progress_bar_shows_loss_throughput_and_eta(tmp_path):
  class Terminal:
    text = ''

    def write(self, s):
      Terminal.text += s

    def flush(self):
      pass

    def isatty(self):
      return True

  log = RunLog(tmp_path, stream=Terminal(), progress=True)
  log.start_progress(0, 100)
  log.advance(10)
  log.scalars(10, {'loss': 4.25, 'tokens_per_s': 1234.0, 'mfu': 0.5})
  log.close()
  assert 'loss 4.2500' in Terminal.text and 'tokens_per_s 1,234' in Terminal.text
  assert 'mfu 50.0%' in Terminal.text
  assert re.search(r'10/100 \[\d\d:\d\d<\d\d:\d\d', Terminal.text)  # elapsed<ETA


def test_profiler_writes_a_trace_for_the_window(tmp_path):
  import jax.numpy as jnp

  log = RunLog(None)
  profiler = StepProfiler(tmp_path, start=1, count=2)
  for step in range(4):
    profiler.step(step, log)
    (jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()
  assert list((tmp_path / 'profile').rglob('*.xplane.pb'))


def test_step_logger_counts_each_batch_own_tokens(tmp_path, monkeypatch):
  """Fine-tuning batches vary in length: tokens/s and MFU add up the logged window's own
  batches, leaving out the compile step and a step dispatched after the logged one."""
  clock = iter([0.0, 10.0, 10.0, 12.0, 12.0])  # start, compile done, log at step 3, ...
  monkeypatch.setattr('gpt_jax.report.time.perf_counter', lambda: next(clock))
  log = RunLog(tmp_path, progress=False)
  steps = StepLogger(
    log,
    every=3,
    total_steps=10,
    work=lambda batch: (batch.size, 100.0 * batch.size),
    peak_flops=1e4,
  )
  lengths = {1: 512, 2: 64, 3: 128, 4: 512}  # step 1 compiles; step 4 is in flight at step 3's log
  for done, length in lengths.items():
    steps.after_steps(done, {'loss': np.float32(1.0)}, [np.zeros((2, length))])
  logged = steps.flush()
  assert logged['tokens_per_s'] == (2 * 64 + 2 * 128) / 2.0
  assert logged['mfu'] == 100.0 * (2 * 64 + 2 * 128) / 2.0 / 1e4


def test_step_logger_logs_each_step_of_a_call_with_the_call_throughput(tmp_path, monkeypatch):
  """train.steps_per_call: a call of 4 steps returns 4 stacked values; the logged steps in it
  get their own values and share the call's tokens/s (the host sees only when it ends)."""
  clock = iter([0.0, 10.0, 10.0, 12.0, 12.0, 14.0, 14.0])
  monkeypatch.setattr('gpt_jax.report.time.perf_counter', lambda: next(clock))
  log = RunLog(tmp_path, progress=False)
  steps = StepLogger(
    log, every=2, total_steps=8, work=lambda batch: (batch.size, 100.0 * batch.size), peak_flops=1e4
  )
  batches = [np.zeros((2, 16))] * 4
  steps.after_steps(4, {'loss': np.arange(4, dtype=np.float32)}, batches)  # compiles
  steps.after_steps(8, {'loss': np.arange(4, 8, dtype=np.float32)}, batches)
  last = steps.flush()
  records = {r['step']: r for r in read_metrics(tmp_path / 'metrics.jsonl')}
  assert {step: r['loss'] for step, r in records.items()} == {2: 1.0, 4: 3.0, 6: 5.0, 8: 7.0}
  assert 'tokens_per_s' not in records[4]  # the compiling call
  assert records[6]['tokens_per_s'] == records[8]['tokens_per_s'] == 4 * 2 * 16 / 2.0
  assert last['loss'] == 7.0 and last['mfu'] == 100.0 * 4 * 2 * 16 / 2.0 / 1e4
