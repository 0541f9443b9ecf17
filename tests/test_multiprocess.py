"""Real multi-process JAX on one machine: 2 processes x 4 CPU devices over loopback (gloo).

Each process is a subprocess with its own 4 fake CPU devices; jax.distributed
joins them into one 8-device run. The reference is this (pytest) process with
its 8 devices, on the same mesh shape and the same global batches.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import multiprocess_worker
import numpy as np
import pytest
import xla_env
from helpers import prepared_local_corpus

from gpt_jax import distributed
from gpt_jax.errors import UserError

TIMEOUT_S = 120  # a hung collective fails the test instead of blocking the suite
STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_processes(argv_of, num_processes: int, cwd: Path) -> list[subprocess.Popen]:
  """Starts `num_processes` processes (argv_of(process_id)) of 8 / num_processes CPU devices each."""
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': xla_env.cpu_devices(8 // num_processes),
  }
  return [
    subprocess.Popen(
      argv_of(i), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for i in range(num_processes)
  ]


def _wait_for_success(procs: list[subprocess.Popen], timeout_s: int = TIMEOUT_S) -> list[str]:
  """Each process's output once all exited 0; on a failure or a hang, all killed and their
  output's tail in the message."""
  outputs = []
  try:
    for proc in procs:
      try:
        out, _ = proc.communicate(timeout=timeout_s)
      except subprocess.TimeoutExpired as timeout:
        output = timeout.output or ''
        output = output.decode(errors='replace') if isinstance(output, bytes) else output
        raise AssertionError(f'hung for {timeout_s}s: {output[-3000:]}') from None
      assert proc.returncode == 0, out[-3000:]
      outputs.append(out)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return outputs


def test_two_processes_train_like_one_process_with_eight_devices(tmp_path):
  address = f'127.0.0.1:{_free_port()}'
  worker = str(Path(multiprocess_worker.__file__))
  procs = _start_processes(
    lambda i: [
      sys.executable,
      worker,
      str(tmp_path / 'multi.npz'),
      str(STEPS),
      address,
      '2',
      str(i),
    ],
    2,
    tmp_path,
  )
  try:  # the reference runs here while the two processes train
    multiprocess_worker.main(str(tmp_path / 'single.npz'), STEPS)  # 1 process, 8 devices
  finally:
    _wait_for_success(procs)
  multi = np.load(tmp_path / 'multi.npz')
  assert (int(multi['num_processes']), int(multi['num_devices'])) == (2, 8)
  assert int(multi['num_rows']) == 4  # each process fed half of the 8-row global batch
  single = np.load(tmp_path / 'single.npz')
  assert int(single['num_processes']) == 1 and int(single['num_rows']) == 8

  np.testing.assert_allclose(multi['losses'], single['losses'], rtol=1e-5)
  assert multi['losses'][-1] < multi['losses'][0]  # it trained
  names = [name for name in single.files if '/' in name]
  assert len(names) > 10 and set(names) == {name for name in multi.files if '/' in name}
  worst = max(np.linalg.norm(multi[n] - single[n]) / np.linalg.norm(single[n]) for n in names)
  assert worst <= 1e-5, worst


def test_cli_pretrain_as_two_processes_writes_one_set_of_outputs(tmp_path, capsys):
  data = prepared_local_corpus(tmp_path)
  workdir = tmp_path / 'run'
  address = f'127.0.0.1:{_free_port()}'
  outputs = _wait_for_success(
    _start_processes(
      lambda i: [
        sys.executable,
        '-m',
        'gpt_jax.cli',
        'pretrain',
        '--config',
        'tiny',
        '--workdir',
        str(workdir),
        *data,
        '--config.model.n_layer=1',
        '--config.train.num_steps=3',
        '--config.train.log_every=1',
        '--config.train.batch_size=8',
        '--config.train.seq_len=32',
        '--config.train.eval_batches=1',
        '--config.mesh.data=-1',
        '--config.mesh.fsdp=2',
        '--config.mesh.tensor=1',
        '--coordinator_address',
        address,
        '--num_processes',
        '2',
        '--process_id',
        str(i),
      ],
      2,
      tmp_path,
    )
  )
  # Only process 0 logs.
  assert 'done: eval loss' in outputs[0] and 'done: eval loss' not in outputs[1]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').open()]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['3']
  # Each process saved its own data position; the arrays are one checkpoint.
  data_files = sorted(p.name for p in (workdir / 'checkpoints' / '3' / 'data').glob('process_*'))
  assert data_files == ['process_0-of-2.json', 'process_1-of-2.json']
  assert (workdir / 'tokenizer.model').is_file()


@pytest.mark.parametrize(
  'args, message',
  [
    (('127.0.0.1:1234', 2, None), 'missing --process_id'),
    (('127.0.0.1:1234', 2, 2), '--process_id 2 must be in 0 .. --num_processes - 1'),
    (('127.0.0.1', 2, 0), 'expected HOST:PORT'),
  ],
)
def test_bad_process_flags_are_one_clear_error(args, message):
  with pytest.raises(UserError, match=message):
    distributed.initialize(*args)
