"""One writer per workdir, locally and in a bucket, and loss-spike rollback, through the CLI.

A first run is a real subprocess, paused (SIGSTOP) while a second run on its workdir is
refused, then SIGKILLed; a third run takes its lease over and resumes to the parameters of an
uninterrupted run. A poisoned batch makes the loss spike; the run rolls back, skips the
batches from its checkpoint to the spike, and ends equal to a run whose data never held them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath
from helpers import cli_environment, prepared_local_corpus

from gpt_jax import checkpoint, cli, lease, spike
from gpt_jax.data import workflow

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 24
RUN_FLAGS = [
  '--config.model.n_layer=1',
  '--config.model.n_embd=32',
  '--config.model.n_head=4',
  '--config.model.d_ff=64',
  '--config.model.n_ctx=32',
  '--config.train.seq_len=16',
  '--config.train.batch_size=8',
  f'--config.train.num_steps={NUM_STEPS}',
  '--config.train.log_every=1',
  '--config.train.eval_every=100',
  '--config.train.eval_batches=1',
  '--config.train.steps_per_call=1',
  '--config.checkpoint.every_steps=4',
  '--config.data.prepare_workers=1',
]


@pytest.fixture(scope='module')
def flags(tmp_path_factory):
  return prepared_local_corpus(tmp_path_factory.mktemp('lease')) + RUN_FLAGS


@pytest.fixture(scope='module')
def environment(tmp_path_factory):
  return cli_environment(tmp_path_factory.mktemp('jax_cache'))


def _start(workdir: str, flags, env, log_path: Path) -> subprocess.Popen:
  argv = [sys.executable, '-m', 'gpt_jax.cli', 'pretrain', '--config', 'tiny', '--workdir']
  with open(log_path, 'w') as output:
    process = subprocess.Popen(
      [*argv, workdir, *flags], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
    )
  process.log_path = log_path  # type: ignore[attr-defined]
  return process


def _finish(process: subprocess.Popen) -> str:
  code = process.wait(timeout=300)
  output = process.log_path.read_text()  # type: ignore[attr-defined]
  assert code == 0, output[-3000:]
  return output


def _saved_steps(workdir: str) -> list[int]:
  import fsspec

  fs, root = fsspec.core.url_to_fs(f'{workdir}/checkpoints')
  fs.invalidate_cache()  # a bucket's listing is cached otherwise
  if not fs.exists(root):
    return []
  names = [name.rstrip('/').rsplit('/', 1)[-1] for name in fs.ls(root, detail=False)]
  return sorted(int(name) for name in names if name.isdigit())


def _final_params(workdir: str) -> list[np.ndarray]:
  return jax.tree.leaves(checkpoint.load_params(workdir, step=NUM_STEPS))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, flags, environment):
  root = tmp_path_factory.mktemp('reference')
  _finish(_start(str(root / 'run'), flags, environment, root / 'run.log'))
  return _final_params(str(root / 'run'))


def _listing(workdir: str) -> list[tuple[str, int]]:
  """Every file under `workdir` with its size, read afresh (no cached bucket listing)."""
  import fsspec

  fs, root = fsspec.core.url_to_fs(workdir)
  fs.invalidate_cache()
  return sorted((name, info['size']) for name, info in fs.find(root, detail=True).items())


def _second_run_refused_then_takeover(workdir: str, flags, env, tmp_path, capsys) -> str:
  """Runs the first run until it saved, pauses it, checks that a second run is refused,
  kills the first and returns the output of a third run, which takes over."""
  first = _start(workdir, flags, env, tmp_path / 'first.log')
  deadline = time.monotonic() + 240
  while not _saved_steps(workdir) or _saved_steps(workdir)[-1] < 8:
    assert first.poll() is None, first.log_path.read_text()[-3000:]  # type: ignore[attr-defined]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  first.send_signal(signal.SIGSTOP)  # alive and holding the lease, but writing nothing
  try:
    assert NUM_STEPS not in _saved_steps(workdir)
    holder = json.loads((epath.Path(workdir) / lease.LEASE_FILE).read_text())
    assert holder['pid'] == first.pid
    listing = _listing(workdir)
    capsys.readouterr()
    assert cli.main(['pretrain', '--config', 'tiny', '--workdir', workdir, *flags]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
      f'gpt-jax: error: workdir {workdir} is in use by host {holder["host"]} pid {first.pid} '
      f'since {holder["since"]}; stop that run, or if it is gone, '
    ), line
    assert _listing(workdir) == listing  # the refused run wrote nothing
  finally:
    first.kill()
    first.wait(timeout=60)
  return holder


def test_a_second_local_run_is_refused_and_a_killed_runs_lock_is_taken_over(
  tmp_path, flags, environment, reference, capsys
):
  workdir = str(tmp_path / 'run')
  holder = _second_run_refused_then_takeover(workdir, flags, environment, tmp_path, capsys)
  output = _finish(_start(workdir, flags, environment, tmp_path / 'third.log'))
  assert (
    f'gpt-jax: warning: workdir {workdir} was held by host {holder["host"]} pid '
    f'{holder["pid"]} since {holder["since"]}, which stopped without releasing it'
  ) in output
  assert f'resumed from {tmp_path / "run" / "checkpoints"}' in output
  for actual, expected in zip(_final_params(workdir), reference, strict=True):
    np.testing.assert_array_equal(actual, expected)
  assert (tmp_path / 'run' / lease.LEASE_FILE).read_text() == ''  # released at exit


def test_a_second_bucket_run_is_refused_and_a_stale_lease_is_taken_over(
  tmp_path, flags, environment, reference, gcs, capsys
):
  workdir = f'{gcs.bucket()}/run'
  flags = [
    *flags,
    '--config.checkpoint.lease_heartbeat_s=0.5',
    '--config.checkpoint.lease_stale_after_s=5',
  ]
  env = dict(environment, **gcs.env)
  holder = _second_run_refused_then_takeover(workdir, flags, env, tmp_path, capsys)
  time.sleep(5)  # the paused, then killed, run renews no more: its lease goes stale
  output = _finish(_start(workdir, flags, env, tmp_path / 'third.log'))
  assert (
    f'gpt-jax: warning: workdir {workdir} was held by host {holder["host"]} pid '
    f'{holder["pid"]} since {holder["since"]}, which has not renewed its lease for '
  ) in output
  assert 'resumed from' in output
  for actual, expected in zip(_final_params(workdir), reference, strict=True):
    np.testing.assert_array_equal(actual, expected)
  assert not (epath.Path(workdir) / lease.LEASE_FILE).exists()  # released at exit


POISONED = 13  # the batch that feeds step 14; the newest checkpoint before it is step 12


class _Batches:
  """The train batches with batch POISONED (recognised by its content) replaced by random
  tokens, or dropped with the ones before it back to `drop_from`."""

  def __init__(self, inner, poisoned: np.ndarray, drop_from: int | None):
    self._inner, self._poisoned, self._drop_from = inner, poisoned, drop_from
    self._position = 0

  def __iter__(self):
    return self

  def __next__(self):
    if self._drop_from is not None:  # the reference: these batches were never in the data
      while self._drop_from <= self._position <= POISONED:
        next(self._inner)
        self._position += 1
    batch = next(self._inner)
    self._position += 1
    if np.array_equal(batch, self._poisoned):
      rng = np.random.default_rng(0)
      return rng.integers(0, 320, batch.shape).astype(batch.dtype)
    return batch

  def get_state(self):
    return self._inner.get_state()

  def set_state(self, state):
    self._inner.set_state(state)


_PRETRAIN_DATA = workflow.pretrain_data  # the real one: each run below patches it afresh


def _pretrain_on(monkeypatch, workdir, flags, drop_from: int | None) -> int:
  real = _PRETRAIN_DATA

  def data_with_a_poisoned_batch(config):
    data = real(config)
    fresh = real(config).train_batches
    poisoned = [next(fresh) for _ in range(POISONED + 1)][-1]
    data.train_batches = _Batches(data.train_batches, poisoned, drop_from)
    return data

  monkeypatch.setattr(workflow, 'pretrain_data', data_with_a_poisoned_batch)
  return cli.main(['pretrain', '--config', 'tiny', '--workdir', str(workdir), *flags])


def test_a_loss_spike_is_rolled_back_and_its_batches_skipped(tmp_path, flags, monkeypatch, capsys):
  flags = [
    *flags,
    '--config.train.spike=true',
    '--config.train.spike_window=6',
    '--config.train.spike_threshold=4',
    # Learning fast, the model soon predicts this corpus far better than random tokens.
    '--config.optim.warmup_steps=2',
    '--config.optim.learning_rate=3e-3',
  ]
  capsys.readouterr()
  assert _pretrain_on(monkeypatch, tmp_path / 'run', flags, drop_from=None) == 0
  out = capsys.readouterr().out
  assert (
    'rolled back to checkpoint 12 and skipped the 2 batches that fed steps 13-14 '
    f'(recorded in {spike.SKIPS_FILE})'
  ) in out, out[-3000:]
  (skip,) = spike.read_skips(tmp_path / 'run')
  assert (skip.after_step, skip.batches, skip.spike_step) == (12, 2, 14)
  # The reference never saw batches 12 and 13 (the poisoned one): the same data order
  # with them left out from the start, and no spike detector.
  reference = [f for f in flags if not f.startswith('--config.train.spike')]
  assert _pretrain_on(monkeypatch, tmp_path / 'reference', reference, drop_from=12) == 0
  for actual, expected in zip(
    _final_params(str(tmp_path / 'run')), _final_params(str(tmp_path / 'reference')), strict=True
  ):
    np.testing.assert_array_equal(actual, expected)

  # Run again from the start (as if killed right after the rollback, before a checkpoint
  # past it: checkpoint.keep=3 has let 12 go since), the run skips the same batches when its
  # data reaches step 12, and ends equal.
  assert _saved_steps(str(tmp_path / 'run')) == [16, 20, 24]
  shutil.rmtree(tmp_path / 'run' / 'checkpoints')
  assert _pretrain_on(monkeypatch, tmp_path / 'run', flags, drop_from=None) == 0
  assert 'loss spike' not in capsys.readouterr().out
  for actual, expected in zip(
    _final_params(str(tmp_path / 'run')), _final_params(str(tmp_path / 'reference')), strict=True
  ):
    np.testing.assert_array_equal(actual, expected)


def test_a_bucket_lease_is_written_only_over_the_generation_its_writer_read(gcs, capsys):
  """The precondition that makes one writer: a takeover changes the generation, so the old
  holder's next heartbeat (a write over the generation it holds) fails."""
  from gpt_jax.errors import UserError

  workdir = f'{gcs.bucket()}/run'
  first = lease.BucketLease(workdir, heartbeat_s=3600, stale_after_s=7200)
  first.acquire()
  held = first._generation
  with pytest.raises(UserError, match=f'in use by host .* pid {os.getpid()} since .*rerun in'):
    lease.BucketLease(workdir, heartbeat_s=3600, stale_after_s=7200).acquire()
  second = lease.BucketLease(workdir, heartbeat_s=3600, stale_after_s=0)  # finds it stale
  second.acquire()
  assert 'which has not renewed its lease' in capsys.readouterr().err
  assert second._generation != held
  assert first._write(held) is None  # the old holder's heartbeat is refused
  assert lease.BucketLease(workdir, 3600, 7200)._write(0) is None  # so is a second create
  first._generation = 0  # it knows it lost: releasing deletes nothing of the new holder's
  first.release()
  second.release()
  assert not (epath.Path(workdir) / lease.LEASE_FILE).exists()
