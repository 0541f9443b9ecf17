"""The paper's fine-tuning tasks as TFDS datasets: the registry and its loader.

`load_tfds_task` builds a Task (gpt_jax.tasks.task) whose splits read their
examples at random from the prepared dataset.

TFDS datasets are read through array_record data sources, without TensorFlow.
Prepare one once (it is never downloaded at run time):

  tfds build glue/sst2 --data_dir=DATA_DIR --file_format=array_record

Story Cloze cannot be downloaded by TFDS; prepare it from a manual download:
  1. Request the data at https://www.cs.rochester.edu/nlp/rocstories/ (a Google
     form); the links arrive by email.
  2. Download the Story Cloze Test spring 2016 validation and test CSV files and
     rename them, in one folder MANUAL_DIR, to exactly
     cloze_test_val__spring2016.csv and cloze_test_test__spring2016.csv.
  3. tfds build story_cloze/2016 --data_dir=DATA_DIR --manual_dir=MANUAL_DIR \
       --file_format=array_record
As in the paper, it trains on 90% of the labelled validation stories (the
standard training set has no wrong endings), selects checkpoints on the other
10%, and tests on the test stories.

RACE's TFDS builder stores nested option lists, which TFDS can only *write*
with TensorFlow installed: `pip install tensorflow` for `tfds build race/high`.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import tensorflow_datasets as tfds
import tensorflow_datasets.text  # noqa: F401  registers the legacy builders, among them 'glue'

from gpt_jax.errors import UserError, warn
from gpt_jax.tasks.task import Task, TaskShape, pronoun_example

# ---------------------------------------------------------------------------
# The registry: each entry maps a TFDS dataset's features (as its builder in
# tensorflow_datasets names them) onto a transformation's fields.


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _fields(record, fields: Mapping[str, str]) -> dict:
  return {field: _text(record[feature]) for field, feature in fields.items()}


@dataclasses.dataclass(frozen=True)
class TfdsTask:
  """How one TFDS dataset becomes a Task."""

  tfds_name: str
  kind: str
  fields: Mapping[str, str]  # transformation field -> dataset feature
  labels: tuple[str, ...] | None  # must equal the dataset's ClassLabel names, when it has one
  metrics: tuple[str, ...]
  train: str = 'train'
  validation: tuple[str, ...] = ('validation',)
  test: tuple[str, ...] = ('test',)
  regression: bool = False
  submission_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  choices: int = 0  # multiple choice: candidates per example (the shapes, without the data)
  # Another dataset whose test split this task's model predicts (GLUE's diagnostic set AX,
  # by the MNLI model): (TFDS name, its test split's name in the Task, submission file).
  diagnostic: tuple[str, str, str] | None = None
  # record -> its examples; None maps `fields` and 'label' one to one.
  convert: Callable[[dict], list[dict]] | None = None

  def examples(self, record) -> list[dict]:
    if self.convert is not None:
      return self.convert(record)
    label = record['label']
    label = float(label) if self.regression else int(label)
    return [{**_fields(record, self.fields), 'label': label}]


def _snli_examples(record) -> list[dict]:
  # Pairs the annotators did not agree on have label -1; as is standard, drop them.
  if record['label'] == -1:
    return []
  return [
    {
      **_fields(record, {'premise': 'premise', 'hypothesis': 'hypothesis'}),
      'label': int(record['label']),
    }
  ]


def _race_examples(record) -> list[dict]:
  """One example per question: context = article + question, four options, answer A-D."""
  article = _text(record['article'])
  return [
    {
      'context': f'{article} {_text(question)}',
      'choices': [_text(option) for option in options],
      'label': 'ABCD'.index(_text(answer)) if _text(answer) else -1,
    }
    for question, options, answer in zip(record['questions'], record['options'], record['answers'])
  ]


def _story_cloze_examples(record) -> list[dict]:
  label = int(record['label'])  # AnswerRightEnding: 1 or 2 (-1 when absent)
  return [
    {
      'context': _text(record['context']),
      'choices': [_text(ending) for ending in record['endings']],
      'label': label - 1 if label > 0 else -1,
    }
  ]


def _dprd_examples(record) -> list[dict]:
  """DPRD (Rahman & Ng 2012): a sentence, its pronoun, two candidate antecedents, the right one."""
  sentence = _text(record['sentence'])
  candidates = [_text(c) for c in record['candidates']]
  where = f'definite_pronoun_resolution sentence {sentence!r}'
  example = pronoun_example(sentence, _text(record['pronoun']), candidates, where)
  return [{**example, 'label': int(record['label'])}]


_GLUE_PAIR = {'text_a': 'sentence1', 'text_b': 'sentence2'}
_NLI = ('entailment', 'neutral', 'contradiction')

TFDS_TASKS = {
  'cola': TfdsTask(
    'glue/cola',
    'classification',
    {'text': 'sentence'},
    ('unacceptable', 'acceptable'),
    ('mcc',),
    submission_files={'test': 'CoLA.tsv'},
  ),
  'sst2': TfdsTask(
    'glue/sst2',
    'classification',
    {'text': 'sentence'},
    ('negative', 'positive'),
    ('accuracy',),
    submission_files={'test': 'SST-2.tsv'},
  ),
  'mrpc': TfdsTask(
    'glue/mrpc',
    'similarity',
    _GLUE_PAIR,
    ('not_equivalent', 'equivalent'),
    ('f1', 'accuracy'),
    submission_files={'test': 'MRPC.tsv'},
  ),
  'qqp': TfdsTask(
    'glue/qqp',
    'similarity',
    {'text_a': 'question1', 'text_b': 'question2'},
    ('not_duplicate', 'duplicate'),
    ('f1', 'accuracy'),
    submission_files={'test': 'QQP.tsv'},
  ),
  'stsb': TfdsTask(
    'glue/stsb',
    'similarity',
    _GLUE_PAIR,
    None,
    ('pearson', 'spearman'),
    regression=True,
    submission_files={'test': 'STS-B.tsv'},
  ),
  'mnli': TfdsTask(
    'glue/mnli',
    'entailment',
    {'premise': 'premise', 'hypothesis': 'hypothesis'},
    _NLI,
    ('accuracy',),
    validation=('validation_matched', 'validation_mismatched'),
    test=('test_matched', 'test_mismatched'),
    submission_files={'test_matched': 'MNLI-m.tsv', 'test_mismatched': 'MNLI-mm.tsv'},
    diagnostic=('glue/ax', 'ax', 'AX.tsv'),
  ),
  'qnli': TfdsTask(
    'glue/qnli',
    'entailment',
    {'premise': 'question', 'hypothesis': 'sentence'},
    ('entailment', 'not_entailment'),
    ('accuracy',),
    submission_files={'test': 'QNLI.tsv'},
  ),
  'rte': TfdsTask(
    'glue/rte',
    'entailment',
    {'premise': 'sentence1', 'hypothesis': 'sentence2'},
    ('entailment', 'not_entailment'),
    ('accuracy',),
    submission_files={'test': 'RTE.tsv'},
  ),
  'snli': TfdsTask(
    'snli',
    'entailment',
    {'premise': 'premise', 'hypothesis': 'hypothesis'},
    _NLI,
    ('accuracy',),
    convert=_snli_examples,
  ),
  'scitail': TfdsTask(
    'sci_tail',
    'entailment',
    {'premise': 'premise', 'hypothesis': 'hypothesis'},
    ('entails', 'neutral'),
    ('accuracy',),
  ),
  'race_middle': TfdsTask(
    'race/middle',
    'multiple_choice',
    {},
    None,
    ('accuracy',),
    validation=('dev',),
    convert=_race_examples,
    choices=4,
  ),
  'race_high': TfdsTask(
    'race/high',
    'multiple_choice',
    {},
    None,
    ('accuracy',),
    validation=('dev',),
    convert=_race_examples,
    choices=4,
  ),
  'story_cloze': TfdsTask(
    'story_cloze/2016',
    'multiple_choice',
    {},
    None,
    ('accuracy',),
    train='validation[:90%]',
    validation=('validation[90%:]',),
    convert=_story_cloze_examples,
    choices=2,
  ),
  # Zero-shot only (the substitution probe); no validation split: its test split is scored.
  'dprd': TfdsTask(
    'definite_pronoun_resolution',
    'pronoun',
    {},
    None,
    ('accuracy',),
    validation=('test',),
    test=(),
    convert=_dprd_examples,
    choices=2,
  ),
}


class TfdsExamples(Sequence):
  """Random access to the examples of one TFDS split (a record may give 0 or many)."""

  def __init__(self, records, spec: TfdsTask, where: str):
    self._records, self._spec = records, spec
    # (record, example) per example, when not one to one
    self._index: list[tuple[int, int]] | None = None
    if spec.convert is not None:
      self._index = []
      for start in range(0, len(records), 10_000):  # batched reads are several times faster
        chunk = records.__getitems__(list(range(start, min(start + 10_000, len(records)))))
        for offset, record in enumerate(chunk):
          self._index += [(start + offset, k) for k in range(len(spec.examples(record)))]
    if not len(self):
      raise UserError(
        f'{where} holds no usable examples (unlabelled ones are dropped); '
        'check the prepared data or prepare it again with tfds build'
      )

  def __len__(self) -> int:
    return len(self._records) if self._index is None else len(self._index)

  # Examples are read one at a time: no slices, unlike a full Sequence.
  def __getitem__(self, i: int) -> dict:  # type: ignore[override]
    if not 0 <= i < len(self):
      raise IndexError(i)
    position, k = (i, 0) if self._index is None else self._index[i]
    record = self._records[position]
    # GLUE numbers its examples ('idx'; its test submissions need them); TFDS shuffled them.
    return {**self._spec.examples(record)[k], 'index': int(record.get('idx', i))}


def _builder(tfds_name: str, data_dir: str | None):
  """The prepared TFDS builder of `tfds_name`, or a UserError saying how to prepare it."""
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as error:  # TFDS raises several types for a missing dataset
    raise UserError(f'cannot open TFDS dataset {tfds_name} in {data_dir}: {error}') from None
  if not builder.is_prepared():
    raise UserError(
      f'TFDS dataset {tfds_name} is not prepared in {builder.data_dir}; run '
      f'`tfds build {tfds_name} --data_dir={data_dir} '
      '--file_format=array_record` (see gpt_jax/tasks/registry.py)'
    )
  return builder


def _source(builder, split: str, spec: TfdsTask) -> TfdsExamples:
  name = builder.info.full_name.rsplit('/', 1)[0]  # without the version: glue/sst2
  try:
    records = builder.as_data_source(split)
  except Exception as error:
    raise UserError(
      f'cannot read split {split!r} of {name} in {builder.data_dir}: {error}'
    ) from None
  return TfdsExamples(records, spec, f'{name} split {split!r}')


def _diagnostic(spec: TfdsTask, data_dir: str | None) -> dict:
  """{split name: examples} of the task's diagnostic test set, or {} with a warning."""
  if spec.diagnostic is None:
    return {}
  tfds_name, split, file = spec.diagnostic
  try:
    return {split: _source(_builder(tfds_name, data_dir), 'test', spec)}
  except UserError as error:
    warn(f'{file} will not be written: {error}')
    return {}


def load_tfds_task(name: str, data_dir: str | None = None) -> Task:
  """The registry's task `name` (a key of TFDS_TASKS), read from `data_dir`."""
  if name not in TFDS_TASKS:
    raise UserError(
      f'unknown task {name!r}; the registry has: {", ".join(TFDS_TASKS)} '
      '(or fine-tune on your own files, see gpt_jax.tasks.files)'
    )
  spec = TFDS_TASKS[name]
  builder = _builder(spec.tfds_name, data_dir)
  if spec.labels is not None and tuple(builder.info.features['label'].names) != spec.labels:
    raise UserError(
      f'{spec.tfds_name} labels are {builder.info.features["label"].names}, '
      f'but the task registry expects {list(spec.labels)}: the dataset was '
      'prepared by another TFDS version than the one gpt_jax pins'
    )

  diagnostic = _diagnostic(spec, data_dir)
  submission_files = dict(spec.submission_files)
  if diagnostic and spec.diagnostic is not None:
    submission_files[spec.diagnostic[1]] = spec.diagnostic[2]
  return Task(
    name=name,
    kind=spec.kind,
    labels=spec.labels,
    metrics=spec.metrics,
    train=_source(builder, spec.train, spec),
    validation={split: _source(builder, split, spec) for split in spec.validation},
    test={**{split: _source(builder, split, spec) for split in spec.test}, **diagnostic},
    regression=spec.regression,
    submission_files=submission_files,
  )


def tfds_task_shape(name: str) -> TaskShape:
  """The registry task's model and batch shapes, without opening its (maybe unprepared) data."""
  spec = TFDS_TASKS[name]
  num_outputs = 1 if spec.regression or spec.labels is None else len(spec.labels)
  sequences = {'similarity': (2,), 'multiple_choice': (spec.choices,)}.get(spec.kind, ())
  return TaskShape(spec.kind, num_outputs, sequences, spec.regression)


# Registry keys by their TFDS names too: 'glue/sst2' is 'sst2', 'sci_tail' is 'scitail'.
REGISTRY_NAMES = {
  **{spec.tfds_name: name for name, spec in TFDS_TASKS.items()},
  **{name: name for name in TFDS_TASKS},
}
