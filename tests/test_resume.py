"""Killed and preempted `gpt-jax pretrain` runs resume to exactly the uninterrupted result.

Each run is a real subprocess on one CPU device, reading a token store built
here from the docstrings of Python's json module. The reference is the same
command run without interruption.
"""

import inspect
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import cli_environment

from gpt_jax import checkpoint, cli
from gpt_jax import config as config_lib
from gpt_jax.data import workflow
from gpt_jax.report import read_metrics

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 80
MODEL_FLAGS = [
  '--config.model.n_layer=2',
  '--config.model.n_embd=32',
  '--config.model.n_head=4',
  '--config.model.d_ff=64',
  '--config.model.n_ctx=32',
  '--config.model.vocab_size=400',
  '--config.train.seq_len=16',
  '--config.train.batch_size=8',
  f'--config.train.num_steps={NUM_STEPS}',
  '--config.train.log_every=1',
  '--config.train.eval_every=20',
  '--config.train.eval_batches=2',
  '--config.checkpoint.every_steps=5',
]


@pytest.fixture(scope='module')
def flags(tmp_path_factory):
  """Config flags of a run on a freshly built local corpus, tokenizer and token store."""
  root = tmp_path_factory.mktemp('corpus')
  texts = [inspect.getdoc(obj) for obj in vars(json).values() if inspect.getdoc(obj)]
  (root / 'docs.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
  data_flags = [
    '--config.data.corpus=local_text',
    f'--config.data.text_glob={root}',
    '--config.data.validation_fraction=0.3',
    f'--config.data.data_dir={root / "tfds"}',
  ]
  all_flags = MODEL_FLAGS + data_flags
  config = config_lib.load_config('tiny', [flag[len('--config.') :] for flag in all_flags])
  workflow.train_tokenizer(config, log=lambda _: None)
  workflow.prepare(config, log=lambda _: None)
  return all_flags


@pytest.fixture(scope='module')
def environment(tmp_path_factory):
  return cli_environment(tmp_path_factory.mktemp('jax_cache'))


def _start(workdir: Path, flags, environment, with_config=True) -> subprocess.Popen:
  argv = [sys.executable, '-m', 'gpt_jax.cli', 'pretrain', '--workdir', str(workdir)]
  if with_config:
    argv += ['--config', 'tiny', *flags]
  log_path = workdir.parent / f'{workdir.name}.{time.time_ns()}.log'
  with open(log_path, 'w') as output:
    process = subprocess.Popen(
      argv, cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT
    )
  process.log_path = log_path
  return process


def _finish(process: subprocess.Popen) -> str:
  code = process.wait(timeout=600)
  output = process.log_path.read_text()
  assert code == 0, output
  return output


def _saved_steps(workdir: Path) -> list[int]:
  directory = workdir / 'checkpoints'
  return (
    sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    if directory.is_dir()
    else []
  )


def _wait_for_step(process, workdir: Path, step: int) -> None:
  """Returns once the run has logged `step` and committed at least one checkpoint."""
  metrics = workdir / 'metrics.jsonl'
  while True:
    assert process.poll() is None, 'the run ended before it could be interrupted'
    logged = (
      [json.loads(line)['step'] for line in metrics.read_text().splitlines() if line.endswith('}')]
      if metrics.exists()
      else []
    )
    if logged and max(logged) >= step and _saved_steps(workdir):
      return
    time.sleep(0.01)


def _curve(workdir: Path) -> list[tuple]:
  """Every logged value that depends on the training (not on the clock)."""
  return [
    (r['split'], r['step'], r['loss'], r.get('grad_norm'), r.get('learning_rate'))
    for r in read_metrics(workdir / 'metrics.jsonl')
  ]


def _assert_same_run(workdir: Path, reference: Path) -> None:
  assert _curve(workdir) == _curve(reference)
  final, expected = (checkpoint.load_params(w, step=NUM_STEPS) for w in (workdir, reference))
  for (path, a), b in zip(
    jax.tree_util.tree_flatten_with_path(final)[0], jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, flags, environment):
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  _finish(_start(workdir, flags, environment))
  assert len(_curve(workdir)) == NUM_STEPS + NUM_STEPS // 20
  return workdir


@pytest.mark.parametrize('kill,steps_per_call', [('SIGKILL', 4), ('SIGTERM', 1)])
def test_interrupted_run_resumes_to_the_same_parameters_and_loss_curve(
  tmp_path, flags, environment, reference, kill, steps_per_call
):
  """With steps_per_call=4 the reference is still the one-step-per-call run: the calls of
  four steps (and the single steps around checkpoints every 5) give the same bits."""
  workdir = tmp_path / 'run'
  stop_after = random.randint(8, NUM_STEPS // 2)
  flags = [*flags, f'--config.train.steps_per_call={steps_per_call}']
  process = _start(workdir, flags, environment)
  _wait_for_step(process, workdir, stop_after)
  process.send_signal(getattr(signal, kill))
  if kill == 'SIGKILL':
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert 'compiled and ran a call of 4 steps' in process.log_path.read_text()
  else:  # saves at the next step boundary and exits cleanly
    output = _finish(process)
    saved = int(output.split('SIGTERM: saved step ')[1].split()[0])
    assert stop_after <= saved < NUM_STEPS and _saved_steps(workdir)[-1] == saved
  assert NUM_STEPS not in _saved_steps(workdir), f'stopped after step {stop_after} too late'

  # The same command again; after SIGTERM, the workdir alone (its stored config) suffices.
  output = _finish(_start(workdir, flags, environment, with_config=kill == 'SIGKILL'))
  assert f'resumed from {workdir / "checkpoints"}' in output
  _assert_same_run(workdir, reference)


def test_unwritable_workdir_is_one_line_before_training(tmp_path, flags, capsys):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  code = cli.main(['pretrain', '--config', 'tiny', '--workdir', str(blocker / 'run'), *flags])
  out, err = capsys.readouterr()
  assert code == 1 and err.count('\n') == 1
  assert err.startswith(f'gpt-jax: error: workdir {blocker / "run"} is not writable')
  assert 'train step' not in out
