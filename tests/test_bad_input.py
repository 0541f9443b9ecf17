"""Clean output under bad input: undecodable task files, a damaged checkpoint, libtpu on a CPU."""

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import xla_env
from helpers import prepared_local_corpus

from gpt_jax import checkpoint, cli
from gpt_jax.tasks import files


def test_a_task_file_with_invalid_utf8_is_read_with_one_warning(tmp_path, capsys):
  train = tmp_path / 'train.jsonl'
  rows = [
    json.dumps({'text': 'fine', 'label': 'a'}).encode(),
    b'{"text": "caf\xe9 and \xff\xfe", "label": "b"}',  # Latin-1 bytes: not UTF-8
    json.dumps({'text': 'also fine', 'label': 'a'}).encode(),
  ]
  train.write_bytes(b'\n'.join(rows) + b'\n')
  task = files.load_local_task('classification', str(train), str(train))
  assert task.train[1]['text'] == 'caf\ufffd and \ufffd\ufffd' and task.train[1]['label'] == 1
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2  # one warning per file read (train, then validation)
  assert err[0] == (
    f'gpt-jax: warning: {train}: replaced 3 invalid UTF-8 bytes with U+FFFD '
    '(the first on line 2); save the file as UTF-8 to keep those characters'
  )


def _subprocess_env() -> dict:
  """This environment, as a user's shell has it: no JAX_PLATFORMS, one CPU device."""
  env = {key: value for key, value in os.environ.items() if key != 'JAX_PLATFORMS'}
  return {**env, 'XLA_FLAGS': xla_env.QUICK_COMPILE}


def test_falling_back_from_a_damaged_checkpoint_prints_one_warning_and_nothing_else(tmp_path):
  """Also: with libtpu installed on a machine without TPU chips, no libtpu start-up noise."""
  data = prepared_local_corpus(tmp_path)
  workdir = tmp_path / 'run'
  assert (
    cli.main(
      [
        'pretrain',
        '--config',
        'tiny',
        '--workdir',
        str(workdir),
        *data,
        '--config.model.n_layer=1',
        '--config.train.num_steps=4',
        '--config.checkpoint.every_steps=2',
        '--config.train.batch_size=8',
        '--config.train.seq_len=32',
        '--config.train.eval_batches=1',
        '--config.mesh.data=-1',
        '--config.mesh.fsdp=1',
      ]
    )
    == 0
  )
  for path in (workdir / 'checkpoints' / '4' / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':  # array data lost, metadata intact
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'gpt_jax.cli',
      'sample',
      '--workdir',
      str(workdir),
      '--prompt',
      'the quick',
      '--max_new_tokens',
      '2',
    ],
    env=_subprocess_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('the quick')
  assert result.stderr.splitlines() == [
    f'gpt-jax: warning: checkpoint {workdir.resolve() / "checkpoints" / "4"} is unreadable '
    '(ValueError); trying the previous one'
  ], result.stderr[-3000:]


def test_a_failed_reads_leftover_errors_are_dropped_and_nothing_else(caplog):
  """The leftovers of a damaged checkpoint's read, which the test above cannot force, through
  the same channels: asyncio's never-retrieved task and future errors, sys.unraisablehook."""

  async def fail(message):
    raise ValueError(message)

  def log_never_retrieved(message):
    loop = asyncio.new_event_loop()
    task = loop.create_task(fail(message))
    loop.run_until_complete(asyncio.sleep(0))  # the task fails; nobody reads its exception
    future = loop.create_future()
    future.set_exception(ValueError(message))
    loop.close()
    del task, future  # collected: asyncio logs '<Task|Future> exception was never retrieved'
    gc.collect()

  unraisables = []
  saved_hook, saved_filters = sys.unraisablehook, list(logging.getLogger('asyncio').filters)
  sys.unraisablehook = unraisables.append
  try:
    with pytest.raises(ValueError), checkpoint._quiet_leftovers_of_a_failed_read():
      raise ValueError('the read failed')
    log_never_retrieved('Requested byte range [0, 21421) is not valid [tensorstore_spec={}]')
    log_never_retrieved('some other failure')
    for error in (RuntimeError('Event loop is closed'), RuntimeError('other')):
      sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=None))
  finally:
    sys.unraisablehook = saved_hook
    logging.getLogger('asyncio').filters[:] = saved_filters
  logged = [
    (record.getMessage().split()[0], record.exc_info[1].args[0])
    for record in caplog.records
    if record.name == 'asyncio'
  ]
  assert sorted(logged) == [('Future', 'some other failure'), ('Task', 'some other failure')]
  assert [str(unraisable.exc_value) for unraisable in unraisables] == ['other']


def test_the_command_never_starts_libtpu_on_a_machine_without_tpu_chips():
  script = (
    'from gpt_jax import distributed, dryrun, sharding\n'
    'distributed.skip_absent_tpu()\n'
    'import jax\n'
    'from jax._src import xla_bridge\n'
    'jax.devices()\n'
    'print(dryrun.libtpu_installed(), sharding.has_tpu_chips(), '
    'sorted({**xla_bridge.backends(), **xla_bridge._backend_errors}))\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', script],
    env=_subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
    cwd=Path(__file__).parent,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  libtpu, chips, attempted = result.stdout.split(' ', 2)
  # Tried backends are in backends() or, failed, in _backend_errors: with libtpu and no chips,
  # only the CPU.
  assert (libtpu, chips, attempted.strip()) == ('True', 'False', "['cpu']")
  assert 'TPU' not in result.stderr
