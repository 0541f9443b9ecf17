"""Fine-tuning end to end: pretrain -> finetune with best checkpoint and GLUE-style predictions."""

import inspect
import json
import textwrap

import pytest

from gpt_jax import cli, finetune, glue
from gpt_jax.report import read_metrics
from gpt_jax.tasks.task import Task

TEXTS = [
  inspect.getdoc(obj)
  for module in (json, textwrap)
  for obj in vars(module).values()
  if inspect.getdoc(obj)
]
SMALL = [
  '--config.model.n_layer=1',
  '--config.model.n_embd=32',
  '--config.model.n_head=2',
  '--config.model.d_ff=128',
  '--config.model.n_ctx=32',
  '--config.model.vocab_size=512',
  '--config.mesh.fsdp=1',
  '--config.mesh.data=-1',
]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  root = tmp_path_factory.mktemp('pretrain')
  corpus = root / 'corpus.jsonl'
  corpus.write_text(''.join(json.dumps({'text': t}) + '\n' for t in TEXTS))
  data = [
    '--config.data.corpus=local_text',
    f'--config.data.text_glob={corpus}',
    '--config.data.validation_fraction=0.2',
    f'--config.data.data_dir={root / "data"}',
  ]
  assert cli.main(['tokenizer', '--config', 'tiny', *data, *SMALL]) == 0
  assert cli.main(['prepare', '--config', 'tiny', *data, *SMALL]) == 0
  assert (
    cli.main(
      [
        'pretrain',
        '--config',
        'tiny',
        '--workdir',
        str(root / 'run'),
        *data,
        *SMALL,
        '--config.train.seq_len=32',
        '--config.train.batch_size=8',
        '--config.train.num_steps=6',
        '--config.train.eval_every=6',
        '--config.train.eval_batches=1',
      ]
    )
    == 0
  )
  return root / 'run'


def _task_files(tmp_path):
  words = {'pos': 'returns a true value', 'neg': 'raises an error instead'}
  for split, n in (('train', 48), ('validation', 16), ('test', 10)):
    with open(tmp_path / f'{split}.jsonl', 'w') as f:
      for i in range(n):
        label = ('pos', 'neg')[i % 2]
        row = {'text': f'the call number {i} {words[label]}'}
        if split != 'test':
          row['label'] = label
        f.write(json.dumps(row) + '\n')
  return [
    '--config.task.name=local',
    '--config.task.kind=classification',
    f'--config.task.train={tmp_path / "train.jsonl"}',
    f'--config.task.validation={tmp_path / "validation.jsonl"}',
    f'--config.task.test={tmp_path / "test.jsonl"}',
    '--config.task.labels=neg,pos',
  ]


@pytest.mark.parametrize('random_init', [False, True])
def test_finetune_keeps_the_best_checkpoint_and_writes_predictions(
  pretrained, tmp_path, capsys, random_init
):
  workdir = tmp_path / 'finetune'
  code = cli.main(
    [
      'finetune',
      '--config',
      'configs/finetune/local.py',
      '--workdir',
      str(workdir),
      '--init',
      str(pretrained),
      *_task_files(tmp_path),
      '--config.train.batch_size=8',
      '--config.finetune.eval_batch_size=8',
      '--config.train.num_epochs=2.0',
      '--config.mesh.fsdp=1',
      '--config.mesh.data=-1',
      f'--config.finetune.random_init={random_init}',
    ]
  )
  out = capsys.readouterr().out
  assert code == 0
  assert ('random initialisation' in out) == random_init
  validation = [r for r in read_metrics(workdir / 'metrics.jsonl') if r['split'] == 'validation']
  assert [r['step'] for r in validation] == [6, 12]  # 48 examples / 8 = 6 steps per epoch
  train = [r for r in read_metrics(workdir / 'metrics.jsonl') if r['split'] == 'train']
  assert {'task_loss', 'lm_loss', 'loss'} <= set(train[-1])
  scores = [r['validation_accuracy'] for r in validation]
  best_step = validation[max(i for i, s in enumerate(scores) if s == max(scores))]['step']
  assert [p.name for p in (workdir / 'checkpoints').iterdir()] == [str(best_step)]
  rows = (workdir / 'local_test.tsv').read_text().splitlines()
  assert rows[0] == 'index\tprediction' and len(rows) == 11
  assert [int(r.split('\t')[0]) for r in rows[1:]] == list(range(10))
  assert {r.split('\t')[1] for r in rows[1:]} <= {'0', '1'}
  assert (workdir / 'tokenizer.model').is_file() and (workdir / 'curves.png').is_file()


def test_prediction_files_follow_glue_conventions(tmp_path):
  examples = [{'index': 7}, {'index': 3}, {'index': 10}]  # TFDS keeps GLUE's test in hash order

  def task(name, labels, regression=False):
    return Task(
      name=name,
      kind='entailment',
      labels=labels,
      metrics=('accuracy',),
      train=[],
      validation={},
      test={},
      regression=regression,
    )

  mnli = tmp_path / 'MNLI-m.tsv'
  glue.write_predictions(
    mnli, task('mnli', ('entailment', 'neutral', 'contradiction')), examples, [2, 0, 1]
  )
  assert mnli.read_text() == 'index\tprediction\n3\tentailment\n7\tcontradiction\n10\tneutral\n'
  sst2 = tmp_path / 'SST-2.tsv'
  glue.write_predictions(sst2, task('sst2', ('negative', 'positive')), examples, [1, 0, 0])
  assert sst2.read_text() == 'index\tprediction\n3\t0\n7\t1\n10\t0\n'
  stsb = tmp_path / 'STS-B.tsv'
  glue.write_predictions(stsb, task('stsb', None, regression=True), examples, [4.25, 0.5, 1.0])
  assert stsb.read_text() == 'index\tprediction\n3\t0.500\n7\t4.250\n10\t1.000\n'


@pytest.mark.parametrize(
  'init, message',
  [
    ('/no/such/dir', 'finetune.init=/no/such/dir is not a directory'),
    ('EMPTY', 'holds no weights gpt_jax can read'),
  ],
)
def test_bad_init_is_one_line_error(tmp_path, capsys, init, message):
  if init == 'EMPTY':
    init = str(tmp_path)
  code = cli.main(
    [
      'finetune',
      '--config',
      'finetune/stdlib_package',
      '--workdir',
      str(tmp_path / 'w'),
      '--init',
      init,
    ]
  )
  err = capsys.readouterr().err
  assert code == 1 and message in err and err.count('\n') == 1


def test_export_of_a_pretraining_workdir_loads_in_hugging_face(pretrained, tmp_path, capsys):
  import numpy as np
  import torch
  import transformers

  from gpt_jax import checkpoint
  from gpt_jax.model import GPT, ModelConfig

  out = tmp_path / 'hf'
  assert cli.main(['export', '--workdir', str(pretrained), '--out', str(out)]) == 0
  model, info = transformers.OpenAIGPTLMHeadModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values())  # no missing, unexpected or mismatched weights
  assert (out / 'tokenizer.model').is_file()
  params = checkpoint.load_params(pretrained)
  config = ModelConfig.from_config(checkpoint.load_config(pretrained).model)
  tokens = np.arange(12)[None]
  ours = np.asarray(GPT(config).apply({'params': params}, tokens))
  theirs = model.eval()(torch.tensor(tokens)).logits.detach().numpy()
  assert np.abs(ours - theirs).max() < 1e-5
  # A second export never overwrites the first.
  assert cli.main(['export', '--workdir', str(pretrained), '--out', str(out)]) == 1
  assert 'already exists' in capsys.readouterr().err


def test_finetune_stopped_at_a_step_boundary_resumes_to_the_same_weights(
  pretrained, tmp_path, monkeypatch
):
  import jax
  import numpy as np

  from gpt_jax import checkpoint

  def finetune_into(workdir):
    return cli.main(
      [
        'finetune',
        '--config',
        'finetune/local',
        '--workdir',
        str(workdir),
        '--init',
        str(pretrained),
        *_task_files(tmp_path),
        '--config.train.batch_size=8',
        '--config.finetune.eval_batch_size=8',
        '--config.train.num_epochs=2.0',
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
      ]
    )

  assert finetune_into(tmp_path / 'straight') == 0
  # A preemption notice (SIGTERM) during step 4 of 12: save that step, stop, exit 0.
  monkeypatch.setattr(checkpoint.PreemptionWatch, 'should_stop', lambda self, step: step == 4)
  assert finetune_into(tmp_path / 'stopped') == 0
  assert not (tmp_path / 'stopped' / 'summary.json').exists()
  assert (tmp_path / 'stopped' / 'checkpoints' / '4').is_dir()
  monkeypatch.undo()
  assert finetune_into(tmp_path / 'stopped') == 0
  straight, resumed = (checkpoint.load_params(tmp_path / run) for run in ('straight', 'stopped'))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  summaries = [
    json.loads((tmp_path / run / 'summary.json').read_text()) for run in ('straight', 'stopped')
  ]
  assert summaries[0]['best'] == summaries[1]['best'] and summaries[0]['skipped_steps'] == 0
  steps = [
    r['step']
    for r in read_metrics(tmp_path / 'stopped' / 'metrics.jsonl')
    if r['split'] == 'validation'
  ]
  assert steps == [6, 12]  # no record twice after the resume


@pytest.mark.parametrize('keep', [False, True])
def test_special_token_rows_are_fresh_draws_after_loading_our_checkpoint(pretrained, keep):
  import jax
  import numpy as np

  from gpt_jax import checkpoint
  from gpt_jax import config as config_lib

  config = config_lib.load_config(
    'finetune/local',
    [f'finetune.init={pretrained}', f'finetune.keep_special_rows={keep}', 'train.seed=3'],
  )
  weights = finetune.load_init(config)
  tokenizer = weights.tokenizer
  special = sorted([tokenizer.start_id, tokenizer.delimiter_id, tokenizer.extract_id])
  stored = np.asarray(checkpoint.load_params(pretrained)['tokens_embed']['embedding'])
  loaded = np.asarray(weights.params['tokens_embed']['embedding'])
  assert loaded.shape == stored.shape  # our tokenizer reserves the three: nothing appended
  others = [i for i in range(len(stored)) if i not in special]
  np.testing.assert_array_equal(loaded[others], stored[others])
  if keep:
    np.testing.assert_array_equal(loaded[special], stored[special])
  else:  # N(0, 0.02), drawn with the run's seed, in id order
    fresh = np.asarray(jax.random.normal(jax.random.key(3), (3, stored.shape[1]))) * 0.02
    np.testing.assert_allclose(loaded[special], fresh, rtol=1e-6)
    assert np.abs(loaded[special] - stored[special]).min() > 0


def _labelled_task_with_long_examples(tmp_path):
  """16 train, 8 validation and 6 labelled test examples; one of each split over max_len 16."""
  long = ' '.join(['returns'] * 60)
  for split, n in (('train', 16), ('validation', 8), ('test', 6)):
    with open(tmp_path / f'{split}.jsonl', 'w') as f:
      for i in range(n):
        label = ('pos', 'neg')[i % 2]
        f.write(json.dumps({'text': long if i == 3 else f'{label} {i}', 'label': label}) + '\n')
  return [
    '--config.task.name=local',
    '--config.task.kind=classification',
    *(
      f'--config.task.{split}={tmp_path / f"{split}.jsonl"}'
      for split in ('train', 'validation', 'test')
    ),
    '--config.task.labels=neg,pos',
    '--config.task.max_len=16',
  ]


def test_two_processes_count_each_truncated_example_once_and_score_the_test_split(
  pretrained, tmp_path, monkeypatch
):
  import sys

  import test_multiprocess
  from test_multiprocess import _free_port, _start_processes, _wait_for_success

  monkeypatch.setattr(test_multiprocess, 'TIMEOUT_S', 600)  # 2 compiles each, on shared cores

  workdir = tmp_path / 'run'
  address = f'127.0.0.1:{_free_port()}'
  outputs = _wait_for_success(
    _start_processes(
      lambda i: [
        sys.executable,
        '-m',
        'gpt_jax.cli',
        'finetune',
        '--config',
        'finetune/local',
        '--workdir',
        str(workdir),
        '--init',
        str(pretrained),
        *_labelled_task_with_long_examples(tmp_path),
        '--config.train.batch_size=8',
        '--config.finetune.eval_batch_size=8',
        '--config.train.num_epochs=3.0',
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
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
  summary = json.loads((workdir / 'summary.json').read_text())
  # Each split's long example counted once: 3 epochs, 3 evaluations, rows on either process.
  assert summary['truncated'] == {'validation': 1, 'train': 1, 'test': 1}, outputs[0][-2000:]
  rows = [line.split('\t') for line in (workdir / 'local_test.tsv').read_text().splitlines()[1:]]
  labels = [('pos', 'neg')[i % 2] for i in range(6)]
  predicted = [('neg', 'pos')[int(p)] for _, p in rows]
  assert [int(i) for i, _ in rows] == list(range(6))
  correct = sum(p == label for p, label in zip(predicted, labels))
  assert summary['test'] == {'test_accuracy': pytest.approx(correct / 6)}
  assert summary['majority_baseline'] == {'validation': 0.5, 'test': 0.5}
  test_records = [r for r in read_metrics(workdir / 'metrics.jsonl') if r['split'] == 'test']
  assert [r['test_accuracy'] for r in test_records] == [pytest.approx(correct / 6)]
