"""A pod-shaped run against a real GCS API on loopback (fake-gcs-server, tests/fake_gcs.py).

Two JAX processes of 4 CPU devices each, as two TPU VM workers would be, with the
tokenizer, token store, workdir and task files all in one bucket:
tokenizer -> prepare (each process writes its shards) -> pretrain, SIGKILLed
mid-run and rerun -> final parameters bitwise equal to an uninterrupted run;
then fine-tune from the bucket, sample from it and export into it. The pretraining runs
reach the bucket through a proxy that fails 5 % of requests (503, 429, reset connections;
tests/fault_proxy.py): retried, they change no bit of the result.
"""

import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import jax
import numpy as np
import xla_env
from etils import epath
from fake_gcs import client_env
from fault_proxy import FaultProxy
from test_multiprocess import _free_port, _wait_for_success

from gpt_jax import checkpoint, cli, hf
from gpt_jax import config as config_lib
from gpt_jax.data import corpora, workflow
from gpt_jax.report import read_metrics

# A hung collective or request fails the test; generous, as the suite shares two cores.
TIMEOUT_S = 300
TEXTS = [
  f'document {i}: ' + 'the quick brown fox jumps over the lazy dog. ' * (5 + i % 7)
  for i in range(60)
]
MODEL = [
  '--config.model.vocab_size=320',
  '--config.model.n_layer=1',
  '--config.model.n_embd=32',
  '--config.model.n_head=2',
  '--config.model.d_ff=128',
  '--config.model.n_ctx=16',
]
LEASE_STALE_AFTER_S = 2
TRAIN = [
  '--config.train.batch_size=8',
  '--config.train.seq_len=16',
  '--config.train.num_steps=8',
  '--config.train.log_every=1',
  '--config.train.eval_every=8',
  '--config.train.eval_batches=1',
  '--config.checkpoint.every_steps=2',
  # The killed run's bucket lease goes stale soon, so that its rerun takes it over.
  '--config.checkpoint.lease_heartbeat_s=0.5',
  f'--config.checkpoint.lease_stale_after_s={LEASE_STALE_AFTER_S}',
  '--config.mesh.data=-1',
  '--config.mesh.fsdp=2',
  '--config.mesh.tensor=1',
]


def _cli(*args: str) -> list[str]:
  return [sys.executable, '-m', 'gpt_jax.cli', *args]


def _start(argv_of, env, cwd) -> list[subprocess.Popen]:
  """Two processes of the same command, 4 CPU devices each, joined by jax.distributed."""
  address = f'127.0.0.1:{_free_port()}'
  env = {**env, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': xla_env.cpu_devices(4)}
  return [
    subprocess.Popen(
      argv_of(i)
      + ['--coordinator_address', address, '--num_processes', '2', '--process_id', str(i)],
      cwd=cwd,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]


def _run_two(args, env, cwd) -> list[str]:
  return _wait_for_success(_start(lambda i: _cli(*args), env, cwd), TIMEOUT_S)


def _kill_after_first_checkpoint(procs, checkpoints: str) -> None:
  """SIGKILLs both processes once a checkpoint is complete (orbax marks a finished step in a
  bucket with commit_success.txt; its directory appears as soon as writing starts)."""
  filesystem = fsspec.filesystem('gs')
  deadline = time.monotonic() + 120
  while True:
    filesystem.invalidate_cache()  # gcsfs caches listings
    if filesystem.glob(f'{checkpoints}/*/commit_success.txt'):
      break
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
      'the run ended or stalled before its first checkpoint'
    )
    time.sleep(0.2)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_two_processes_prepare_train_resume_finetune_sample_in_a_bucket(tmp_path, gcs, capsys):
  bucket = gcs.bucket()
  env = {**os.environ, **gcs.env}
  corpus = tmp_path / 'corpus.jsonl'
  corpus.write_text(''.join(json.dumps({'text': text}) + '\n' for text in TEXTS))
  data = [
    '--config.data.corpus=local_text',
    f'--config.data.text_glob={corpus}',
    f'--config.data.data_dir={bucket}/data',
    f'--config.data.tfds_dir={tmp_path / "tfds"}',
    '--config.data.validation_fraction=0.3',
    '--config.data.shard_mb=0.004',
    '--config.data.prepare_workers=1',
  ]
  config = config_lib.load_config('tiny', [flag[len('--config.') :] for flag in data + MODEL])
  corpora.open_corpus(config.data).prepare()  # both processes share this machine's tfds_dir

  _run_two(['tokenizer', '--config', 'tiny', *data, *MODEL], env, tmp_path)
  prepared = _run_two(['prepare', '--config', 'tiny', *data, *MODEL], env, tmp_path)
  assert 'wrote token store gs://' in prepared[0] and 'with 2 x 1 workers' in prepared[0]
  # The two processes' shards are the bytes one process writes alone.
  store = workflow.pretrain_data(config).store
  config.data.data_dir, config.data.tokenizer = (
    str(tmp_path / 'local'),
    str(store.meta['tokenizer']),
  )
  alone = workflow.prepare(config, log=lambda _: None)
  shards = [p.name for p in alone.directory.iterdir() if p.name.endswith(('.bin', '.json'))]
  assert len(shards) > 8
  for name in shards + ['counts.npy']:
    assert (store.directory / name).read_bytes() == (alone.directory / name).read_bytes(), name

  proxy = FaultProxy(gcs.url, seed=0, fail=0.05)
  proxy.start()
  faulty = {**env, **client_env(proxy.url)}
  pretrain = ['pretrain', '--config', 'tiny', *data, *MODEL, *TRAIN]
  _run_two([*pretrain, '--workdir', f'{bucket}/full'], faulty, tmp_path)
  killed = epath.Path(f'{bucket}/killed')
  _kill_after_first_checkpoint(
    _start(lambda i: _cli(*pretrain, '--workdir', str(killed)), faulty, tmp_path),
    f'{killed}/checkpoints',
  )
  time.sleep(LEASE_STALE_AFTER_S)  # the killed run renews its lease no more
  resumed = _run_two(['pretrain', '--workdir', str(killed)], faulty, tmp_path)  # stored config
  proxy.stop()
  assert 'done: eval loss' in resumed[0]
  assert min(proxy.counts[failure] for failure in ('503', '429', 'reset')) >= 1, proxy.counts

  full, again = (checkpoint.load_params(f'{bucket}/{run}') for run in ('full', 'killed'))
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses = {
    run: {
      r['step']: r['loss']
      for r in read_metrics(f'{bucket}/{run}/metrics.jsonl')
      if r['split'] == 'train'
    }
    for run in ('full', 'killed')
  }
  assert sorted(losses['full']) == list(range(1, 9))
  # The killed run's records from before its last log upload are gone, the rest agree exactly.
  assert 8 in losses['killed'] and all(
    losses['full'][step] == loss for step, loss in losses['killed'].items()
  )

  tasks = epath.Path(f'{bucket}/tasks')
  for split, count in (('train', 16), ('validation', 8)):
    (tasks / f'{split}.jsonl').write_text(
      ''.join(
        json.dumps(
          {
            'text': f'the fox {i} ' + ('jumps' if i % 2 else 'sleeps'),
            'label': ('no', 'yes')[i % 2],
          }
        )
        + '\n'
        for i in range(count)
      )
    )
  assert (
    cli.main(
      [
        'finetune',
        '--config',
        'configs/finetune/local.py',
        '--workdir',
        f'{bucket}/finetune',
        '--init',
        f'{bucket}/full',
        '--config.task.kind=classification',
        f'--config.task.train={tasks}/train.jsonl',
        f'--config.task.validation={tasks}/validation.jsonl',
        '--config.train.batch_size=8',
        '--config.finetune.eval_batch_size=8',
        '--config.train.num_epochs=1.0',
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
      ]
    )
    == 0
  )
  assert (epath.Path(f'{bucket}/finetune') / 'summary.json').exists()
  capsys.readouterr()
  assert (
    cli.main(
      [
        'sample',
        '--workdir',
        f'{bucket}/full',
        '--prompt',
        'the quick',
        '--max_new_tokens',
        '8',
        '--temperature',
        '0',
      ]
    )
    == 0
  )
  sampled = capsys.readouterr().out
  assert sampled.startswith('the quick') and len(sampled) > len('the quick\n')
  assert cli.main(['export', '--workdir', f'{bucket}/full', '--out', f'{bucket}/hf']) == 0
  exported, _ = hf.load_hf_dir(f'{bucket}/hf')
  np.testing.assert_array_equal(
    exported['tokens_embed']['embedding'], np.asarray(full['tokens_embed']['embedding'])
  )
