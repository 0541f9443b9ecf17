"""`gpt-jax eval` against the pretraining run's own evaluation and a numpy float64 forward pass."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import numpy_log_probs, prepared_local_corpus

from gpt_jax import checkpoint, cli, evaluation
from gpt_jax.errors import UserError
from gpt_jax.weights import load_weights

EVAL_BATCHES, BATCH = 2, 8
TINY = str(Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py')  # this checkout's


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny pretraining run on a local corpus (its final eval: the first 2 x 8 windows)."""
  root = tmp_path_factory.mktemp('eval')
  data = prepared_local_corpus(root)
  assert (
    cli.main(
      [
        'pretrain',
        '--config',
        TINY,
        '--workdir',
        str(root / 'run'),
        *data,
        '--config.train.num_steps=20',
        '--config.train.eval_every=20',
        f'--config.train.eval_batches={EVAL_BATCHES}',
        '--config.train.seq_len=32',
        f'--config.train.batch_size={BATCH}',
        '--config.mesh.fsdp=-1',
        '--config.optim.learning_rate=1e-3',
      ]
    )
    == 0
  )
  return root / 'run'


def test_eval_equals_pretrainings_final_eval_loss_and_numpy(run, capsys):
  windows = EVAL_BATCHES * BATCH
  assert cli.main(['eval', '--workdir', str(run), '--max_windows', str(windows)]) == 0
  result = json.loads((run / 'eval.json').read_text())
  final = [json.loads(line) for line in (run / 'metrics.jsonl').open()]
  final_eval = [r for r in final if r['split'] == 'eval'][-1]
  assert result['windows'] == windows and result['tokens_scored'] == windows * 32
  assert result['loss'] == pytest.approx(final_eval['loss'], rel=1e-5)
  assert result['perplexity'] == pytest.approx(math.exp(result['loss']))

  weights = load_weights(run)
  store_tokens, text_bytes = cli._corpus_split(
    checkpoint.load_config(run), weights.tokenizer, 'validation'
  )
  nats = 0.0
  for start in range(0, windows * 32, 32):
    window = np.asarray(store_tokens[start : start + 33])
    log_probs = numpy_log_probs(weights.params, weights.model_config, window[:-1])
    nats -= log_probs[np.arange(32), window[1:]].sum()
  assert result['loss'] == pytest.approx(nats / (windows * 32), rel=1e-5)
  expected_bpb = nats / math.log(2) / (text_bytes * windows * 32 / (len(store_tokens) - 1))
  assert result['bits_per_byte'] == pytest.approx(expected_bpb, rel=1e-5)


def test_overlapping_windows_score_every_token_once_with_more_context(run, tmp_path):
  text = tmp_path / 'text.jsonl'
  text.write_text(
    ''.join(json.dumps({'text': f'the lazy dog {i} sleeps. ' * 6}) + '\n' for i in range(6))
  )
  weights = load_weights(run)
  tokens, _ = evaluation.token_stream(weights.tokenizer, evaluation.read_documents(text))
  for stride in (32, 8):
    assert (
      cli.main(
        [
          'eval',
          '--workdir',
          str(run),
          '--text',
          str(text),
          '--stride',
          str(stride),
          '--out',
          str(tmp_path / f'{stride}.json'),
        ]
      )
      == 0
    )
    result = json.loads((tmp_path / f'{stride}.json').read_text())
    assert result['tokens_scored'] == len(tokens) - 1
  windows = evaluation.strided_windows(100, 32, 8)
  scored = sorted(start + first + k for start, first, count in windows for k in range(count))
  assert scored == list(range(99))  # targets 1..99 exactly once (offsets count from start + 1)
  assert all(first >= 24 for _, first, _ in windows[1:])  # at least seq_len - stride of context


def test_eval_errors_are_one_line(run, tmp_path, capsys):
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"txt": 1}\n')
  cases = [
    (['eval'], 'exactly one of --workdir'),
    (['eval', '--workdir', str(run), '--text', str(bad)], 'bad.jsonl line 1 is not a JSON'),
    (['eval', '--workdir', str(run), '--stride', '64'], '--stride 64 must be between'),
    (['eval', '--workdir', str(run), '--seq_len', '4096'], 'exceeds the model context'),
  ]
  for argv, message in cases:
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith('gpt-jax: error: ') and message in error, error
  with pytest.raises(UserError, match='at least 2 are needed'):
    evaluation.strided_windows(1, 32, 32)
