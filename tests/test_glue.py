"""GLUE submissions: fine-tune two registry tasks, zip their predictions, name what is missing."""

import os
import subprocess
import sys
import zipfile

import pytest
import xla_env
from test_finetune import SMALL, pretrained  # noqa: F401  the fixture
from test_tasks_registry import data_dir  # noqa: F401  the fixture

from gpt_jax import cli, glue


def _rows(text: str) -> list[list[str]]:
  lines = text.splitlines()
  assert lines[0] == 'index\tprediction'
  return [line.split('\t') for line in lines[1:]]


def test_glue_zip_of_two_tasks_holds_their_files_in_idx_order_and_names_the_rest(
  pretrained,  # noqa: F811
  data_dir,  # noqa: F811
  tmp_path,
  capsys,
):
  # 4 devices in a process of its own: the prepared tasks have 4 and 5 training examples.
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': xla_env.cpu_devices(4),
  }
  workdirs = []
  for task in ('sst2', 'mnli'):
    workdirs.append(str(tmp_path / task))
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'gpt_jax.cli',
        'finetune',
        '--config',
        f'finetune/{task}',
        '--workdir',
        workdirs[-1],
        '--init',
        str(pretrained),
        f'--config.task.data_dir={data_dir}',
        '--config.train.batch_size=4',
        '--config.finetune.eval_batch_size=4',
        '--config.train.num_epochs=1.0',
        '--config.task.max_len=16',
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
      ],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
  out = tmp_path / 'glue.zip'
  assert cli.main(['glue-submission', '--workdirs', *workdirs, '--out', str(out)]) == 1
  err = capsys.readouterr().err
  assert 'CoLA.tsv (fine-tune cola)' in err and 'RTE.tsv (fine-tune rte)' in err
  assert not out.exists()  # incomplete: nothing written without --partial

  assert cli.main(['glue-submission', '--workdirs', *workdirs, '--out', str(out), '--partial']) == 0
  with zipfile.ZipFile(out) as archive:
    files = {name: archive.read(name).decode() for name in archive.namelist()}
  assert sorted(files) == ['AX.tsv', 'MNLI-m.tsv', 'MNLI-mm.tsv', 'SST-2.tsv', 'WNLI.tsv']
  expected_rows = {
    'SST-2.tsv': 8,
    'MNLI-m.tsv': 1,
    'MNLI-mm.tsv': 1,
    'AX.tsv': 3,
    'WNLI.tsv': glue.WNLI_TEST_EXAMPLES,
  }
  for name, text in files.items():
    rows = _rows(text)
    assert [int(index) for index, _ in rows] == list(range(expected_rows[name])), name
  assert {p for _, p in _rows(files['SST-2.tsv'])} <= {'0', '1'}
  nli = {'entailment', 'neutral', 'contradiction'}
  assert {p for name in ('MNLI-m.tsv', 'AX.tsv') for _, p in _rows(files[name])} <= nli
  assert {p for _, p in _rows(files['WNLI.tsv'])} == {'0'}
  missing = set(glue.GLUE_FILES) - set(files)
  assert missing == {'CoLA.tsv', 'MRPC.tsv', 'STS-B.tsv', 'QQP.tsv', 'QNLI.tsv', 'RTE.tsv'}
  out_text = capsys.readouterr()
  assert all(name in out_text.out + out_text.err for name in missing)


def test_complete_set_of_files_makes_a_complete_upload(tmp_path):
  for i, name in enumerate(n for n, task in glue.GLUE_FILES.items() if task):
    run = tmp_path / f'run{i % 3}'
    run.mkdir(exist_ok=True)
    (run / name).write_text('index\tprediction\n0\t1\n')
  out, missing = glue.make_submission(
    [tmp_path / f'run{i}' for i in range(3)], tmp_path / 'all.zip'
  )
  assert missing == []
  with zipfile.ZipFile(out) as archive:
    assert sorted(archive.namelist()) == sorted(glue.GLUE_FILES)
  (tmp_path / 'run2' / 'SST-2.tsv').write_text('index\tprediction\n')
  with pytest.raises(Exception, match='SST-2.tsv is in both'):
    glue.make_submission([tmp_path / f'run{i}' for i in range(3)], tmp_path / 'again.zip')
