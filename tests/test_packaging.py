"""The wheel stands on its own: built from the repo, it finds its configs and trains from anywhere."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(argv, cwd, env):
  result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result.stdout


def test_wheel_runs_tokenizer_prepare_and_pretrain_from_an_empty_directory(tmp_path):
  _run(
    [
      sys.executable,
      '-m',
      'pip',
      'wheel',
      '--no-deps',
      '--no-build-isolation',
      '--quiet',
      '-w',
      str(tmp_path / 'dist'),
      str(REPO),
    ],
    tmp_path,
    os.environ,
  )
  (wheel,) = (tmp_path / 'dist').glob('gpt_jax-*.whl')
  _run(
    [
      sys.executable,
      '-m',
      'pip',
      'install',
      '--no-deps',
      '--quiet',
      '--target',
      str(tmp_path / 'site'),
      str(wheel),
    ],
    tmp_path,
    os.environ,
  )
  # The installed wheel, not this checkout: it comes first on the path, and the work
  # happens in an empty directory outside the repository.
  env = {**os.environ, 'PYTHONPATH': str(tmp_path / 'site'), 'JAX_PLATFORMS': 'cpu'}
  empty = tmp_path / 'empty'
  empty.mkdir()
  where = _run(
    [sys.executable, '-c', 'import gpt_jax.configs.tiny as c; print(c.__file__)'], empty, env
  )
  assert where.startswith(str(tmp_path / 'site'))
  data = ['--config.data.data_dir=data', '--config.data.tokenizer_max_bytes=300000']
  gpt_jax = [sys.executable, '-m', 'gpt_jax.cli']
  _run([*gpt_jax, 'tokenizer', '--config', 'tiny', *data], empty, env)
  _run([*gpt_jax, 'prepare', '--config', 'tiny', *data], empty, env)
  out = _run(
    [
      *gpt_jax,
      'pretrain',
      '--config',
      'tiny',
      '--workdir',
      'run',
      *data,
      '--config.train.num_steps=5',
      '--config.train.eval_batches=1',
    ],
    empty,
    env,
  )
  assert 'done: eval loss' in out
  assert (empty / 'run' / 'checkpoints' / '5').is_dir()
