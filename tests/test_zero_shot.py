"""The paper's zero-shot probes on local task files, against a numpy float64 forward pass."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import numpy_log_probs

from gpt_jax import cli
from gpt_jax.weights import load_weights

LOCAL = str(Path(__file__).resolve().parents[1] / 'configs' / 'finetune' / 'local.py')
STORIES = [
  'the function returns a list of names',
  'the parser reads one line at a time',
  'an error is raised when the file is missing',
  'the module defines a class',
  'the value is stored in a dictionary',
  'the server waits for a request',
]
ENDINGS = [
  ['and the list is sorted.', 'and then it rains on the sea.', 'of the result.'],
  ['until the end of the file.', 'the cat sleeps.', 'with a new argument.'],
  ['by the caller.', 'and a warning is printed.', 'in the green forest.'],
  ['with two methods.', 'for the test.', 'at noon on sunday.'],
  ['under a key.', 'and it is returned.', 'when the loop ends.'],
  ['from the client.', 'over the network.', 'in a separate thread.'],
]


@pytest.fixture(scope='module')
def model(random_lm):
  return random_lm


def _write(path, rows):
  path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  return str(path)


def _token_log_probs(weights, context_ids, answer_ids) -> np.ndarray:
  """The answer's token log-probabilities after the context: numpy float64, no gpt_jax code."""
  tokens = np.asarray(context_ids + answer_ids)
  log_probs = numpy_log_probs(weights.params, weights.model_config, tokens[:-1])
  targets = np.arange(len(context_ids) - 1, len(tokens) - 1)
  return log_probs[targets, tokens[targets + 1]]


def _mean_log_prob(weights, context_ids, answer_ids) -> float:
  return float(_token_log_probs(weights, context_ids, answer_ids).mean())


def _answer_ids(tokenizer, context: str, answer: str) -> tuple[list[int], list[int]]:
  """The answer's tokens as they come in the tokenisation of context + " " + answer."""
  context_ids = tokenizer.encode(context)
  return context_ids, tokenizer.encode(f'{context} {answer}')[len(context_ids) :]


def ending_scores(weights, reduce) -> np.ndarray:
  """[story, ending]: each of ENDINGS' log-probability after its story, its tokens' reduced by
  `reduce` (np.mean, np.sum)."""
  return np.array(
    [
      [
        reduce(_token_log_probs(weights, *_answer_ids(weights.tokenizer, story, ending)))
        for ending in endings
      ]
      for story, endings in zip(STORIES, ENDINGS)
    ]
  )


def half_right_labels(scores: np.ndarray) -> list[int]:
  """Labels naming the likeliest ending for every other story and the least likely one for the
  rest, so a right scorer's accuracy is 0.5 whatever the random model (its BPE breaks ties
  differently from run to run), and a scorer that ranks the endings differently scores otherwise."""
  return [int(row.argmax() if i % 2 == 0 else row.argmin()) for i, row in enumerate(scores)]


def _eval(model, tmp_path, *flags) -> dict:
  out = tmp_path / 'eval.json'
  assert (
    cli.main(
      [
        'eval',
        '--init',
        str(model),
        '--zero_shot',
        '--config',
        LOCAL,
        '--out',
        str(out),
        '--config.mesh.fsdp=1',
        '--config.mesh.data=-1',
        *flags,
      ]
    )
    == 0
  )
  return json.loads(out.read_text())


def test_multiple_choice_picks_the_answer_numpy_finds_likeliest(model, tmp_path):
  weights = load_weights(model)
  scores = ending_scores(weights, np.mean)
  labels = half_right_labels(scores)
  dev = _write(
    tmp_path / 'dev.jsonl',
    [{'context': s, 'choices': e, 'label': label} for s, e, label in zip(STORIES, ENDINGS, labels)],
  )
  result = _eval(
    model, tmp_path, '--config.task.kind=multiple_choice', f'--config.task.validation={dev}'
  )
  assert result['zero_shot'] == 'choices'
  assert result['splits']['validation']['accuracy'] == pytest.approx(0.5)

  from gpt_jax import sharding, zero_shot
  from gpt_jax.scoring import Scorer

  scorer = Scorer(
    weights.params, weights.model_config, sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1)), 8, 64
  )
  ours = zero_shot.answer_scores(scorer, weights.tokenizer, STORIES, ENDINGS, 'mean')
  np.testing.assert_allclose(ours, scores, rtol=1e-5, atol=1e-5)


def test_verbalizer_classifies_by_the_likeliest_label_word(model, tmp_path):
  weights = load_weights(model)
  rows = [{'text': story, 'label': ('bad', 'good')[i % 2]} for i, story in enumerate(STORIES)]
  words = {'bad': 'error', 'good': 'value'}
  predicted = [
    max(
      words,
      key=lambda label: _mean_log_prob(
        weights, *_answer_ids(weights.tokenizer, f'{row["text"]} very', words[label])
      ),
    )
    for row in rows
  ]
  dev = _write(tmp_path / 'dev.jsonl', rows)  # no train file: the verbaliser names the classes
  result = _eval(
    model,
    tmp_path,
    '--config.task.kind=classification',
    f'--config.task.validation={dev}',
    '--config.task.prompt={text} very',
    '--config.task.verbalizer=bad:error,good:value',
  )
  accuracy = np.mean([p == row['label'] for p, row in zip(predicted, rows)])
  assert result['splits']['validation']['accuracy'] == pytest.approx(accuracy)
  assert result['splits']['validation']['majority_baseline'] == pytest.approx(0.5)


def test_acceptability_thresholds_the_mean_log_probability(model, tmp_path):
  weights = load_weights(model)
  prefix = [weights.tokenizer.start_id]  # GPT-1's BPE has no end-of-document token
  means = [_mean_log_prob(weights, prefix, weights.tokenizer.encode(s)) for s in STORIES]
  threshold = float(np.median(means))
  labels = [1, 0, 1, 1, 0, 0]
  dev = _write(
    tmp_path / 'dev.jsonl', [{'text': s, 'label': label} for s, label in zip(STORIES, labels)]
  )
  result = _eval(
    model,
    tmp_path,
    '--config.task.kind=classification',
    f'--config.task.validation={dev}',
    '--config.task.labels=0,1',
    '--config.task.acceptability=True',
    f'--config.task.acceptability_threshold={threshold}',
  )
  expected = np.mean((np.asarray(means) > threshold) == labels)
  assert result['zero_shot'] == 'acceptability'
  assert result['splits']['validation']['accuracy'] == pytest.approx(expected)


@pytest.mark.parametrize(
  'flags, message',
  [
    (
      ['--config.task.kind=classification', '--config.task.labels=a,b'],
      'has no zero-shot probe: set task.verbalizer',
    ),
    (
      [
        '--config.task.kind=classification',
        '--config.task.labels=a,b',
        '--config.task.verbalizer=a:yes,c:no',
      ],
      "the task's classes are ['a', 'b']",
    ),
    (
      [
        '--config.task.kind=classification',
        '--config.task.labels=a,b',
        '--config.task.verbalizer=a:yes,b:no',
        '--config.task.prompt={sentence}',
      ],
      "task.prompt='{sentence}' names 'sentence'",
    ),
  ],
)
def test_probe_mistakes_are_one_line_errors(model, tmp_path, capsys, flags, message):
  dev = _write(tmp_path / 'dev.jsonl', [{'text': 'x', 'label': 'a'}])
  assert (
    cli.main(
      [
        'eval',
        '--init',
        str(model),
        '--zero_shot',
        '--config',
        LOCAL,
        f'--config.task.validation={dev}',
        *flags,
      ]
    )
    == 1
  )
  error = capsys.readouterr().err
  assert error.startswith('gpt-jax: error: ') and message in error, error


def _sum_log_prob(weights, context_ids, scored_ids) -> float:
  """The scored tokens' total log-probability after the context: numpy float64."""
  tokens = np.asarray(context_ids + scored_ids)
  log_probs = numpy_log_probs(weights.params, weights.model_config, tokens[:-1])
  targets = np.arange(len(context_ids) - 1, len(tokens) - 1)
  return float(log_probs[targets, tokens[targets + 1]].sum())


PRONOUNS = [
  # (sentence, pronoun as text or [start, end], candidates, what stands before / after it)
  ('the parser called the module because it was ready', 'it', ['the parser', 'the module']),
  ('when the server failed the client saw it', [38, 40], ['the server', 'the client']),
  ('it returns a list of names', 'it', ['the function', 'the method']),
]


def test_substitution_scores_are_sums_of_the_rest_of_the_sentence(model, tmp_path):
  from gpt_jax import sharding, zero_shot
  from gpt_jax.scoring import Scorer
  from gpt_jax.tasks.task import pronoun_example

  weights = load_weights(model)
  tokenizer = weights.tokenizer
  expected = []
  for sentence, pronoun, candidates in PRONOUNS:
    start = sentence.index('it') if isinstance(pronoun, str) else pronoun[0]
    before, rest = sentence[:start], sentence[start + 2 :]
    row = []
    for candidate in candidates:
      if rest:
        context = tokenizer.encode(before + candidate)
        scored = tokenizer.encode(before + candidate + rest)[len(context) :]
      else:  # the pronoun ends the sentence: the candidate is scored after what precedes it
        context = tokenizer.encode(before.rstrip())
        scored = tokenizer.encode(before + candidate)[len(context) :]
      row.append(_sum_log_prob(weights, context, scored))
    expected.append(row)
  examples = [pronoun_example(s, p, c, 'test') for s, p, c in PRONOUNS]
  assert examples[1]['pronoun'] == 'it' and examples[1]['pronoun_start'] == 38
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  scorer = Scorer(weights.params, weights.model_config, mesh, 8, 64)
  ours = zero_shot.substitution_scores(scorer, tokenizer, examples)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
