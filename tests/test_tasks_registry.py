"""The task registry end to end on locally prepared TFDS datasets, and users' own task files.

The TFDS datasets are built by the real tensorflow_datasets builders (their
features, label names and file parsing), fed from small files written here
instead of downloads: GLUE and SNLI through a subclass that only points
`_split_generators` at local files, Story Cloze through its manual_dir.
"""

import csv
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.text import glue
from test_tasks_transforms import DELIM, EXTRACT, PAD, START, FakeTokenizer

from gpt_jax.errors import UserError
from gpt_jax.tasks import batches, files, registry, transforms
from gpt_jax.tasks.task import KINDS

TOKENIZER = FakeTokenizer()
MAX_LEN = 16


def _write_tsv(path, header, rows):
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\t'.join(header) + '\n')
    f.writelines('\t'.join(str(v) for v in row) + '\n' for row in rows)
  return str(path)


def _prepare(builder_class, data_dir, splits, config=None):
  """Prepares `builder_class`'s real features and parsing from local files: {split: kwargs}."""

  class Local(builder_class, skip_registration=True):
    name = builder_class.name

    def _split_generators(self, dl_manager):
      return [
        tfds.core.SplitGenerator(name=split, gen_kwargs=kwargs) for split, kwargs in splits.items()
      ]

  Local(config=config, data_dir=data_dir, file_format='array_record').download_and_prepare()


SST2_TRAIN = [
  ('a gripping and moving film', 1),
  ('dull and lifeless', 0),
  ('the best movie of the year', 1),
  ('a waste of time', 0),
  (' '.join(['long'] * 40), 1),
]  # longer than MAX_LEN: truncated
SST2_DEV = [('charming', 1), ('tedious', 0), ('wonderful acting', 1)]
SST2_TEST = [
  (i, text)
  for i, text in enumerate(
    ['meh', 'great fun', 'so so', 'awful', 'a gem', 'flat', 'lovely', 'too long']
  )
]
MNLI_DEV_MISMATCHED = [
  ('the cat sat on the mat', 'a cat sat', 'entailment'),
  ('it is raining', 'the sun is out', 'contradiction'),
  ('he went home', 'he was tired', 'neutral'),
]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  src = root / 'src'
  src.mkdir()
  _prepare(
    glue.Glue,
    str(root),
    config='sst2',
    splits={
      'train': dict(
        data_file=_write_tsv(src / 'sst_train.tsv', ['sentence', 'label'], SST2_TRAIN),
        split='train',
      ),
      'validation': dict(
        data_file=_write_tsv(src / 'sst_dev.tsv', ['sentence', 'label'], SST2_DEV), split='dev'
      ),
      'test': dict(
        data_file=_write_tsv(src / 'sst_test.tsv', ['index', 'sentence'], SST2_TEST), split='test'
      ),
    },
  )
  # MNLI's real columns (a subset): the builder reads sentence1, sentence2 and gold_label.
  columns = ['index', 'genre', 'sentence1', 'sentence2', 'gold_label']
  train = [
    (i, 'fiction', f'premise {i}', f'hypothesis {i}', ['entailment', 'neutral'][i % 2])
    for i in range(4)
  ]
  dev_m = [(0, 'slate', 'a dog ran', 'an animal moved', 'entailment')]
  dev_mm = [(i, 'verbatim', *row) for i, row in enumerate(MNLI_DEV_MISMATCHED)]
  test = [(0, 'slate', 'x y', 'y z')]
  _prepare(
    glue.Glue,
    str(root),
    config='mnli',
    splits={
      'train': dict(data_file=_write_tsv(src / 'mnli_train.tsv', columns, train), split='train'),
      'validation_matched': dict(
        data_file=_write_tsv(src / 'dev_m.tsv', columns, dev_m), split='dev'
      ),
      'validation_mismatched': dict(
        data_file=_write_tsv(src / 'dev_mm.tsv', columns, dev_mm), split='dev'
      ),
      'test_matched': dict(
        data_file=_write_tsv(src / 'test_m.tsv', columns[:-1], test), split='test'
      ),
      'test_mismatched': dict(
        data_file=_write_tsv(src / 'test_mm.tsv', columns[:-1], test), split='test'
      ),
    },
  )
  _prepare(
    glue.Glue,
    str(root),
    config='ax',
    splits={
      'test': dict(
        data_file=_write_tsv(
          src / 'ax.tsv',
          ['index', 'sentence1', 'sentence2'],
          [(0, 'a b', 'b'), (1, 'c', 'd e'), (2, 'the dog', 'a cat')],
        ),
        split='test',
      )
    },
  )
  # SNLI: '-' marks pairs without a gold label; a split of only those is empty.
  columns = ['gold_label', 'sentence1', 'sentence2']
  _prepare(
    tfds.builder_cls('snli'),
    str(root),
    splits={
      'train': dict(
        filepath=_write_tsv(
          src / 'snli_train.tsv',
          columns,
          [('entailment', 'a b', 'a'), ('-', 'c d', 'e'), ('contradiction', 'f', 'g')],
        )
      ),
      'validation': dict(filepath=_write_tsv(src / 'snli_dev.tsv', columns, [('-', 'a', 'b')])),
      'test': dict(filepath=_write_tsv(src / 'snli_test.tsv', columns, [('neutral', 'a', 'b')])),
    },
  )
  return str(root)


def _layout(*segments):
  ids = [START]
  for i, segment in enumerate(segments):
    ids += ([DELIM] if i else []) + TOKENIZER.encode(segment)
  ids = ids[: MAX_LEN - 1] + [EXTRACT]
  return tuple(ids + [PAD] * (MAX_LEN - len(ids)))


def test_sst2_end_to_end(data_dir):
  task = registry.load_tfds_task('sst2', data_dir)
  assert (task.kind, task.labels, task.num_outputs, task.metrics) == (
    'classification',
    ('negative', 'positive'),
    2,
    ('accuracy',),
  )
  assert task.submission_files == {'test': 'SST-2.tsv'}
  expected = {_layout(text): label for text, label in SST2_TRAIN}

  seen, truncated = [], 0
  for batch in batches.batches(
    task.train, task.kind, TOKENIZER, MAX_LEN, batch_size=5, shuffle_seed=0, num_epochs=2
  ):
    assert batch['tokens'].shape == (5, MAX_LEN) and batch['tokens'].dtype == np.int32
    assert batch['lm_mask'].shape == (5, MAX_LEN) and batch['extract_index'].shape == (5,)
    for tokens, label, index in zip(batch['tokens'], batch['label'], batch['extract_index']):
      assert expected[tuple(tokens)] == label  # right layout, with its own label
      assert tokens[index] == EXTRACT
    seen.append(sorted(map(tuple, batch['tokens'])))
    truncated += batch['truncated'].sum()
  assert seen[0] == seen[1] == sorted(expected)  # every example once per epoch
  assert truncated == 2  # the long review, once per epoch

  validation = list(
    batches.batches(
      task.validation['validation'], task.kind, TOKENIZER, MAX_LEN, batch_size=2, pad_last=True
    )
  )
  np.testing.assert_array_equal([b['valid'] for b in validation], [[1, 1], [1, 0]])
  test = task.test['test']
  assert sorted(example['index'] for example in test) == list(range(8))  # GLUE's idx
  assert {example['label'] for example in test} == {-1}


def test_mnli_end_to_end(data_dir):
  task = registry.load_tfds_task('mnli', data_dir)
  assert task.kind == 'entailment' and task.labels == ('entailment', 'neutral', 'contradiction')
  assert list(task.validation) == ['validation_matched', 'validation_mismatched']
  assert list(task.test) == ['test_matched', 'test_mismatched', 'ax']  # AX: GLUE's diagnostics
  assert task.submission_files['ax'] == 'AX.tsv' and len(task.test['ax']) == 3
  assert len(task.train) == 4 and len(task.validation['validation_matched']) == 1
  (batch,) = batches.batches(
    task.validation['validation_mismatched'], task.kind, TOKENIZER, MAX_LEN, batch_size=3
  )
  expected = {_layout(p, h): task.labels.index(label) for p, h, label in MNLI_DEV_MISMATCHED}
  assert {tuple(t): int(label) for t, label in zip(batch['tokens'], batch['label'])} == expected


def test_shards_split_the_rows_and_agree_on_the_number_of_batches():
  examples = [{'text': str(10 + i), 'label': 0} for i in range(7)]
  shards = [
    list(
      batches.batches(
        examples, 'classification', TOKENIZER, MAX_LEN, batch_size=2, pad_last=True, shard=(i, 2)
      )
    )
    for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == 2  # 7 rows in global batches of 4
  seen = [
    int(tokens[1])
    for shard in shards
    for batch in shard
    for tokens, valid in zip(batch['tokens'], batch['valid'])
    if valid
  ]
  assert sorted(seen) == list(range(10, 17))
  with pytest.raises(UserError, match='7 examples make no batch of 8'):
    next(
      batches.batches(
        examples, 'classification', TOKENIZER, MAX_LEN, batch_size=4, shuffle_seed=0, shard=(0, 2)
      )
    )


def test_snli_drops_unlabelled_pairs_and_rejects_an_empty_split(data_dir):
  spec = registry.TFDS_TASKS['snli']
  builder = tfds.builder('snli', data_dir=data_dir)
  train = registry.TfdsExamples(builder.as_data_source('train'), spec, 'snli train')
  assert sorted(example['premise'] for example in train) == ['a b', 'f']
  with pytest.raises(UserError, match="'validation' holds no usable examples"):
    registry.load_tfds_task('snli', data_dir)  # its validation split is all '-'


def test_story_cloze_from_its_manual_download(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  header = [
    'InputStoryid',
    'InputSentence1',
    'InputSentence2',
    'InputSentence3',
    'InputSentence4',
    'RandomFifthSentenceQuiz1',
    'RandomFifthSentenceQuiz2',
    'AnswerRightEnding',
  ]
  stories = [
    [f's{i}', f'one {i}.', 'two.', 'three.', 'four.', f'good {i}', f'bad {i}', 1 + i % 2]
    for i in range(20)
  ]
  for name, rows in (('val', stories), ('test', stories[:4])):
    with open(manual / f'cloze_test_{name}__spring2016.csv', 'w', newline='') as f:
      csv.writer(f).writerows([header, *rows])
  tfds.builder(
    'story_cloze/2016', data_dir=str(tmp_path), file_format='array_record'
  ).download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))

  task = registry.load_tfds_task('story_cloze', str(tmp_path))
  assert len(task.train) == 18 and len(task.validation['validation[90%:]']) == 2
  example = task.train[0]
  story = next(s for s in stories if example['context'].startswith(s[1]))
  assert example['context'] == ' '.join(story[1:5])
  assert example['label'] == story[7] - 1  # AnswerRightEnding counts from 1
  (batch,) = batches.batches(task.test['test'], task.kind, TOKENIZER, MAX_LEN, batch_size=4)
  assert batch['tokens'].shape == (4, 2, MAX_LEN) and batch['extract_index'].shape == (4, 2)


def test_race_record_becomes_one_example_per_question():
  # As TFDS decodes a record of race's features: text as bytes, nested sequences as arrays.
  record = {
    'article': b'Tom has a cat.',
    'questions': np.array([b'Who has a cat?', b'Tom has a _ .'], object),
    'answers': np.array([b'B', b'D'], object),
    'options': [
      np.array([b'Ann', b'Tom', b'Bob', b'Sue'], object),
      np.array([b'dog', b'cow', b'rat', b'cat'], object),
    ],
    'example_id': b'middle1.txt',
  }
  examples = registry.TFDS_TASKS['race_middle'].examples(record)
  assert examples == [
    {
      'context': 'Tom has a cat. Who has a cat?',
      'choices': ['Ann', 'Tom', 'Bob', 'Sue'],
      'label': 1,
    },
    {
      'context': 'Tom has a cat. Tom has a _ .',
      'choices': ['dog', 'cow', 'rat', 'cat'],
      'label': 3,
    },
  ]


def test_missing_or_unknown_tfds_tasks_are_user_errors(tmp_path):
  with pytest.raises(UserError, match='unknown task'):
    registry.load_tfds_task('glue/sst2', str(tmp_path))
  with pytest.raises(UserError, match='not prepared.*tfds build glue/cola'):
    registry.load_tfds_task('cola', str(tmp_path))


# ---------------------------------------------------------------------------
# Users' own files.

LOCAL = {
  'classification': [{'text': 'good film', 'label': 'pos'}, {'text': 'bad', 'label': 'neg'}],
  'entailment': [
    {'premise': 'a b', 'hypothesis': 'a', 'label': 'yes'},
    {'premise': 'c', 'hypothesis': 'd', 'label': 'no'},
  ],
  'similarity': [
    {'text_a': 'a b', 'text_b': 'b a', 'label': 'same'},
    {'text_a': 'c', 'text_b': 'd', 'label': 'different'},
  ],
  'multiple_choice': [
    {'context': 'the cat', 'choices': ['sat', 'ran', 'hid'], 'label': 2},
    {'context': 'a dog', 'choices': ['x', 'y', 'z'], 'label': 0},
  ],
}


def _write(path, rows):
  if str(path).endswith('.jsonl'):
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    return str(path)
  flat = []
  for row in rows:
    row = dict(row)
    for i, choice in enumerate(row.pop('choices', [])):
      row[f'choice_{i}'] = choice
    flat.append(row)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
  return str(path)


@pytest.mark.parametrize('suffix', ['.jsonl', '.csv'])
@pytest.mark.parametrize('kind', KINDS)
def test_local_files_of_every_kind(tmp_path, kind, suffix):
  rows = LOCAL[kind]
  unlabelled = [{k: v for k, v in row.items() if k != 'label'} for row in rows]
  task = files.load_local_task(
    kind,
    _write(tmp_path / f'train{suffix}', rows),
    _write(tmp_path / f'dev{suffix}', rows),
    _write(tmp_path / f'test{suffix}', unlabelled),
  )
  if kind == 'multiple_choice':
    assert task.labels is None and task.num_outputs == 1
    assert [e['label'] for e in task.train] == [2, 0]
  else:  # sorted labels of the train file
    assert task.labels == tuple(sorted(row['label'] for row in rows))
    assert [task.labels[e['label']] for e in task.validation['validation']] == [
      row['label'] for row in rows
    ]
  assert [e['label'] for e in task.test['test']] == [-1, -1]
  (batch,) = batches.batches(task.train, kind, TOKENIZER, MAX_LEN, batch_size=2)
  sequences = {'similarity': (2,), 'multiple_choice': (3,)}.get(kind, ())
  assert batch['tokens'].shape == (2, *sequences, MAX_LEN)


def test_local_label_list_and_regression(tmp_path):
  rows = LOCAL['classification']
  train = _write(tmp_path / 'train.jsonl', rows)
  task = files.load_local_task('classification', train, train, labels=('pos', 'neg'))
  assert [e['label'] for e in task.train] == [0, 1]  # the given order, not sorted
  scores = [
    {'text_a': 'a', 'text_b': 'b', 'label': '4.5'},
    {'text_a': 'c', 'text_b': 'd', 'label': 0.2},
  ]
  path = _write(tmp_path / 'sts.csv', scores)
  task = files.load_local_task('similarity', path, path, regression=True)
  assert [e['label'] for e in task.train] == [4.5, 0.2] and task.num_outputs == 1
  assert task.metrics == ('pearson', 'spearman')
  batch, _ = transforms.encode_examples('similarity', task.train, TOKENIZER, MAX_LEN)
  assert batch['label'].dtype == np.float32


@pytest.mark.parametrize(
  'dev_rows, match',
  [
    ([{'text': 'a', 'label': 'maybe'}], r"dev.jsonl:1: unknown label value 'maybe'"),
    (
      [{'text': 'a', 'label': 'pos'}, {'txt': 'b', 'label': 'pos'}],
      r"dev.jsonl:2: field 'text' is missing",
    ),
    ([{'text': 'a'}], r'dev.jsonl:1: field "label" is missing'),
    ([], r'dev.jsonl holds no examples'),
  ],
)
def test_bad_local_files_name_the_file_line_and_value(tmp_path, dev_rows, match):
  train = _write(tmp_path / 'train.jsonl', LOCAL['classification'])
  dev = tmp_path / 'dev.jsonl'
  dev.write_text(''.join(json.dumps(row) + '\n' for row in dev_rows))
  with pytest.raises(UserError, match=match):
    files.load_local_task('classification', train, str(dev))


def test_bad_multiple_choice_and_format_errors(tmp_path):
  rows = LOCAL['multiple_choice']
  train = _write(tmp_path / 'train.jsonl', rows)
  bad = _write(tmp_path / 'bad.jsonl', [{'context': 'c', 'choices': ['a', 'b'], 'label': 0}])
  with pytest.raises(UserError, match='bad.jsonl:1: 2 choices, but .*train.jsonl:1 has 3'):
    files.load_local_task('multiple_choice', train, bad)
  bad = _write(tmp_path / 'bad.csv', [{'context': 'c', 'choices': ['a', 'b', 'c'], 'label': 3}])
  with pytest.raises(UserError, match=r'bad.csv:2: label .3. must be the index'):
    files.load_local_task('multiple_choice', train, bad)
  broken = tmp_path / 'broken.jsonl'
  broken.write_text('{"text": "a", "label": "pos"}\n{"text": \n')
  with pytest.raises(UserError, match='broken.jsonl:2: not valid JSON'):
    files.load_local_task('classification', str(broken), str(broken))
  with pytest.raises(UserError, match='not found'):
    files.load_local_task('classification', str(tmp_path / 'nope.csv'), train)
  text = tmp_path / 'train.txt'
  text.write_text('text\n')
  with pytest.raises(UserError, match='unknown format'):
    files.load_local_task('classification', str(text), train)
