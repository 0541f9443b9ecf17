"""The Task type: a fine-tuning task's examples, its kind and how it is scored.

Examples are plain dicts holding the text fields `FIELDS[kind]`, `label` (a
class index, a float score for regression, or the index of the right choice;
-1 where a split has no labels) and `index` (the example's id in its split, as a
GLUE submission numbers it). A pronoun example (DPRD, Winograd schemas; scored
zero-shot only) also holds `pronoun_start`, the pronoun's character offset in
its sentence.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence

from gpt_jax.errors import UserError

KINDS = ('classification', 'entailment', 'similarity', 'multiple_choice')
ZERO_SHOT_KINDS = ('pronoun',)  # kinds only the zero-shot probes score (no input transformation)

# The text fields of an example of each kind, in layout order.
FIELDS = {
  'classification': ('text',),
  'entailment': ('premise', 'hypothesis'),
  'similarity': ('text_a', 'text_b'),
  'multiple_choice': ('context', 'choices'),  # choices: a list of strings
  'pronoun': ('sentence', 'pronoun', 'candidates'),  # candidates: the pronoun's antecedents
}

# How the model's task head reads each kind's sequences (see model.GPTForTask).
HEAD_LAYOUTS = {
  'classification': 'single',
  'entailment': 'single',
  'similarity': 'pair_sum',
  'multiple_choice': 'choices',
}


def check_kind(kind: str, zero_shot: bool = False) -> str:
  """`kind`, if fine-tuning (or, with `zero_shot`, a zero-shot probe) can read it."""
  if kind in ZERO_SHOT_KINDS and not zero_shot:
    raise UserError(
      f'a {kind} task is scored zero-shot only (gpt-jax eval --zero_shot); it has no '
      f'input transformation to fine-tune with; fine-tuning kinds: {", ".join(KINDS)}'
    )
  if kind not in KINDS + ZERO_SHOT_KINDS:
    raise UserError(f'unknown task kind {kind!r}; expected one of: {", ".join(KINDS)}')
  return kind


def pronoun_example(sentence: str, pronoun, candidates: list, where: str) -> dict:
  """A pronoun example's fields; `pronoun` is [start, end] character offsets or text, of
  which the first whole-word occurrence is the one to resolve (DPRD's rule)."""
  start, end = _pronoun_span(sentence, pronoun, where)
  return {
    'sentence': sentence,
    'pronoun': sentence[start:end],
    'candidates': list(candidates),
    'pronoun_start': start,
  }


def _pronoun_span(sentence: str, pronoun, where: str) -> tuple[int, int]:
  if isinstance(pronoun, (list, tuple)):
    start, end = (int(x) for x in pronoun)
    if not 0 <= start < end <= len(sentence):
      raise UserError(f'{where}: pronoun span {list(pronoun)} lies outside the sentence')
    return start, end
  match = re.search(rf'(?<!\w){re.escape(pronoun)}(?!\w)', sentence)
  if not pronoun or match is None:
    raise UserError(f'{where}: the pronoun {pronoun!r} is not a word of the sentence')
  return match.start(), match.end()


@dataclasses.dataclass(frozen=True)
class TaskShape:
  """What a task's model and batch shapes depend on; no examples (e.g. for a dry run)."""

  kind: str
  num_outputs: int  # outputs of the linear head (see Task.num_outputs)
  sequences_per_example: tuple[int, ...] = ()  # () one sequence, (2,) both orders, (n,) choices
  regression: bool = False

  @property
  def head_layout(self) -> str:
    return HEAD_LAYOUTS[self.kind]

  def input_shape(self, batch_size: int, length: int) -> tuple[int, ...]:
    """Shape of a batch of token sequences for this task's model."""
    return (batch_size, *self.sequences_per_example, length)


@dataclasses.dataclass(frozen=True)
class Task:
  """A fine-tuning task's data and how to score it."""

  name: str
  kind: str  # one of KINDS
  labels: tuple[str, ...] | None  # class names (label i is labels[i]); None: regression or choices
  metrics: tuple[str, ...]  # keys of tasks.metrics.TASK_METRICS; the first selects checkpoints
  train: Sequence[dict]
  validation: Mapping[str, Sequence[dict]]  # scored every epoch; MNLI has matched + mismatched
  test: Mapping[str, Sequence[dict]]  # labels may be -1 (unlabelled)
  regression: bool = False
  # GLUE test split -> the file name its predictions go to in a GLUE submission
  submission_files: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def num_outputs(self) -> int:
    """Outputs of the linear head: one per class, or 1 for a score / a choice."""
    return 1 if self.regression or self.labels is None else len(self.labels)

  @property
  def head_layout(self) -> str:
    return HEAD_LAYOUTS[self.kind]

  def sequences_per_example(self) -> tuple[int, ...]:
    """The example axes of the model input: () one sequence, (2,) both orders, (n,) choices."""
    if self.kind == 'similarity':
      return (2,)
    if self.kind == 'multiple_choice':
      return (len(self.train[0]['choices']),)
    return ()

  @property
  def shape(self) -> TaskShape:
    return TaskShape(self.kind, self.num_outputs, self.sequences_per_example(), self.regression)

  def input_shape(self, batch_size: int, max_len: int) -> tuple[int, ...]:
    """Shape of a batch of token sequences for this task's model."""
    return self.shape.input_shape(batch_size, max_len)
