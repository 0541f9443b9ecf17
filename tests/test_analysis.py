"""`gpt-jax analysis`: table 5 recomputed from run summaries, figure 2 drawn, mixed runs refused."""

import json

import pytest

from gpt_jax import cli
from gpt_jax.analysis import ablations

# (variant, task, lm_coef, n_transfer, arch, best validation scores)
RUNS = [
  ('full', 'cola', 0.5, 12, 'transformer', {'validation_mcc': 0.40, 'validation_accuracy': 0.7}),
  (
    'full',
    'mnli',
    0.5,
    12,
    'transformer',
    {'validation_matched_accuracy': 0.80, 'validation_mismatched_accuracy': 0.70},
  ),
  ('full', 'mrpc', 0.5, 12, 'transformer', {'validation_f1': 0.85, 'validation_accuracy': 0.8}),
  ('no_pretraining', 'cola', 0.5, -1, 'transformer', {'validation_mcc': 0.10}),
  ('no_aux_lm', 'cola', 0.0, 12, 'transformer', {'validation_mcc': 0.45}),
  ('lstm', 'cola', 0.5, 'all', 'lstm', {'validation_mcc': 0.30}),
]


def _write_run(directory, task, lm_coef, n_transfer, arch, best, init='/pretrained') -> str:
  directory.mkdir(parents=True)
  summary = {
    'task': task,
    'init': f'checkpoint in {init}',
    'n_transfer': n_transfer,
    'model_arch': arch,
    'lm_coef': lm_coef,
    'best': best,
  }
  (directory / 'summary.json').write_text(json.dumps(summary))
  return str(directory)


def test_ablation_table_is_the_papers_metric_per_task_and_their_mean(tmp_path, capsys):
  dirs = [_write_run(tmp_path / f'run{i}', *run[1:]) for i, run in enumerate(RUNS)]
  assert cli.main(['analysis', 'ablations', '--runs', *dirs, '--out', str(tmp_path / 'out')]) == 0
  result = json.loads((tmp_path / 'out' / 'ablations.json').read_text())
  assert result['tasks'] == ['cola', 'mrpc', 'mnli']  # the paper's column order
  full = result['rows']['full']
  assert full == pytest.approx({'cola': 40.0, 'mnli': 75.0, 'mrpc': 85.0, 'avg': 200.0 / 3})
  assert result['rows']['no_pretraining'] == pytest.approx({'cola': 10.0, 'avg': 10.0})
  assert result['rows']['no_aux_lm']['cola'] == pytest.approx(45.0)
  assert result['rows']['lstm']['cola'] == pytest.approx(30.0)
  assert result['paper']['full']['avg'] == 74.7 and result['paper']['no_pretraining']['avg'] == 59.9
  out = capsys.readouterr().out
  assert '| Transformer w/ aux LM (full) | 66.7 | 40.0 | 85.0 | 75.0 |' in out
  assert '| (paper) Transformer w/ aux LM (full) | 74.7 | 45.4 | 82.3 | 81.8 |' in out
  assert (
    ablations.PAPER_TABLE['lstm']['avg'] == 69.1
    and ablations.PAPER_TABLE['no_aux_lm']['avg'] == 75.0
  )


def test_layers_figure_from_finished_runs(tmp_path, capsys):
  root = tmp_path / 'sweep'
  for count, score in ((0, 0.5), (1, 0.6), (2, 0.7)):
    best = {'validation_accuracy': score, 'train_accuracy': score + 0.1}
    _write_run(root / f'n_transfer_{count}', 'stdlib_package', 0.5, count, 'transformer', best)
  flags = [
    'analysis',
    'layers',
    '--config',
    'finetune/stdlib_package',
    '--init',
    '/pretrained',
    '--workdir',
    str(root),
    '--layers',
    '0:2',
    '--out',
    str(tmp_path / 'out'),
  ]
  assert cli.main(flags) == 0
  data = json.loads((tmp_path / 'out' / 'layers.json').read_text())
  assert data['layers'] == [0, 1, 2]
  assert data['dev'] == pytest.approx([50.0, 60.0, 70.0])
  assert data['train'] == pytest.approx([60.0, 70.0, 80.0])
  assert (tmp_path / 'out' / 'layers.png').stat().st_size > 1000


@pytest.mark.parametrize(
  'second, message',
  [
    (
      ('full', 'sst2', 0.5, 12, 'lstm', {'validation_accuracy': 0.9}),
      'ablation row full: the runs differ in arch (lstm, transformer)',
    ),
    (
      ('full', 'cola', 0.5, 12, 'transformer', {'validation_mcc': 0.2}),
      'ablation row full has two runs of cola',
    ),
  ],
)
def test_an_analysis_over_mixed_runs_is_one_line(tmp_path, capsys, second, message):
  dirs = [
    f'full={_write_run(tmp_path / name, *run[1:])}' for name, run in (('a', RUNS[0]), ('b', second))
  ]
  assert cli.main(['analysis', 'ablations', '--runs', *dirs, '--out', str(tmp_path / 'o')]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'gpt-jax: error: {message}') and err.count('\n') == 1


def test_layers_over_runs_of_different_tasks_is_one_line(tmp_path, capsys):
  root = tmp_path / 'sweep'
  _write_run(root / 'n_transfer_0', 'cola', 0.5, 0, 'transformer', {'validation_mcc': 0.1})
  _write_run(root / 'n_transfer_1', 'sst2', 0.5, 1, 'transformer', {'validation_accuracy': 0.9})
  flags = [
    'analysis',
    'layers',
    '--config',
    'finetune/cola',
    '--init',
    '/pretrained',
    '--workdir',
    str(root),
    '--layers',
    '0:1',
    '--out',
    str(tmp_path / 'o'),
  ]
  assert cli.main(flags) == 1
  err = capsys.readouterr().err
  assert (
    err
    == 'gpt-jax: error: analysis layers: the runs differ in task (cola, sst2); give runs of one\n'
  )
