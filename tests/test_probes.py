"""Zero-shot probes during pretraining: log-spaced steps, kept checkpoints, and the same numbers
as `gpt-jax eval --zero_shot --step N` on those checkpoints."""

import json

import pytest
from helpers import prepared_local_corpus

from gpt_jax import cli, probes
from gpt_jax.errors import UserError
from gpt_jax.report import read_metrics

CONTEXTS = ['the quick brown fox', 'the lazy dog', 'over the lazy', 'brown fox jumps']


def _probe_config(tmp_path, kind_flags: dict, rows) -> str:
  """A task config file over a local validation file (as a user writes one)."""
  dev = tmp_path / f'{kind_flags["kind"]}.jsonl'
  dev.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  path = tmp_path / f'probe_{kind_flags["kind"]}.py'
  path.write_text(
    'from gpt_jax.configs.finetune import local\n\n\n'
    'def get_config():\n'
    '  config = local.get_config()\n'
    f'  config.task.update(validation={str(dev)!r}, **{kind_flags!r})\n'
    '  return config\n'
  )
  return str(path)


def test_probes_in_pretraining_equal_eval_zero_shot_on_the_kept_checkpoints(tmp_path, capsys):
  data = prepared_local_corpus(tmp_path)
  choices = _probe_config(
    tmp_path,
    {'kind': 'multiple_choice'},
    [
      {'context': c, 'choices': ['jumps over', 'dog the'], 'label': i % 2}
      for i, c in enumerate(CONTEXTS)
    ],
  )
  pronoun = _probe_config(
    tmp_path,
    {'kind': 'pronoun'},
    [
      {
        'sentence': f'{c} saw it jump',
        'pronoun': 'it',
        'candidates': ['the fox', 'a dog'],
        'label': i % 2,
      }
      for i, c in enumerate(CONTEXTS)
    ],
  )
  workdir = tmp_path / 'run'
  run = [
    'pretrain',
    '--config',
    'tiny',
    '--workdir',
    str(workdir),
    *data,
    '--config.model.n_layer=1',
    '--config.train.num_steps=6',
    '--config.train.batch_size=8',
    '--config.train.seq_len=32',
    '--config.train.eval_batches=1',
    '--config.train.steps_per_call=1',
    f'--config.train.zero_shot={choices},{pronoun}',
    '--config.checkpoint.keep=1',
    '--config.checkpoint.keep_log_spaced=True',
    '--config.mesh.fsdp=1',
    '--config.mesh.data=-1',
  ]
  assert cli.main(run) == 0
  logged = {
    r['step']: r for r in read_metrics(workdir / 'metrics.jsonl') if r['split'] == 'zero_shot'
  }
  assert sorted(logged) == [1, 2, 5, 6]
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['1', '2', '5', '6']
  for step in (2, 6):
    for config, name in ((choices, 'probe_multiple_choice'), (pronoun, 'probe_pronoun')):
      out = tmp_path / f'eval_{step}.json'
      flags = [
        'eval',
        '--workdir',
        str(workdir),
        '--zero_shot',
        '--config',
        config,
        '--step',
        str(step),
        '--out',
        str(out),
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
      ]
      assert cli.main(flags) == 0
      result = json.loads(out.read_text())['splits']['validation']
      assert logged[step][f'{name}_accuracy'] == pytest.approx(result['accuracy'], abs=1e-9)
      assert logged[step][f'{name}_accuracy_chance'] == result['chance'] == 0.5


def test_a_probe_config_without_a_probe_is_one_line(tmp_path):
  import ml_collections

  config = _probe_config(
    tmp_path, {'kind': 'classification', 'labels': 'a,b'}, [{'text': 'x', 'label': 'a'}]
  )
  train = ml_collections.ConfigDict(dict(zero_shot=config, zero_shot_every='log'))
  with pytest.raises(UserError, match=rf'^train.zero_shot: {config}: local has no zero-shot probe'):
    probes.PretrainingProbes(train, None, None, None, 32, 10)


def test_log_spaced_steps():
  assert probes.log_spaced_steps(120) == [1, 2, 5, 10, 20, 50, 100, 120]
  assert probes.probe_steps('3,30', 100) == [3, 30]
  with pytest.raises(UserError, match=r'^train.zero_shot_every=.*steps must lie in 1..100$'):
    probes.probe_steps('0,300', 100)
