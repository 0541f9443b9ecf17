"""The paper's zero-shot probes (Radford et al. 2018, section 5, figure 2 right).

A task is scored by the language model alone, without a head or fine-tuning:

  choices        multiple choice (RACE, Story Cloze): the answer whose tokens
                 have the highest mean log-probability after the context (the
                 paper's rule; task.zero_shot_score='sum' takes the total, which
                 is lm-evaluation-harness's `acc`);
  verbalizer     classes named by words, task.verbalizer='negative:terrible,
                 positive:great' (SST-2: the sentence + " very", then "negative"
                 or "positive"): the class whose word is likeliest after the prompt;
  acceptability  CoLA: the mean token log-probability of the text itself,
                 thresholded at task.acceptability_threshold, or, when that is
                 NaN, where the split's share of positive predictions equals the
                 share of positive labels in the training split;
  substitution   pronoun tasks (DPRD, Winograd schemas): each candidate is put in
                 the pronoun's place and the rest of the sentence after it is
                 scored by its total log-probability (Trinh & Le's partial
                 scoring, the paper's rule); the likeliest rest wins. A pronoun
                 that ends the sentence scores the candidate itself.

Every split's result holds `chance`: the task's first metric for a uniform random
guess among the probe's answers (1 / answers for accuracy, 0 for MCC and
correlations), the 0 of the paper's relative-performance plot.

task.prompt formats what the model reads from an example's fields
('{text} very'); answers follow it after one space. A context and answer are
tokenised as lm-evaluation-harness does (`encode_pair`), so both score the
same ids.
"""

import dataclasses
import math

import numpy as np

from gpt_jax.errors import UserError
from gpt_jax.scoring import Scorer, score_continuations
from gpt_jax.tasks import metrics as task_metrics
from gpt_jax.tasks.task import FIELDS, Task

METHODS = ('choices', 'verbalizer', 'acceptability', 'substitution')


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """(context ids, continuation ids): the continuation's ids are those that follow the
  context's in the encoding of both together; trailing spaces move to the continuation."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  if not context:
    return [prefix_id(tokenizer)], tokenizer.encode(continuation)
  context_ids = tokenizer.encode(context)
  return context_ids, tokenizer.encode(context + continuation)[len(context_ids) :]


def prefix_id(tokenizer) -> int:
  """What stands before a text without context: end-of-document (what precedes every
  document in pretraining), or `<s>` for tokenizers without one (GPT-1's BPE)."""
  return tokenizer.eod_id if tokenizer.eod_id is not None else tokenizer.start_id


@dataclasses.dataclass(frozen=True)
class Probe:
  """How one task is scored zero-shot (see the module docstring)."""

  method: str  # one of METHODS
  prompt: str  # '' joins the example's text fields with spaces
  words: tuple[str, ...] = ()  # verbalizer: each class's word, in label order
  score: str = 'mean'  # 'mean' or 'sum' of an answer's token log-probabilities
  threshold: float = math.nan  # acceptability: NaN chooses it from the training labels

  def context(self, kind: str, example: dict) -> str:
    fields = {f: example[f] for f in FIELDS[kind] if f != 'choices'}
    if not self.prompt:
      return ' '.join(fields.values())
    try:
      return self.prompt.format(**fields)
    except (KeyError, IndexError) as error:
      raise UserError(
        f'task.prompt={self.prompt!r} names {error}, which a {kind} example lacks; '
        f'its fields: {", ".join(fields)}'
      ) from None


def probe_for(task: Task, task_config) -> Probe:
  """The probe a task config asks for: acceptability, else choices or the verbaliser."""
  score = task_config.get('zero_shot_score', 'mean')
  if score not in ('mean', 'sum'):
    raise UserError(f"task.zero_shot_score={score!r}: use 'mean' or 'sum'")
  prompt = task_config.get('prompt', '')
  if task.kind == 'pronoun':
    return Probe('substitution', prompt, score='sum')
  if task_config.get('acceptability', False):
    if task.labels is None or len(task.labels) != 2:
      raise UserError(
        f'task.acceptability needs a task with two classes; {task.name} has {task.labels}'
      )
    return Probe('acceptability', prompt, threshold=task_config.acceptability_threshold)
  if task.kind == 'multiple_choice':
    return Probe('choices', prompt, score=score)
  verbalizer = task_config.get('verbalizer', '')
  if task.labels is None or not verbalizer:
    raise UserError(
      f"{task.name} has no zero-shot probe: set task.verbalizer='label:word,...' "
      f'for its classes {list(task.labels or [])}, or task.acceptability=True'
    )
  words = dict(_pair(pair) for pair in verbalizer.split(','))
  if set(words) != set(task.labels):
    raise UserError(
      f"task.verbalizer names {sorted(words)}, but the task's classes are "
      f'{sorted(task.labels)}; give one word for each'
    )
  return Probe('verbalizer', prompt, tuple(words[label] for label in task.labels), score)


def _pair(text: str) -> tuple[str, str]:
  label, colon, word = text.partition(':')
  if not colon or not label.strip() or not word.strip():
    raise UserError(f'task.verbalizer entry {text!r}: expected label:word, e.g. positive:great')
  return label.strip(), word.strip()


def answer_scores(scorer: Scorer, tokenizer, contexts, answers, score: str) -> np.ndarray:
  """(examples, answers): each answer's summed or mean token log-probability after its context."""
  requests = [
    encode_pair(tokenizer, context, ' ' + answer)
    for context, row in zip(contexts, answers)
    for answer in row
  ]
  results = score_continuations(scorer, requests)
  values = [total / max(count, 1) if score == 'mean' else total for total, count, _ in results]
  return np.asarray(values, np.float64).reshape(len(contexts), -1)


def substitution_requests(tokenizer, example: dict) -> list[tuple[list[int], list[int]]]:
  """(context ids, scored ids) per candidate: the sentence up to the pronoun with the
  candidate in its place, then the rest of the sentence."""
  sentence, start = example['sentence'], example['pronoun_start']
  before, rest = sentence[:start], sentence[start + len(example['pronoun']) :]
  if not rest.strip():
    return [encode_pair(tokenizer, before, candidate) for candidate in example['candidates']]
  return [encode_pair(tokenizer, before + candidate, rest) for candidate in example['candidates']]


def substitution_scores(scorer: Scorer, tokenizer, examples) -> np.ndarray:
  """(examples, candidates): each substitution's summed log-probability of the rest."""
  requests = [
    request for example in examples for request in substitution_requests(tokenizer, example)
  ]
  totals = [total for total, _, _ in score_continuations(scorer, requests)]
  return np.asarray(totals, np.float64).reshape(len(examples), -1)


def predict(scorer: Scorer, tokenizer, task: Task, probe: Probe, examples) -> np.ndarray:
  """The probe's prediction (class or choice index) for every example."""
  examples = [examples[i] for i in range(len(examples))]
  if probe.method == 'substitution':
    return substitution_scores(scorer, tokenizer, examples).argmax(-1)
  contexts = [probe.context(task.kind, example) for example in examples]
  if probe.method == 'acceptability':
    requests = [(([prefix_id(tokenizer)]), tokenizer.encode(context)) for context in contexts]
    means = np.asarray(
      [total / max(count, 1) for total, count, _ in score_continuations(scorer, requests)]
    )
    return (means > _threshold(probe, task, means)).astype(np.int32)
  answers = (
    [example['choices'] for example in examples]
    if probe.method == 'choices'
    else [probe.words] * len(examples)
  )
  return answer_scores(scorer, tokenizer, contexts, answers, probe.score).argmax(-1)


def _threshold(probe: Probe, task: Task, means: np.ndarray) -> float:
  if not math.isnan(probe.threshold):
    return probe.threshold
  labels = [int(task.train[i]['label']) for i in range(len(task.train))]
  if not labels:
    raise UserError(
      f'{task.name} has no training labels to place the acceptability threshold '
      'by; set task.acceptability_threshold (a mean log-probability per token)'
    )
  positive_share = np.mean(np.asarray(labels) == 1)
  return float(np.quantile(means, 1.0 - positive_share))


def evaluate(scorer: Scorer, tokenizer, task: Task, probe: Probe, splits: dict) -> dict:
  """{split: metrics} of the probe on labelled splits ({name: examples}), with the
  majority-class baseline beside each."""
  results = {}
  for split, examples in splits.items():
    predictions = predict(scorer, tokenizer, task, probe, examples)
    labels = np.asarray([int(examples[i]['label']) for i in range(len(examples))])
    if (labels == -1).all():
      raise UserError(f'split {split!r} of {task.name} has no labels to score against')
    names = tuple(dict.fromkeys(task.metrics + ('accuracy',)))
    counts = np.bincount(labels[labels >= 0])
    results[split] = {
      **task_metrics.task_metrics(names, predictions, labels),
      'majority_baseline': float(counts.max() / len(labels)),
      'metric': task.metrics[0],
      'chance': chance_level(task.metrics[0], _answers(task, probe, examples), labels),
      'examples': len(labels),
    }
  return results


def _answers(task: Task, probe: Probe, examples) -> int:
  """How many answers the probe chooses among."""
  if probe.method == 'choices':
    return len(examples[0]['choices'])
  if probe.method == 'substitution':
    return len(examples[0]['candidates'])
  return len(probe.words) or len(task.labels or ())


def chance_level(metric: str, answers: int, labels: np.ndarray) -> float:
  """`metric` of a guess drawn uniformly among `answers`, in expectation: 1 / answers for
  accuracy, 0 for MCC and correlations, F1 = 2p / (2p + 1) for a positive share p."""
  if metric == 'accuracy':
    return 1.0 / answers
  if metric == 'f1':
    positive = float(np.mean(labels == 1))
    return 2 * positive / (2 * positive + 1)
  return 0.0
