"""Users' own fine-tuning tasks: one JSONL or CSV file per split.

One example per JSON line, or per CSV row under a header row (.tsv: tab
separated). The fields of each kind:

  classification   {"text": "...", "label": "positive"}
  entailment       {"premise": "...", "hypothesis": "...", "label": "entailment"}
  similarity       {"text_a": "...", "text_b": "...", "label": "paraphrase"}
                   (with regression=True the label is a number, e.g. 3.8)
  multiple_choice  {"context": "...", "choices": ["...", "...", "..."], "label": 2}
                   in CSV, columns choice_0, choice_1, ... instead of choices
  pronoun          {"sentence": "...", "pronoun": "it", "candidates": ["...", "..."],
                   "label": 0} (zero-shot only: the substitution probe); "pronoun" is
                   its text (the first whole-word occurrence is resolved) or its
                   [start, end] character offsets; CSV: candidate_0, candidate_1, ...

Class labels are compared as text (1 and "1" are the same label). The label list
is `labels` when given, else the sorted distinct labels of the train file; it is
then fixed, and a validation or test label outside it is an error. A
multiple-choice (or pronoun) label is the 0-based index of the right choice, and every
example has the same number of choices. A test file may leave `label` out
(predictions only); train and validation files may not.
"""

import csv
import io
import json
import re

from gpt_jax import workdir as workdir_lib
from gpt_jax.data.builders.local_text import decode
from gpt_jax.errors import UserError, warn
from gpt_jax.tasks.metrics import TASK_METRICS
from gpt_jax.tasks.task import FIELDS, Task, check_kind, pronoun_example


def _decoded(path) -> str:
  """The file as text; invalid UTF-8 bytes become U+FFFD, counted in one warning (as the
  corpus reader does)."""
  text, invalid = decode(path.read_bytes())
  if invalid:
    line = text[: text.index('\ufffd')].count('\n') + 1
    warn(
      f'{path}: replaced {invalid:,} invalid UTF-8 bytes with U+FFFD (the first on line '
      f'{line}); save the file as UTF-8 to keep those characters'
    )
  return text


def _read_rows(path) -> list[tuple[str, dict]]:
  """(file:line, row) for every example of a .jsonl / .csv / .tsv file."""
  path = workdir_lib.path(path)  # local or in a bucket
  if not path.is_file():
    raise UserError(f'task file {path} not found')
  suffix = path.suffix.lower()
  rows = []
  with io.StringIO(_decoded(path), newline='') as f:
    if suffix == '.jsonl':
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as error:
          raise UserError(
            f'{path}:{number}: not valid JSON ({error.msg}); each line must hold one JSON object'
          ) from None
        if not isinstance(row, dict):
          raise UserError(f'{path}:{number}: expected a JSON object, got {type(row).__name__}')
        rows.append((f'{path}:{number}', row))
    elif suffix in ('.csv', '.tsv'):
      reader = csv.DictReader(f, delimiter='\t' if suffix == '.tsv' else ',')
      rows = [(f'{path}:{reader.line_num}', row) for row in reader]
    else:
      raise UserError(f'task file {path}: unknown format {suffix!r}; use .jsonl, .csv or .tsv')
  if not rows:
    raise UserError(f'task file {path} holds no examples')
  return rows


def _text(row, field, where, kind):
  value = row.get(field)
  if not isinstance(value, str):
    raise UserError(
      f'{where}: field {field!r} is missing or not text; a {kind} example needs '
      f'{", ".join(FIELDS[kind])} and label (see gpt_jax/tasks/files.py)'
    )
  return value


def _choices(row, where, field: str = 'choices'):
  """A list field (choices, candidates); in CSV, columns choice_0, choice_1, ... (candidate_0 ...)."""
  if field in row:
    choices = row[field]
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
      raise UserError(f'{where}: field "{field}" must be a non-empty list of strings')
    return choices
  prefix = field[:-1]  # choices: choice_0 ..., candidates: candidate_0 ...
  column = re.compile(rf'{prefix}_(\d+)')
  columns = sorted(
    (int(match.group(1)), key) for key in row if key and (match := column.fullmatch(key))
  )
  if not columns:
    raise UserError(
      f'{where}: field "{field}" (CSV: columns {prefix}_0, {prefix}_1, ...) is missing'
    )
  return [_text(row, key, where, 'multiple_choice') for _, key in columns]


def _example_fields(row, where, kind) -> dict:
  """The text fields of one example of `kind` (a pronoun's also its offset)."""
  if kind == 'pronoun':
    pronoun = row.get('pronoun')
    if not isinstance(pronoun, (str, list)):
      raise UserError(f'{where}: field "pronoun" (its text, or [start, end] offsets) is missing')
    sentence = _text(row, 'sentence', where, kind)
    return pronoun_example(sentence, pronoun, _choices(row, where, 'candidates'), where)
  return {
    field: _choices(row, where) if field == 'choices' else _text(row, field, where, kind)
    for field in FIELDS[kind]
  }


def _label(raw, where, kind, labels, regression, n_choices):
  """The label as the model sees it: class index, score or choice index."""
  if regression:
    try:
      return float(raw)
    except (TypeError, ValueError):
      raise UserError(f'{where}: label {raw!r} is not a number (regression task)') from None
  if kind in ('multiple_choice', 'pronoun'):
    try:
      index = int(raw)
    except (TypeError, ValueError):
      index = -1
    if not 0 <= index < n_choices or str(index) != str(raw).strip():
      raise UserError(
        f'{where}: label {raw!r} must be the index of the right choice, 0 to {n_choices - 1}'
      )
    return index
  if str(raw) not in labels:
    raise UserError(
      f'{where}: unknown label value {str(raw)!r}; known labels: {list(labels)} '
      '(give the full list in the task config)'
    )
  return labels.index(str(raw))


def _has_label(row) -> bool:
  return row.get('label') not in (None, '')


def read_examples(
  path,
  kind: str,
  labels: tuple[str, ...] | None = None,
  regression: bool = False,
  split: str = 'test',
  first_choices: tuple[str, int] | None = None,
) -> tuple[list[dict], tuple | None]:
  """The examples of one split file, labels mapped as the task's (`labels`: its classes).

  Only a test split may leave labels out (they become -1). `first_choices` is
  (where, how many) of a multiple-choice example read before, which every
  example must match; returned updated for the next file.
  """
  return _examples(_read_rows(path), kind, labels, regression, split, first_choices)


def _examples(rows, kind, labels, regression, split, first_choices):
  """read_examples on rows already read."""
  examples = []
  for index, (where, row) in enumerate(rows):
    example = _example_fields(row, where, kind)
    if kind == 'multiple_choice':
      first_choices = first_choices or (where, len(example['choices']))
      if len(example['choices']) != first_choices[1]:
        raise UserError(
          f'{where}: {len(example["choices"])} choices, but {first_choices[0]} '
          f'has {first_choices[1]}; every example needs the same number'
        )
    if _has_label(row):
      answers = example.get('choices', example.get('candidates', ()))
      example['label'] = _label(row['label'], where, kind, labels, regression, len(answers))
    elif split == 'test':
      example['label'] = -1.0 if regression else -1
    else:
      raise UserError(f'{where}: field "label" is missing ({split} examples need one)')
    examples.append({**example, 'index': index})
  return examples, first_choices


def load_local_task(
  kind: str,
  train: str | None,
  validation: str,
  test: str | None = None,
  *,
  labels: tuple[str, ...] | None = None,
  regression: bool = False,
  metrics: tuple[str, ...] | None = None,
  name: str = 'local',
) -> Task:
  """A Task from the user's files; see the module docstring for their schema.

  `metrics` defaults to ('pearson', 'spearman') for regression, else ('accuracy',).
  Without a train file (zero-shot probes score no training data) class tasks
  need `labels`.
  """
  check_kind(kind, zero_shot=True)
  classes = not regression and kind not in ('multiple_choice', 'pronoun')
  if regression and kind in ('multiple_choice', 'pronoun'):
    raise UserError(f'a {kind} task cannot be a regression')
  if labels is not None and not classes:
    raise UserError(
      'labels only apply to class labels; regression and multiple-choice tasks take numbers'
    )
  if classes and labels is None and not train:
    raise UserError('a task without a train file needs its class labels: task.labels=a,b,...')
  metrics = tuple(metrics or (('pearson', 'spearman') if regression else ('accuracy',)))
  unknown = [m for m in metrics if m not in TASK_METRICS]
  if unknown:
    raise UserError(f'unknown metric(s) {unknown}; known: {list(TASK_METRICS)}')

  files = {'train': train, 'validation': validation, 'test': test}
  rows = {split: _read_rows(path) for split, path in files.items() if path}  # each file once
  if classes and labels is None:
    labels = tuple(sorted({str(row['label']) for _, row in rows['train'] if _has_label(row)}))
  labels = tuple(str(label) for label in labels or ()) if classes else None
  examples, first_choices = {}, None
  for split, split_rows in rows.items():
    examples[split], first_choices = _examples(
      split_rows, kind, labels, regression, split, first_choices
    )
  return Task(
    name=name,
    kind=kind,
    labels=labels,
    metrics=metrics,
    train=examples.get('train', []),
    validation={'validation': examples['validation']},
    test={'test': examples['test']} if 'test' in examples else {},
    regression=regression,
  )
