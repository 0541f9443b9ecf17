"""`gpt-jax eval` on a fine-tuning workdir: the task's metrics on any split or file, equal to
what the fine-tuning run itself measured with its best checkpoint."""

import json
import shutil

import pytest
from helpers import random_lm_dir
from test_finetune import _task_files

from gpt_jax import cli


def test_eval_of_a_finetuned_workdir_repeats_its_best_validation_score(tmp_path, capsys):
  model = random_lm_dir(tmp_path / 'model', scale=1.0)
  workdir = tmp_path / 'ft'
  assert (
    cli.main(
      [
        'finetune',
        '--config',
        'configs/finetune/local.py',
        '--workdir',
        str(workdir),
        '--init',
        str(model),
        *_task_files(tmp_path),
        '--config.task.max_len=32',
        '--config.train.batch_size=8',
        '--config.finetune.eval_batch_size=8',
        '--config.train.num_epochs=2.0',
        '--config.optim.learning_rate=1e-3',
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
      ]
    )
    == 0
  )
  summary = json.loads((workdir / 'summary.json').read_text())

  assert cli.main(['eval', '--workdir', str(workdir)]) == 0
  result = json.loads((workdir / 'eval.json').read_text())
  assert result['best_step'] == summary['best_step']
  assert result['splits']['validation']['accuracy'] == pytest.approx(
    summary['best']['validation_accuracy']
  )

  copy = shutil.copy(tmp_path / 'validation.jsonl', tmp_path / 'dev_copy.jsonl')
  assert (
    cli.main(
      [
        'eval',
        '--workdir',
        str(workdir),
        '--task_file',
        str(copy),
        '--out',
        str(tmp_path / 'file.json'),
      ]
    )
    == 0
  )
  from_file = json.loads((tmp_path / 'file.json').read_text())
  assert from_file['splits'] == {'dev_copy.jsonl': result['splits']['validation']}

  cases = [
    (['--split', 'test'], 'test has no labels'),
    (['--split', 'nope'], "has the splits ['test', 'validation']"),
    (['--config', 'finetune/sst2'], 'brings its own task config'),
  ]
  capsys.readouterr()
  for flags, message in cases:
    assert cli.main(['eval', '--workdir', str(workdir), *flags]) == 1
    error = capsys.readouterr().err
    assert error.startswith('gpt-jax: error: ') and message in error, error
