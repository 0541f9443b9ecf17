"""Storage that stalls: `gpt-jax pretrain` on a bucket behind a fault-injecting proxy.

Each run is a real subprocess (one CPU device) whose workdir is in a bucket of
fake-gcs-server (tests/fake_gcs.py), reached through tests/fault_proxy.py:

- requests that are never answered time out and are retried: the run finishes;
- a bucket that stops answering altogether: the watchdog ends the run within
  train.hang_timeout_s, with every thread's stack and one line, exit code 3;
- SIGTERM while stuck in such a request: the process ends after train.preemption_grace_s.
"""

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xla_env
from etils import epath
from fake_gcs import client_env
from fault_proxy import FaultProxy

from gpt_jax import config as config_lib
from gpt_jax import storage, watchdog
from gpt_jax.data import workflow
from gpt_jax.report import read_metrics

REPO = Path(__file__).resolve().parents[1]
FLAGS = [
  '--config.model.n_layer=1',
  '--config.model.n_embd=32',
  '--config.model.n_head=2',
  '--config.model.d_ff=64',
  '--config.model.n_ctx=16',
  '--config.model.vocab_size=400',
  '--config.train.seq_len=16',
  '--config.train.batch_size=8',
  '--config.train.log_every=1',
  '--config.train.eval_batches=1',
  '--config.train.steps_per_call=1',
  '--config.checkpoint.every_steps=2',
]
# With this seed and no other faults the 27th request through the proxy is the one of 500
# (0.2 %) that is never answered: a run of a few hundred requests is sure to meet it.
STALL_SEED, STALL_FRACTION = 5, 0.002


@pytest.fixture(scope='module')
def flags(tmp_path_factory):
  """Config flags of a run on a local corpus, tokenizer and token store, built here."""
  root = tmp_path_factory.mktemp('corpus')
  texts = [inspect.getdoc(obj) for obj in vars(json).values() if inspect.getdoc(obj)]
  (root / 'docs.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
  data_flags = [
    '--config.data.corpus=local_text',
    f'--config.data.text_glob={root}',
    '--config.data.validation_fraction=0.3',
    f'--config.data.data_dir={root / "tfds"}',
  ]
  all_flags = FLAGS + data_flags
  config = config_lib.load_config('tiny', [flag[len('--config.') :] for flag in all_flags])
  workflow.train_tokenizer(config, log=lambda _: None)
  workflow.prepare(config, log=lambda _: None)
  return all_flags


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')  # later runs load the compiled steps


@pytest.fixture
def proxy(gcs):
  """A FaultProxy in front of the session's fake-gcs-server; it lets every request through
  until a test sets its faults."""
  server = FaultProxy(gcs.url)
  server.start()
  yield server
  server.stop()


def _start(proxy, workdir: str, flags, cache_dir, tmp_path, **env) -> subprocess.Popen:
  environment = {
    **os.environ,
    **client_env(proxy.url),
    'XLA_FLAGS': xla_env.QUICK_COMPILE,
    'JAX_PLATFORMS': 'cpu',
    'JAX_COMPILATION_CACHE_DIR': str(cache_dir),
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    **env,
  }
  for name in (storage.TIMEOUT_ENV, storage.TENSORSTORE_TIME_ENV, 'GPT_JAX_TRACEBACK'):
    if name not in env:
      environment.pop(name, None)  # this process's own values are not the run's
  process = subprocess.Popen(
    [sys.executable, '-m', 'gpt_jax.cli', 'pretrain', '--config', 'tiny', *flags],
    cwd=tmp_path,
    env=environment,
    stdout=open(tmp_path / 'out.log', 'w'),  # noqa: SIM115 -- the child holds it
    stderr=open(tmp_path / 'err.log', 'w'),  # noqa: SIM115
  )
  process.workdir = workdir
  return process


def _wait(process, tmp_path, timeout=300) -> tuple[int, str, str]:
  try:
    code = process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    code = None
  return code, (tmp_path / 'out.log').read_text(), (tmp_path / 'err.log').read_text()


def _stall_after_first_checkpoint(process, proxy: FaultProxy) -> None:
  """Lets the run commit its first checkpoint, then stops the bucket answering."""
  checkpoints = epath.Path(process.workdir) / 'checkpoints'
  while not list(checkpoints.glob('*/commit_success.txt')):
    assert process.poll() is None, 'the run ended before its first checkpoint'
    time.sleep(0.2)
  proxy.stall_all = True
  stalled = proxy.counts['stalled']
  while proxy.counts['stalled'] == stalled:  # until the run is waiting on the bucket
    assert process.poll() is None, 'the run ended before the bucket stalled it'
    time.sleep(0.1)


def test_requests_that_are_never_answered_time_out_and_the_run_finishes(
  gcs, proxy, flags, cache_dir, tmp_path
):
  proxy.reseed(STALL_SEED, stall=STALL_FRACTION)
  workdir = f'{gcs.bucket()}/run'
  process = _start(
    proxy,
    workdir,
    [*flags, '--workdir', workdir, '--config.train.num_steps=8', '--config.train.eval_every=4'],
    cache_dir,
    tmp_path,
    GPT_JAX_STORAGE_TIMEOUT_S='2',  # gcsfs and tensorstore both, through gpt_jax.storage
  )
  code, out, err = _wait(process, tmp_path)
  assert code == 0, out + err
  assert proxy.counts['stalled'] >= 1, proxy.counts  # the run did meet a stalled request
  assert 'done: eval loss' in out
  steps = [r['step'] for r in read_metrics(f'{workdir}/metrics.jsonl') if r['split'] == 'train']
  assert steps == list(range(1, 9))
  assert (epath.Path(workdir) / 'checkpoints' / '8' / 'commit_success.txt').exists()


def test_a_bucket_that_stops_answering_ends_the_run_within_the_hang_timeout(
  gcs, proxy, flags, cache_dir, tmp_path
):
  workdir = f'{gcs.bucket()}/run'
  process = _start(
    proxy,
    workdir,
    [
      *flags,
      '--workdir',
      workdir,
      '--config.train.num_steps=100000',
      '--config.train.eval_every=100000',
      '--config.train.hang_timeout_s=20',
    ],
    cache_dir,
    tmp_path,
  )
  _stall_after_first_checkpoint(process, proxy)
  code, out, err = _wait(process, tmp_path)
  assert code == watchdog.HUNG_EXIT_CODE, out + err
  *stacks, last = err.strip().splitlines()
  assert last.startswith('gpt-jax: error: no progress for 2') and 'hang_timeout_s=20' in last
  assert ' while ' in last and 'resume from the last checkpoint' in last
  stacks = '\n'.join(stacks)
  assert 'most recent call first' in stacks and 'gpt_jax/loop.py' in stacks  # the main thread
  assert 'gpt_jax/watchdog.py' in stacks  # every thread, the watchdog's own included


def test_sigterm_while_stuck_in_a_request_ends_the_process_after_the_grace_period(
  gcs, proxy, flags, cache_dir, tmp_path
):
  workdir = f'{gcs.bucket()}/run'
  process = _start(
    proxy,
    workdir,
    [
      *flags,
      '--workdir',
      workdir,
      '--config.train.num_steps=100000',
      '--config.train.eval_every=100000',
      '--config.train.hang_timeout_s=0',  # off: only the grace period can end it
      '--config.train.preemption_grace_s=5',
    ],
    cache_dir,
    tmp_path,
  )
  _stall_after_first_checkpoint(process, proxy)
  time.sleep(1)  # well inside the stalled request
  process.send_signal(signal.SIGTERM)
  code, out, err = _wait(process, tmp_path, timeout=120)
  assert code == watchdog.HUNG_EXIT_CODE, out + err
  last = err.strip().splitlines()[-1]
  assert last.startswith('gpt-jax: error: SIGTERM 5 s ago (train.preemption_grace_s)'), err
  assert 'has not stopped, stuck while ' in last
  assert 'SIGTERM: saved step' not in out


def test_storage_timeouts_keep_what_a_user_set(tmp_path):
  """A fresh process: GPT_JAX_STORAGE_TIMEOUT_S sets gcsfs's and tensorstore's timeouts;
  tensorstore's own variables and fsspec's requests_timeout, when set, win."""
  probe = (
    'import os, fsspec.config, gpt_jax; t = fsspec.config.conf["gs"]["requests_timeout"]; '
    'print(os.environ["TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS"], '
    'os.environ["TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES"], getattr(t, "sock_read", t))'
  )

  def run(**env) -> str:
    environment = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith(('TENSORSTORE_CURL', 'FSSPEC_', storage.TIMEOUT_ENV))
    }
    result = subprocess.run(
      [sys.executable, '-c', probe], env={**environment, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()

  assert run() == ['60', '256', '60.0']
  assert run(GPT_JAX_STORAGE_TIMEOUT_S='7.5') == ['8', '256', '7.5']
  assert run(TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS='99', FSSPEC_GS_REQUESTS_TIMEOUT='5') == [
    '99',
    '256',
    '5',
  ]


def test_gpt_jax_imports_without_gcsfs_and_still_times_out_tensorstore():
  """The base install has no gcsfs (nor aiohttp, its HTTP client): importing gpt_jax still
  works and still sets tensorstore's stall detection."""
  probe = (
    'import sys; sys.modules["aiohttp"] = None; import os, gpt_jax; '
    'print(os.environ["TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS"])'
  )
  environment = {k: v for k, v in os.environ.items() if not k.startswith('TENSORSTORE_CURL')}
  result = subprocess.run(
    [sys.executable, '-c', probe], env=environment, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['60']


def test_a_bad_storage_timeout_is_one_line(monkeypatch, capsys):
  from gpt_jax import cli

  monkeypatch.setenv(storage.TIMEOUT_ENV, 'soon')
  assert cli.main(['pretrain', '--config', 'tiny', '--workdir', 'unused']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith(f"gpt-jax: error: {storage.TIMEOUT_ENV}='soon'")


def test_the_watchdog_reports_what_the_loop_was_doing_and_every_thread(tmp_path):
  """In this process, with its exit replaced: the stacks, then the one line, then code 3."""
  import threading

  ended, codes = threading.Event(), []
  report = tmp_path / 'report.txt'
  with open(report, 'w') as stream:
    dog = watchdog.Watchdog(
      0.5, 0, stream=stream, exit=lambda code: (codes.append(code), ended.set())
    )
    with dog:
      dog.pet('saving checkpoint 40')
      assert ended.wait(60), 'the watchdog never fired'
  assert codes == [watchdog.HUNG_EXIT_CODE]
  *stacks, last = report.read_text().strip().splitlines()
  assert (
    last.startswith('gpt-jax: error: no progress for ') and 'while saving checkpoint 40' in last
  )
  assert any('test_faults.py' in line for line in stacks)  # the main thread, waiting above
