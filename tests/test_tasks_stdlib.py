"""The offline default tasks against the standard library's own files, load_task, finetune configs.

Every label is checked against the source files, read again here with `ast`
(not through gpt_jax): a 'continues' premise and hypothesis stand next to each
other in one docstring, 'same' texts are docstrings of one module, a package
label is the package of the file the text is in.
"""

import ast
import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import sklearn.dummy
from test_tasks_registry import SST2_DEV, SST2_TRAIN, _prepare, _write_tsv

from gpt_jax.config import load_config
from gpt_jax.configs import gpt1
from gpt_jax.data.builders import stdlib_docs, text_corpus
from gpt_jax.data.tokenizer import train_tokenizer
from gpt_jax.errors import UserError
from gpt_jax.tasks import load, registry, stdlib, transforms
from gpt_jax.tasks import metrics as task_metrics

NAMES = tuple(stdlib.DEFAULT_TASKS)
SPLITS = ('train', 'validation', 'test')
FINETUNE_CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'finetune'


@pytest.fixture(scope='module')
def all_tasks():
  return {name: stdlib.load_default_task(name) for name in NAMES}


def _splits(task):
  return {
    'train': task.train,
    'validation': task.validation['validation'],
    'test': task.test['test'],
  }


@functools.cache
def _docstrings(module: str) -> tuple[str, ...]:
  """The module's docstrings as one line each (whitespace collapsed), read independently."""
  tree = ast.parse((stdlib_docs.stdlib_root() / module).read_bytes())
  nodes = [
    node
    for node in ast.walk(tree)
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
  ]
  return tuple(' '.join(doc.split()) for doc in map(ast.get_docstring, nodes) if doc)


def _in_module(text: str, module: str) -> bool:
  return any(text in doc for doc in _docstrings(module))


def _texts(example) -> list[str]:
  return [
    text
    for field in ('text', 'premise', 'hypothesis', 'text_a', 'text_b', 'context')
    if field in example
    for text in [example[field]]
  ] + list(example.get('choices', ()))


def _modules(example) -> set[str]:
  return {
    module
    for value in example['source'].values()
    for module in ([value] if isinstance(value, str) else value)
  }


def test_prose_runs_keep_sentences_that_follow_each_other():
  docstring = (
    'Return the frobnicated value of x. It never fails on integers.\n\n'
    'Example::\n\n    frob(3)\n\n'
    'Floats are rounded first, as the paper says. Short one.\n'
    'Then they are frobnicated like integers.\n\n'
    '>>> frob(2.5)\n3\n\n'
    'Strings raise TypeError in every case.'
  )
  assert stdlib.prose_runs(docstring) == (
    ('Return the frobnicated value of x.', 'It never fails on integers.'),
    ('Floats are rounded first, as the paper says.',),  # 'Short one.' (2 words) ends the run
    ('Then they are frobnicated like integers.',),  # the doctest is not prose: it ends the run
    ('Strings raise TypeError in every case.',),
  )


def test_same_seed_same_examples_and_the_split_does_not_depend_on_it(all_tasks):
  for name in NAMES:
    again = stdlib.load_default_task(name, seed=0)
    other = stdlib.load_default_task(name, seed=1)
    modules = {
      split: set().union(*map(_modules, examples))
      for split, examples in _splits(all_tasks[name]).items()
    }
    for split, examples in _splits(all_tasks[name]).items():
      assert _splits(again)[split] == examples
      assert _splits(other)[split] != examples
      # Seed 1 draws other examples, but each split from the same modules.
      other_modules = set().union(*map(_modules, _splits(other)[split]))
      assert all(
        not other_modules & modules[elsewhere] for elsewhere in SPLITS if elsewhere != split
      ), (name, split)


_DIGEST = """
import hashlib, json
from gpt_jax.tasks import stdlib
task = stdlib.load_default_task('stdlib_next_sentence')
splits = [task.train, task.validation['validation'], task.test['test']]
print(hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest())
"""


def test_examples_do_not_depend_on_the_process_hash_seed(all_tasks):
  task = all_tasks['stdlib_next_sentence']
  splits = [task.train, task.validation['validation'], task.test['test']]
  expected = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()
  out = subprocess.run(
    [sys.executable, '-c', _DIGEST],
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, 'PYTHONHASHSEED': '12345'},
  )
  assert out.stdout.strip() == expected


def test_splits_are_disjoint_by_module_and_share_no_text(all_tasks):
  for name, task in all_tasks.items():
    modules = {
      split: set().union(*map(_modules, examples)) for split, examples in _splits(task).items()
    }
    texts = {
      split: {text for e in examples for text in _texts(e)}
      for split, examples in _splits(task).items()
    }
    for a, b in (('train', 'validation'), ('train', 'test'), ('validation', 'test')):
      assert not modules[a] & modules[b], (name, a, b)
      assert not texts[a] & texts[b], (name, a, b)
    if name != 'stdlib_package':  # held out like pretraining holds documents out
      assert all(text_corpus.is_validation(m, 0.1) for m in modules['test'])
      assert all(
        text_corpus.is_validation(m, 0.2) and not text_corpus.is_validation(m, 0.1)
        for m in modules['validation']
      )
      assert not any(text_corpus.is_validation(m, 0.2) for m in modules['train'])


def test_package_labels_come_from_the_files(all_tasks):
  task = all_tasks['stdlib_package']
  assert task.kind == 'classification' and task.labels == stdlib.PACKAGES
  for split, examples in _splits(task).items():
    for example in examples:
      module = example['source']['text']
      assert task.labels[example['label']] == module.split('/')[0]
      assert _in_module(example['text'], module)
      assert len(example['text'].split()) <= stdlib.MAX_WORDS
    counts = np.bincount([e['label'] for e in examples], minlength=len(task.labels))
    assert counts.min() > 0 and counts.max() <= 4 * counts.min(), (split, counts)  # balanced-ish


def test_continuation_labels_come_from_the_files(all_tasks):
  task = all_tasks['stdlib_continuation']
  assert task.kind == 'entailment' and task.labels == ('continues', 'unrelated')
  for split, examples in _splits(task).items():
    for example in examples:
      premise, hypothesis = example['premise'], example['hypothesis']
      source = example['source']
      assert _in_module(premise, source['premise'])
      assert _in_module(hypothesis, source['hypothesis'])
      follows = _in_module(f'{premise} {hypothesis}', source['premise'])
      if task.labels[example['label']] == 'continues':
        assert follows and source['hypothesis'] == source['premise']
      else:
        assert not follows and source['hypothesis'] != source['premise']
    assert np.ptp(np.bincount([e['label'] for e in examples])) <= 1, split  # 50/50


def test_same_module_labels_come_from_the_files(all_tasks):
  task = all_tasks['stdlib_same_module']
  assert task.kind == 'similarity' and task.labels == ('different', 'same')
  for split, examples in _splits(task).items():
    for example in examples:
      a, b = example['source']['text_a'], example['source']['text_b']
      assert _in_module(example['text_a'], a) and _in_module(example['text_b'], b)
      assert example['text_a'] != example['text_b']
      assert (a == b) == (task.labels[example['label']] == 'same')
    assert np.ptp(np.bincount([e['label'] for e in examples])) <= 1, split


def test_next_sentence_answers_come_from_the_files(all_tasks):
  task = all_tasks['stdlib_next_sentence']
  assert task.kind == 'multiple_choice' and task.labels is None and task.num_outputs == 1
  for split, examples in _splits(task).items():
    for example in examples:
      context, choices, label = example['context'], example['choices'], example['label']
      modules = example['source']['choices']
      assert len(choices) == 4 == len(set(choices))
      assert _in_module(f'{context} {choices[label]}', example['source']['context'])
      assert modules[label] == example['source']['context']
      for k, (choice, module) in enumerate(zip(choices, modules)):
        assert _in_module(choice, module)
        if k != label:
          assert module != example['source']['context']
    assert np.ptp(np.bincount([e['label'] for e in examples], minlength=4)) <= 1, split


def test_sizes_caps_and_index(all_tasks):
  for name, task in all_tasks.items():
    sizes = {split: len(examples) for split, examples in _splits(task).items()}
    assert sizes['train'] >= 900 and min(sizes['validation'], sizes['test']) >= 100, (name, sizes)
    for examples in _splits(task).values():
      assert [e['index'] for e in examples] == list(range(len(examples)))
    capped = stdlib.load_default_task(name, max_train_examples=50, max_eval_examples=20)
    assert capped.train == [dict(e, index=i) for i, e in enumerate(task.train[:50])]
    assert len(capped.validation['validation']) == len(capped.test['test']) == 20


def test_majority_baseline_matches_sklearn(all_tasks):
  for task in all_tasks.values():
    labels = [e['label'] for e in task.validation['validation']]
    dummy = sklearn.dummy.DummyClassifier(strategy='most_frequent').fit(
      np.zeros((len(labels), 1)), labels
    )
    expected = dummy.score(np.zeros((len(labels), 1)), labels)
    assert task_metrics.majority_baseline(task) == pytest.approx(expected)
  assert task_metrics.majority_baseline(all_tasks['stdlib_continuation']) == 0.5


def test_every_example_encodes_with_the_project_tokenizer(all_tasks, tmp_path):
  corpus = [
    text for task in all_tasks.values() for e in task.validation['validation'] for text in _texts(e)
  ]
  tokenizer = train_tokenizer(corpus, tmp_path / 'bpe.model', vocab_size=512, max_bytes=10**6)
  for name, task in all_tasks.items():
    examples = task.validation['validation']
    batch, _ = transforms.encode_examples(task.kind, examples, tokenizer, max_len=128)
    sequences = {'similarity': (2,), 'multiple_choice': (4,)}.get(task.kind, ())
    assert batch['tokens'].shape == (len(examples), *sequences, 128)
    np.testing.assert_array_equal(batch['label'], [e['label'] for e in examples])
    extract = np.take_along_axis(batch['tokens'], batch['extract_index'][..., None], -1)
    assert (extract == tokenizer.extract_id).all()
    # Texts are capped at MAX_WORDS words: even this small vocabulary fits them in 256 tokens.
    assert transforms.encode_examples(task.kind, examples, tokenizer, max_len=256)[1] <= 0.02 * len(
      examples
    ), name
  first = all_tasks['stdlib_continuation'].validation['validation'][0]
  out = transforms.encode_example('entailment', first, tokenizer, 128)
  ids = [
    tokenizer.start_id,
    *tokenizer.encode(first['premise']),
    tokenizer.delimiter_id,
    *tokenizer.encode(first['hypothesis']),
    tokenizer.extract_id,
  ]
  np.testing.assert_array_equal(out['tokens'][: len(ids)], ids)


def test_unknown_default_task_and_empty_split():
  with pytest.raises(UserError, match='unknown default task'):
    stdlib.load_default_task('stdlib_nope')
  with pytest.raises(UserError, match='no validation examples'):
    stdlib.load_default_task('stdlib_package', max_eval_examples=0)


# ---------------------------------------------------------------------------
# load_task and the finetune configs.


def _task_config(name, **fields):
  config = load_config(str(FINETUNE_CONFIGS / 'base.py')).task
  config.update(name=name, **fields)
  return config


def test_load_task_reads_a_registry_task_by_either_name(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  from tensorflow_datasets.text import glue

  _prepare(
    glue.Glue,
    str(tmp_path),
    config='sst2',
    splits={
      split: dict(
        data_file=_write_tsv(src / f'{split}.tsv', ['sentence', 'label'], rows),
        split='train' if split == 'train' else 'dev',
      )
      for split, rows in (('train', SST2_TRAIN), ('validation', SST2_DEV), ('test', SST2_DEV))
    },
  )
  for name in ('sst2', 'glue/sst2'):
    task = load.load_task(_task_config(name, data_dir=str(tmp_path)))
    assert task.name == 'sst2' and task.labels == ('negative', 'positive')
    validation = task.validation['validation']
    assert sorted((e['text'], e['label']) for e in validation) == sorted(SST2_DEV)


def test_load_task_reads_local_files(tmp_path):
  rows = [
    {'premise': 'a b', 'hypothesis': 'c', 'label': 'yes'},
    {'premise': 'd', 'hypothesis': 'e f', 'label': 'no'},
  ]
  path = tmp_path / 'train.jsonl'
  path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  config = load_config(
    str(FINETUNE_CONFIGS / 'local.py'),
    [
      'task.kind=entailment',
      f'task.train={path}',
      f'task.validation={path}',
      'task.labels=yes, no',
    ],
  )
  task = load.load_task(config.task)
  assert task.kind == 'entailment' and task.labels == ('yes', 'no')  # the config's order
  assert [(e['premise'], e['label']) for e in task.train] == [('a b', 0), ('d', 1)]
  assert task.test == {}
  with pytest.raises(UserError, match='task.name=local needs task.train, task.validation'):
    load.load_task(load_config(str(FINETUNE_CONFIGS / 'local.py')).task)


def test_load_task_builds_a_default_task(all_tasks):
  config = load_config(
    str(FINETUNE_CONFIGS / 'stdlib_same_module.py'),
    ['task.max_train_examples=11', 'task.max_eval_examples=7', 'task.seed=0'],
  )
  task = load.load_task(config.task)
  expected = all_tasks['stdlib_same_module']
  assert task.train == expected.train[:11]
  assert task.test['test'] == expected.test['test'][:7]
  # From the base config, without the default tasks' own fields: their defaults.
  assert load.load_task(_task_config('stdlib_package')).train == all_tasks['stdlib_package'].train


def test_load_task_names_every_option_for_an_unknown_name():
  with pytest.raises(UserError, match="unknown task.name 'sst3'.*sst2.*stdlib_package.*local"):
    load.load_task(_task_config('sst3'))


def test_every_finetune_config_loads_with_the_paper_recipe():
  paths = sorted(p for p in FINETUNE_CONFIGS.glob('*.py') if p.stem != '__init__')
  names = {path.stem for path in paths}
  assert names >= {'base', 'local', *registry.TFDS_TASKS, *stdlib.DEFAULT_TASKS}
  pretraining = gpt1.get_config()
  for path in paths:
    config = load_config(str(path))
    assert isinstance(config.task, ml_collections.ConfigDict)
    assert (
      config.optim.learning_rate,
      config.optim.schedule,
      config.optim.warmup_fraction,
      config.optim.weight_decay,
    ) == (6.25e-5, 'linear', 0.002, 0.01)
    assert (config.train.batch_size, config.train.num_epochs, config.train.num_steps) == (
      32,
      3.0,
      -1,
    )
    assert (
      config.finetune.init,
      config.finetune.lm_coef,
      config.finetune.clf_pdrop,
      config.finetune.eval_batch_size,
    ) == ('', 0.5, 0.1, 64)
    assert (config.task.max_len, config.task.max_train_examples) == (-1, -1)
    assert config.model.to_dict() == pretraining.model.to_dict()
    if path.stem not in ('base', 'local'):
      assert config.task.name == path.stem
    spec = registry.TFDS_TASKS.get(config.task.name)
    assert config.task.regression == (spec is not None and spec.regression)
  assert load_config(str(FINETUNE_CONFIGS / 'stsb.py')).task.regression
  assert load_config('finetune/sst2', ['task.max_len=64']).task.max_len == 64  # by shipped name
