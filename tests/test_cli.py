"""The gpt-jax command end to end, and its one-line errors."""

import json
import re

import pytest

from gpt_jax import cli
from helpers import prepared_local_corpus


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
      capsys, 'pretrain', '--config', 'tiny', '--workdir', str(tmp_path / 'run'), *data,
      '--config.train.num_steps=40', '--config.train.log_every=10',
      '--config.mesh.fsdp=1', '--config.mesh.data=-1', '--config.train.batch_size=8',
      '--config.optim.learning_rate=1e-3')
  assert code == 0, err
  losses = [float(x) for x in re.findall(r'train step \d+ .*?\| loss ([\d.]+)', out)]
  assert len(losses) == 4 and losses[-1] < losses[0] - 0.5
  assert re.search(r'tokens_per_s [\d,]+', out) and 'mfu' in out
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').open()]
  assert {r['split'] for r in records} == {'train', 'eval'}


@pytest.mark.parametrize('argv, message', [
    (['pretrain', '--config', 'tiny', '--workdir', 'x', '--config.model.n_layr=2'],
     'unknown config field model.n_layr; did you mean n_layer?'),
    (['pretrain', '--config', 'tiny', '--workdir', 'x', '--config.model.n_layer=two'],
     'config field model.n_layer expects a int'),
    (['pretrain', '--config', 'no_such_config.py', '--workdir', 'x'],
     'config file no_such_config.py not found'),
    (['pretrain', '--config', 'tiny', '--workdir', 'x', '--config.data.corpus=local_text',
      '--config.data.text_glob=/no/such'], "data.text_glob='/no/such': no such file or directory"),
    (['pretrain', '--config', 'tiny', '--workdir', 'x', '--config.data.data_dir=empty'],
     'no tokenizer at empty/gpt_jax_tokenizers/'),
])
def test_user_errors_are_one_line_and_exit_nonzero(capsys, tmp_path, monkeypatch, argv, message):
  monkeypatch.chdir(tmp_path)
  code, _, err = _run(capsys, *argv)
  assert code == 1
  assert err.startswith('gpt-jax: error: ') and message in err
  assert err.count('\n') == 1
  assert not (tmp_path / 'x').exists()  # a failed start leaves no workdir behind
