"""The gpt-jax command end to end, and its one-line errors."""

import json
import re

import pytest
from helpers import prepared_local_corpus

from gpt_jax import cli


def _run(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def test_help_lists_every_mode(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['--help'])
  out = capsys.readouterr().out
  assert exit_info.value.code == 0
  for mode in cli.MODES:
    assert mode in out
  assert '--config.<field>=<value>' in out


def test_pretrain_tiny_runs_end_to_end_with_falling_loss(capsys, tmp_path):
  data = prepared_local_corpus(tmp_path)
  code, out, err = _run(
    capsys,
    'pretrain',
    '--config',
    'tiny',
    '--workdir',
    str(tmp_path / 'run'),
    *data,
    '--config.train.num_steps=40',
    '--config.train.log_every=10',
    '--config.mesh.fsdp=1',
    '--config.mesh.data=-1',
    '--config.train.batch_size=8',
    '--config.optim.learning_rate=1e-3',
  )
  assert code == 0, err
  losses = [float(x) for x in re.findall(r'train step \d+ .*?\| loss ([\d.]+)', out)]
  assert len(losses) == 4 and losses[-1] < losses[0] - 0.5
  assert re.search(r'tokens_per_s [\d,]+', out) and 'mfu' in out
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').open()]
  assert {r['split'] for r in records} == {'train', 'eval'}


@pytest.mark.parametrize(
  'argv, message',
  [
    (
      ['pretrain', '--config', 'tiny', '--workdir', 'x', '--config.model.n_layr=2'],
      'unknown config field model.n_layr; did you mean n_layer?',
    ),
    (
      ['pretrain', '--config', 'tiny', '--workdir', 'x', '--config.model.n_layer=two'],
      'config field model.n_layer expects a int',
    ),
    (
      ['pretrain', '--config', 'no_such_config.py', '--workdir', 'x'],
      'config file no_such_config.py not found',
    ),
    (
      [
        'pretrain',
        '--config',
        'tiny',
        '--workdir',
        'x',
        '--config.data.corpus=local_text',
        '--config.data.text_glob=/no/such',
      ],
      "data.text_glob='/no/such': no such file or directory",
    ),
    (
      ['pretrain', '--config', 'tiny', '--workdir', 'x', '--config.data.data_dir=empty'],
      'no tokenizer at empty/gpt_jax_tokenizers/',
    ),
  ],
)
def test_user_errors_are_one_line_and_exit_nonzero(capsys, tmp_path, monkeypatch, argv, message):
  monkeypatch.chdir(tmp_path)
  code, _, err = _run(capsys, *argv)
  assert code == 1
  assert err.startswith('gpt-jax: error: ') and message in err
  assert err.count('\n') == 1
  assert not (tmp_path / 'x').exists()  # a failed start leaves no workdir behind


def test_a_config_file_python_cannot_import_is_a_one_line_error(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'notes.txt').write_text('def get_config():\n  return None\n')
  code, _, err = _run(capsys, 'pretrain', '--config', 'notes.txt', '--workdir', 'x')
  assert code == 1
  assert err == 'gpt-jax: error: config file notes.txt is not a Python file: give a .py file\n'


def test_version_and_mode_help_name_what_a_mode_reads(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['--version'])
  assert exit_info.value.code == 0 and re.fullmatch(
    r'gpt-jax \d+\.\d+\.\d+\n', capsys.readouterr().out
  )
  for mode, sections in (
    ('pretrain', 'model, train, optim, data, mesh, checkpoint'),
    ('tokenizer', 'model.vocab_size, data'),
  ):
    with pytest.raises(SystemExit):
      cli.main([mode, '--help'])
    out = capsys.readouterr().out
    assert f'config sections read: {sections}' in out and '--print_config' in out
  for mode in ('sample', 'export'):  # their model comes from --workdir: no overrides offered
    with pytest.raises(SystemExit):
      cli.main([mode, '--help'])
    assert '--config.<field>' not in capsys.readouterr().out


def test_print_config_shows_the_overridden_config_and_runs_nothing(capsys, tmp_path):
  code, out, _ = _run(
    capsys,
    'pretrain',
    '--config',
    'tiny',
    '--print_config',
    '--config.model.n_layer=3',
    '--workdir',
    str(tmp_path / 'never'),
  )
  assert code == 0 and 'n_layer: 3' in out and 'corpus: stdlib_docs' in out
  code, out, _ = _run(
    capsys, 'finetune', '--config', 'finetune/sst2', '--print_config', '--init', '/some/run'
  )
  assert code == 0 and 'init: /some/run' in out and 'learning_rate: 6.25e-05' in out
  assert not (tmp_path / 'never').exists()
