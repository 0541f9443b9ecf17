"""Offline default fine-tuning tasks, one per input transformation, labelled by the source itself.

Built in a few seconds from the docstrings of the running Python's standard
library (the default pretraining corpus, gpt_jax/data/builders/stdlib_docs.py),
so fine-tuning needs neither a download nor a prepared dataset:

  stdlib_package        classification: which package a module's, class's or
                        function's docstring comes from, one of PACKAGES.
  stdlib_continuation   entailment: does the hypothesis sentence really follow the
                        premise passage in its docstring ('continues'), or is it
                        one from another module ('unrelated')? Half and half.
  stdlib_same_module    similarity: are two docstrings from the same module
                        ('same') or from two modules ('different')? Half and half.
  stdlib_next_sentence  multiple choice: which of four sentences follows the
                        context; the three others come from other modules. The
                        right one sits at each position equally often.

Only prose is used: docstrings are cut at blank lines, paragraphs holding code
(doctests, indented blocks) are dropped, and the rest is split into sentences
(a capital letter up to `.`, `!` or `?`, 4 to MAX_WORDS words). A passage is
the sentences that begin a docstring, up to MAX_WORDS words in all. Wrong
hypotheses and choices come from the same pool as right ones (sentences that
follow another), so only their relation to the premise tells them apart.

Splits are disjoint by module, and every split draws texts from its own
modules only. Validation and test sentences that also occur in an earlier
split are cut out, so no validation or test text is seen in fine-tuning
training. Where modules go does not depend on the seed:
  - the pair tasks put a module in test when the corpus's key hash (the one
    that holds pretraining text out, text_corpus.is_validation) is below
    TEST_FRACTION, in validation when below TEST_FRACTION + VALIDATION_FRACTION:
    pretrain with data.validation_fraction at least that sum (0.2), and
    pretraining never saw their text either;
  - stdlib_package splits the modules of each package on its own, largest
    first, each to the split furthest below its share (TEST_FRACTION,
    VALIDATION_FRACTION, the rest) of the package's docstrings, so that every
    package is in every split in about those proportions.

Examples hold the kind's fields, `label`, `index` (position in its split) and
`source`: the module (its path under the standard library) of each text field.
The same seed on the same Python gives the same examples; docstrings change
between Python versions, and so do the tasks.
"""

import collections
import dataclasses
import functools
import random
import re
from collections.abc import Callable, Sequence

from gpt_jax.data.builders import stdlib_docs, text_corpus
from gpt_jax.errors import UserError
from gpt_jax.tasks.task import Task

# Multi-module packages with many docstrings, in every CPython 3 (tkinter and
# idlelib are separate packages on some systems; distutils left in 3.12).
PACKAGES = ('asyncio', 'email', 'importlib', 'multiprocessing', 'unittest', 'xml')
MAX_WORDS = 40  # per sentence and per passage: two passages fit a 128-token context
TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
SPLITS = ('train', 'validation', 'test')  # in this order: a later split drops earlier text
CONTINUATION_LABELS = ('continues', 'unrelated')
SAME_MODULE_LABELS = ('different', 'same')
NUM_CHOICES = 4

_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=[A-Z])')
_SENTENCE = re.compile(r'[A-Z].*[.!?]')
# A paragraph that is not prose: an indented line (docstrings come dedented, so a code
# block or an argument list), a doctest, a reST literal block, braces, a signature.
_CODE = re.compile(r'^\s|>>>|::$|[{}]|\w\(.*\)\s*->', re.MULTILINE)

# A docstring as its runs of contiguous prose sentences; a module as its docstrings.
Docstring = tuple[tuple[str, ...], ...]


def _is_sentence(text: str) -> bool:
  """Capitalised, ends like a sentence, 4 to MAX_WORDS words, few symbols (not code)."""
  words = text.split()
  letters = sum(c.isalpha() or c.isspace() for c in text)
  return (
    4 <= len(words) <= MAX_WORDS
    and _SENTENCE.fullmatch(text) is not None
    and letters >= 0.85 * len(text)
  )


def prose_runs(docstring: str) -> Docstring:
  """A docstring's prose as runs of sentences that follow each other in its text.

  Code paragraphs and anything that is not a sentence end a run, so the next
  sentence in a run is the next text of the docstring.
  """
  runs, run = [], []
  for paragraph in re.split(r'\n\s*\n', docstring):
    sentences = [] if _CODE.search(paragraph) else _SENTENCE_END.split(' '.join(paragraph.split()))
    for sentence in sentences or ['']:  # a code paragraph ends the run like a non-sentence
      if _is_sentence(sentence):
        run.append(sentence)
      elif run:
        runs.append(tuple(run))
        run = []
  if run:
    runs.append(tuple(run))
  return tuple(runs)


@functools.cache
def stdlib_prose() -> dict[str, tuple[Docstring, ...]]:
  """{module key: its docstrings' prose runs} for every module with prose, parsed once."""
  modules = {}
  for key, path in stdlib_docs.stdlib_modules():
    try:
      docstrings = stdlib_docs.docstrings(path.read_bytes())
    except (SyntaxError, ValueError):  # files of a newer grammar; not prose anyway
      continue
    prose = tuple(runs for runs in map(prose_runs, docstrings) if runs)
    if prose:
      modules[key] = prose
  return modules


# ---------------------------------------------------------------------------
# Splits by module.


def _split_by_hash(modules) -> dict[str, str]:
  """Module -> split by the hash threshold (the pair tasks)."""

  def split(key):
    if text_corpus.is_validation(key, TEST_FRACTION):
      return 'test'
    if text_corpus.is_validation(key, TEST_FRACTION + VALIDATION_FRACTION):
      return 'validation'
    return 'train'

  return {key: split(key) for key in modules}


def _split_by_count(counts: dict[str, int]) -> dict[str, str]:
  """Module -> split, largest module first, each to the split furthest below its share of counts."""
  total = sum(counts.values())
  shares = {
    'train': 1 - TEST_FRACTION - VALIDATION_FRACTION,
    'validation': VALIDATION_FRACTION,
    'test': TEST_FRACTION,
  }
  filled, splits = dict.fromkeys(SPLITS, 0), {}
  for key in sorted(counts, key=lambda key: (-counts[key], text_corpus.key_hash(key))):
    split = max(SPLITS, key=lambda split: shares[split] * total - filled[split])
    splits[key] = split
    filled[split] += counts[key]
  return splits


def _split_each_package(modules) -> dict[str, str]:
  """The modules of PACKAGES only, each package split on its own (stdlib_package)."""
  splits = {}
  for package in PACKAGES:
    counts = {
      key: len(docstrings) for key, docstrings in modules.items() if key.split('/')[0] == package
    }
    if not counts:
      raise UserError(
        f'stdlib_package: this Python ({stdlib_docs.stdlib_root()}) has no '
        f'documented package {package!r}; use another default task'
      )
    splits.update(_split_by_count(counts))
  return splits


def _cut(runs: Docstring, seen: set[str]) -> Docstring:
  """The runs without the sentences in `seen`; a removed sentence ends its run."""
  cut = []
  for run in runs:
    part: list[str] = []
    for sentence in (*run, None):
      if sentence is None or sentence in seen:
        if part:
          cut.append(tuple(part))
        part = []
      else:
        part.append(sentence)
  return tuple(cut)


def _split_prose(modules, split_of: dict[str, str]) -> dict[str, dict[str, tuple[Docstring, ...]]]:
  """{split: {module: prose}}, each later split without the sentences of the earlier ones."""
  seen: set[str] = set()
  by_split: dict[str, dict[str, tuple[Docstring, ...]]] = {}
  for split in SPLITS:
    by_split[split] = {}
    for key in sorted(key for key, where in split_of.items() if where == split):
      docstrings = tuple(runs for runs in (_cut(runs, seen) for runs in modules[key]) if runs)
      if docstrings:
        by_split[split][key] = docstrings
    seen.update(
      sentence
      for docstrings in by_split[split].values()
      for runs in docstrings
      for run in runs
      for sentence in run
    )
  return by_split


# ---------------------------------------------------------------------------
# Texts and examples of one split. `prose` is {module: docstrings}; examples come shuffled.


def _words(sentences: Sequence[str]) -> int:
  return sum(len(sentence.split()) for sentence in sentences)


def _passages(prose) -> list[tuple[str, str]]:
  """(module, passage) per docstring: its first sentences, up to MAX_WORDS words."""
  passages = []
  for key, docstrings in prose.items():
    for runs in docstrings:
      run = runs[0]
      end = max(n for n in range(1, len(run) + 1) if _words(run[:n]) <= MAX_WORDS)
      passages.append((key, ' '.join(run[:end])))
  return passages


def _continuations(prose) -> list[tuple[str, str, str]]:
  """(module, context, next sentence) for every sentence that follows another in its run.

  The context is the sentences right before it, up to MAX_WORDS words.
  """
  pairs = []
  for key, docstrings in prose.items():
    for runs in docstrings:
      for run in runs:
        for j in range(1, len(run)):
          start = min(i for i in range(j) if _words(run[i:j]) <= MAX_WORDS)
          pairs.append((key, ' '.join(run[start:j]), run[j]))
  return pairs


def _draw_other(items, key: str, avoid: set[str], rng: random.Random):
  """A random (module, text, ...) item of another module whose text is not in `avoid`."""
  for _ in range(10_000):
    item = rng.choice(items)
    if item[0] != key and item[-1] not in avoid:
      return item
  raise UserError(f'too few modules in a split to draw texts from another module than {key}')


def _package_examples(prose, rng: random.Random) -> list[dict]:
  examples = [
    {'text': text, 'label': PACKAGES.index(key.split('/')[0]), 'source': {'text': key}}
    for key, text in _passages(prose)
  ]
  rng.shuffle(examples)
  return examples


def _continuation_examples(prose, rng: random.Random) -> list[dict]:
  pairs = _continuations(prose)
  rng.shuffle(pairs)
  examples = []
  for i, (key, context, following) in enumerate(pairs):
    label = i % 2  # CONTINUATION_LABELS: alternating over a shuffled list, exactly half each
    source = key
    if label == 1:  # unrelated: a sentence that follows another one in some other module
      source, _, following = _draw_other(pairs, key, {following}, rng)
    examples.append(
      {
        'premise': context,
        'hypothesis': following,
        'label': label,
        'source': {'premise': key, 'hypothesis': source},
      }
    )
  return examples


def _same_module_examples(prose, rng: random.Random) -> list[dict]:
  texts = collections.defaultdict(list)  # module -> its distinct passages
  for key, text in dict.fromkeys(_passages(prose)):
    texts[key].append(text)
  passages = [(key, text) for key in texts for text in texts[key]]
  anchors = [(key, text) for key, text in passages if len(texts[key]) > 1]
  rng.shuffle(anchors)
  examples = []
  for i, (key, text) in enumerate(anchors):
    label = i % 2  # SAME_MODULE_LABELS: alternating over a shuffled list, exactly half each
    if label == 1:
      other_key, other = key, rng.choice([t for t in texts[key] if t != text])
    else:
      other_key, other = _draw_other(passages, key, {text}, rng)
    (a, a_key), (b, b_key) = rng.sample([(text, key), (other, other_key)], 2)
    examples.append(
      {'text_a': a, 'text_b': b, 'label': label, 'source': {'text_a': a_key, 'text_b': b_key}}
    )
  return examples


def _next_sentence_examples(prose, rng: random.Random) -> list[dict]:
  pairs = _continuations(prose)
  rng.shuffle(pairs)
  examples = []
  for i, (key, context, following) in enumerate(pairs):
    choices: list[str] = []
    sources = []
    while len(choices) < NUM_CHOICES - 1:
      source, _, wrong = _draw_other(pairs, key, {following, *choices}, rng)
      choices.append(wrong)
      sources.append(source)
    label = i % NUM_CHOICES  # every position equally often, over a shuffled list
    choices.insert(label, following)
    sources.insert(label, key)
    examples.append(
      {
        'context': context,
        'choices': choices,
        'label': label,
        'source': {'context': key, 'choices': sources},
      }
    )
  return examples


# ---------------------------------------------------------------------------
# The tasks.


@dataclasses.dataclass(frozen=True)
class DefaultTask:
  kind: str
  labels: tuple[str, ...] | None
  split_modules: Callable[[dict], dict[str, str]]  # {module: prose} -> {module: split}
  examples: Callable[[dict, random.Random], list[dict]]  # one split's examples, shuffled


DEFAULT_TASKS = {
  'stdlib_package': DefaultTask('classification', PACKAGES, _split_each_package, _package_examples),
  'stdlib_continuation': DefaultTask(
    'entailment', CONTINUATION_LABELS, _split_by_hash, _continuation_examples
  ),
  'stdlib_same_module': DefaultTask(
    'similarity', SAME_MODULE_LABELS, _split_by_hash, _same_module_examples
  ),
  'stdlib_next_sentence': DefaultTask(
    'multiple_choice', None, _split_by_hash, _next_sentence_examples
  ),
}


def load_default_task(
  name: str, *, seed: int = 0, max_train_examples: int = -1, max_eval_examples: int = -1
) -> Task:
  """The default task `name` (a key of DEFAULT_TASKS) from this Python's standard library.

  `seed` picks the order, the wrong texts and the answer positions; the split of
  modules does not depend on it. -1 keeps every example a split can make; a
  positive cap keeps that many (a random sample: examples come shuffled) of the
  training split, or of each of validation and test.
  """
  if name not in DEFAULT_TASKS:
    raise UserError(f'unknown default task {name!r}; known: {", ".join(DEFAULT_TASKS)}')
  spec = DEFAULT_TASKS[name]
  modules = stdlib_prose()
  prose = _split_prose(modules, spec.split_modules(modules))
  splits = {}
  for split in SPLITS:
    examples = spec.examples(prose[split], random.Random(f'{name}:{split}:{seed}'))
    cap = max_train_examples if split == 'train' else max_eval_examples
    examples = examples[:cap] if cap >= 0 else examples
    if not examples:
      raise UserError(
        f'default task {name} has no {split} examples '
        f'(from {stdlib_docs.stdlib_root()}; caps: max_train_examples='
        f'{max_train_examples}, max_eval_examples={max_eval_examples})'
      )
    splits[split] = [{**example, 'index': index} for index, example in enumerate(examples)]
  return Task(
    name=name,
    kind=spec.kind,
    labels=spec.labels,
    metrics=('accuracy',),
    train=splits['train'],
    validation={'validation': splits['validation']},
    test={'test': splits['test']},
  )
