"""lm-evaluation-harness on our model: a local YAML multiple-choice task through
`lm_eval.simple_evaluate` agrees with our zero-shot scorer, and every request type
matches a direct computation (numpy float64 log-probabilities, our KV-cache sampler)."""

import json
from pathlib import Path

import datasets
import huggingface_hub
import lm_eval  # the `eval` extra; the `test` extra installs it too
import numpy as np
import pytest
import tomllib
from helpers import numpy_log_probs
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from test_zero_shot import ENDINGS, LOCAL, STORIES, ending_scores, half_right_labels

from gpt_jax import cli, harness, sample


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  """lm-eval and Hugging Face datasets must never reach the network: offline for these tests
  only (the process's other tests read parquet from a local GCS emulator through datasets)."""
  for name in ('HF_DATASETS_OFFLINE', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
    monkeypatch.setenv(name, '1')
  for constants in (datasets.config, huggingface_hub.constants):
    for name in ('HF_DATASETS_OFFLINE', 'HF_HUB_OFFLINE'):
      if hasattr(constants, name):
        monkeypatch.setattr(constants, name, True)


TASK_YAML = """task: gpt_jax_stories
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


@pytest.fixture(scope='module')
def model(random_lm):
  return random_lm


@pytest.fixture(scope='module')
def lm(model):
  return harness.GptJaxLM(init=str(model), batch_size=8)


def _request(kind: str, *args) -> Instance:
  return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_simple_evaluate_accuracy_equals_our_zero_shot_scorer(model, lm, tmp_path):
  labels = half_right_labels(ending_scores(lm.weights, np.sum))  # lm-eval's acc: summed
  data = tmp_path / 'stories.jsonl'
  data.write_text(
    ''.join(
      json.dumps({'context': s, 'choices': e, 'label': label}) + '\n'
      for s, e, label in zip(STORIES, ENDINGS, labels)
    )
  )
  tasks = tmp_path / 'tasks'
  tasks.mkdir()
  (tasks / 'stories.yaml').write_text(TASK_YAML.format(data=data))
  results = lm_eval.simple_evaluate(
    model=lm,
    tasks=['gpt_jax_stories'],
    task_manager=TaskManager(include_path=str(tasks)),
    bootstrap_iters=0,
    log_samples=False,
    cache_requests=False,
  )
  harness_accuracy = results['results']['gpt_jax_stories']['acc,none']

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
        '--config.task.kind=multiple_choice',
        f'--config.task.validation={data}',
        '--config.task.zero_shot_score=sum',
      ]
    )
    == 0
  )  # lm-eval's acc: summed log-probs
  ours = json.loads(out.read_text())['splits']['validation']['accuracy']
  assert harness_accuracy == pytest.approx(ours)
  assert ours == pytest.approx(0.5)


def test_loglikelihood_is_the_sum_of_our_models_token_log_probs(lm):
  tokenizer = lm.weights.tokenizer
  pairs = [(story, ' ' + ending) for story, endings in zip(STORIES, ENDINGS) for ending in endings]
  pairs.append(('', 'an empty context'))
  results = lm.loglikelihood([_request('loglikelihood', *pair) for pair in pairs])
  for (context, continuation), (total, greedy) in zip(pairs, results):
    context_ids = tokenizer.encode(context) or [tokenizer.start_id]
    whole = (
      tokenizer.encode(context + continuation)
      if context
      else (context_ids + tokenizer.encode(continuation))
    )
    log_probs = numpy_log_probs(lm.weights.params, lm.weights.model_config, np.asarray(whole[:-1]))
    targets = np.arange(len(context_ids) - 1, len(whole) - 1)
    assert total == pytest.approx(
      log_probs[targets, whole[1:][len(context_ids) - 1 :]].sum(), rel=1e-5
    )
    assert greedy == bool((log_probs[targets].argmax(-1) == np.asarray(whole)[targets + 1]).all())


def test_rolling_loglikelihood_scores_every_token_once_in_windows(lm):
  text = ' '.join(STORIES * 3)  # longer than the 64-token context
  ids = [lm.weights.tokenizer.start_id] + lm.weights.tokenizer.encode(text)
  assert len(ids) > 2 * lm.max_length
  expected = 0.0
  for start in range(0, len(ids) - 1, lm.max_length):  # disjoint windows, each from its start
    window = np.asarray(ids[start : start + lm.max_length + 1])
    log_probs = numpy_log_probs(lm.weights.params, lm.weights.model_config, window[:-1])
    expected += log_probs[np.arange(len(window) - 1), window[1:]].sum()
  [total] = lm.loglikelihood_rolling([_request('loglikelihood_rolling', text)])
  assert total == pytest.approx(expected, rel=1e-5)


def test_generate_until_is_our_greedy_sample_cut_at_the_stop_string(lm):
  tokenizer = lm.weights.tokenizer
  contexts = STORIES[:3]
  expected = [
    tokenizer.decode(ids)
    for ids in sample.generate(
      lm.weights.params,
      lm.weights.model_config,
      [tokenizer.encode(c) for c in contexts],
      12,
      temperature=0.0,
    )
  ]
  # The last word of the first continuation: a random model's 12 tokens need not make three
  # words (in a full suite run they once made two), but they always make one.
  stop = expected[0].split()[-1]
  outputs = lm.generate_until(
    [_request('generate_until', c, {'until': [stop], 'max_gen_toks': 12}) for c in contexts]
  )
  assert outputs == [text.split(stop)[0] for text in expected]
  assert outputs[0] != expected[0]


def test_the_entry_point_names_the_registered_adapter():
  from lm_eval.api.registry import get_model

  pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / 'pyproject.toml').read_text())
  target = pyproject['project']['entry-points']['lm_eval.models']['gpt_jax']
  assert target == 'gpt_jax.harness:GptJaxLM'
  assert get_model('gpt_jax') is harness.GptJaxLM
  extras = pyproject['project']['optional-dependencies']
  assert any(r.startswith('lm-eval') for r in extras['eval'])
