"""`gpt-jax eval`: a language model on text, a task zero-shot, or a fine-tuned model on its task.

`evaluate_stream` scores text (below); `zero_shot_task` runs the paper's
zero-shot probes (gpt_jax.zero_shot) on a task's splits; `finetuned_task`
scores a fine-tuning workdir's best checkpoint on any split or task file with
the task's metrics (gpt_jax.predict).

Text is one token stream (documents joined by the end-of-document token when
the tokenizer has one, as the token store joins them), read in windows of
`seq_len` + 1 tokens that start every `stride` tokens. Each target token is
scored once, by the first window that holds it: with stride < seq_len every
window after the first scores only its last `stride` targets, each with at
least seq_len - stride tokens of context; with stride == seq_len the windows
are exactly pretraining's evaluation windows.

Bits per byte = summed nats / ln 2 / the UTF-8 bytes of the scored text (when
only the first `max_windows` windows are scored, that share of the bytes).
"""

import json
import math
from collections.abc import Iterable

import numpy as np
import tqdm

from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError
from gpt_jax.scoring import Scorer


def strided_windows(
  num_tokens: int, seq_len: int, stride: int, max_windows: int = 0
) -> list[tuple[int, int, int]]:
  """(start, first scored target, scored targets) per window; targets count from the window's start."""
  if not 0 < stride <= seq_len:
    raise UserError(f'--stride {stride} must be between 1 and --seq_len {seq_len}')
  if num_tokens < 2:
    raise UserError(f'the text holds {num_tokens} token(s); at least 2 are needed to score one')
  windows: list[tuple[int, int, int]] = []
  scored_until, start = 0, 0  # targets 1 .. scored_until are done
  while scored_until < num_tokens - 1 and (max_windows <= 0 or len(windows) < max_windows):
    end = min(start + seq_len, num_tokens - 1)  # the last target of this window
    windows.append((start, scored_until - start, end - scored_until))
    scored_until, start = end, start + stride
  return windows


def _rows(tokens: np.ndarray, windows, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  rows = np.zeros((len(windows), seq_len + 1), np.int32)
  weights = np.zeros((len(windows), seq_len), np.float32)
  for i, (start, first, count) in enumerate(windows):
    piece = tokens[start : start + seq_len + 1]
    rows[i, : len(piece)] = piece
    weights[i, first : first + count] = 1.0
  return rows, weights


def evaluate_stream(
  scorer: Scorer,
  tokens: np.ndarray,
  text_bytes: int,
  *,
  stride: int,
  max_windows: int = 0,
  show_progress: bool = True,
) -> dict:
  """Loss (nats/token), perplexity and bits per byte of `tokens` under the scorer's model."""
  seq_len = scorer.length
  windows = strided_windows(len(tokens), seq_len, stride, max_windows)
  total_nats, scored = 0.0, 0
  chunk = scorer.batch_size * 8  # windows built and scored at a time
  with tqdm.tqdm(
    total=len(windows),
    unit='window',
    desc='evaluating',
    disable=not show_progress,
    dynamic_ncols=True,
  ) as progress:
    for begin in range(0, len(windows), chunk):
      rows, weights = _rows(tokens, windows[begin : begin + chunk], seq_len)
      log_probs, _ = scorer.score(rows)
      total_nats -= float(np.sum(log_probs.astype(np.float64) * weights))
      scored += int(weights.sum())
      progress.update(len(rows))
  loss = total_nats / scored
  scored_bytes = text_bytes * scored / (len(tokens) - 1)
  return {
    'loss': loss,
    'perplexity': math.exp(min(loss, 50.0)),
    'bits_per_byte': total_nats / math.log(2) / scored_bytes,
    'tokens_scored': scored,
    'windows': len(windows),
    'seq_len': seq_len,
    'stride': stride,
  }


def read_documents(path) -> list[str]:
  """A .jsonl file's "text" fields (one document a line), or a text file as one document."""
  path = workdir_lib.path(path)
  if not path.is_file():
    raise UserError(f'--text {path} does not exist')
  if not path.name.endswith('.jsonl'):
    return [path.read_text(encoding='utf-8')]
  documents = []
  for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
    if not line.strip():
      continue
    try:
      documents.append(json.loads(line)['text'])
    except (json.JSONDecodeError, KeyError, TypeError):
      raise UserError(f'{path} line {number} is not a JSON object with a "text" field') from None
  return documents


def token_stream(tokenizer, documents: Iterable[str]) -> tuple[np.ndarray, int]:
  """The documents' ids as one stream (joined by end-of-document when the tokenizer has one)
  and their UTF-8 size."""
  ids, text_bytes = [], 0
  for document in documents:
    ids += tokenizer.encode(document)
    if tokenizer.eod_id is not None:
      ids.append(tokenizer.eod_id)
    text_bytes += len(document.encode('utf-8'))
  return np.asarray(ids, np.int32), text_bytes


def task_splits(task, split: str | None = None, task_file: str | None = None) -> dict:
  """{name: examples} to score: a file read as the task's examples, one named split, or
  every validation split."""
  if task_file:
    from gpt_jax.tasks import files

    examples, _ = files.read_examples(task_file, task.kind, task.labels, task.regression)
    return {workdir_lib.path(task_file).name: examples}
  named = {**task.test, **task.validation}
  if split is None:
    return dict(task.validation)
  if split not in named:
    raise UserError(
      f'--split {split}: {task.name} has the splits {sorted(named)}; or give --task_file FILE'
    )
  return {split: named[split]}


def zero_shot_task(
  weights, config, mesh, *, batch_size: int, seq_len: int, split=None, task_file=None
) -> dict:
  """The paper's zero-shot probe of config.task on the language model `weights`."""
  from gpt_jax import zero_shot
  from gpt_jax.tasks.load import load_task

  task = load_task(config.task, needs_train=False)
  probe = zero_shot.probe_for(task, config.task)
  scorer = Scorer(weights.params, weights.model_config, mesh, batch_size, seq_len)
  splits = zero_shot.evaluate(
    scorer, weights.tokenizer, task, probe, task_splits(task, split, task_file)
  )
  return {'task': task.name, 'zero_shot': probe.method, 'splits': splits}


def finetuned_task(workdir, config, mesh, *, batch_size: int, split=None, task_file=None) -> dict:
  """A fine-tuning workdir's task metrics (its best checkpoint) on splits or a task file."""
  import dataclasses

  import jax
  import jax.numpy as jnp

  from gpt_jax import checkpoint, sharding
  from gpt_jax.data.hf_tokenizer import tokenizer_in
  from gpt_jax.model import GPTForTask
  from gpt_jax.predict import TaskPredictor
  from gpt_jax.tasks.load import load_task
  from gpt_jax.weights import config_from_params

  task = load_task(config.task)
  summary = workdir / workdir_lib.SUMMARY_FILE
  best_step = json.loads(summary.read_text())['best_step'] if summary.exists() else None
  params = checkpoint.load_params(workdir, step=best_step)
  model_config = dataclasses.replace(
    config_from_params(params['transformer']), dtype=config.model.dtype
  )
  max_len = config.task.max_len if config.task.max_len > 0 else model_config.n_ctx
  model = GPTForTask(model_config, task.head_layout, task.num_outputs, clf_pdrop=0.0)
  shape = task.input_shape(1, max_len)
  abstract = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros(shape, jnp.int32), jnp.zeros(shape[:-1], jnp.int32)
    )['params']
  )
  shardings = sharding.param_shardings(abstract, mesh)
  predictor = TaskPredictor(
    model, shardings, mesh, task, tokenizer_in(workdir), max_len, config.task.get('bucket', 0)
  )
  params = jax.device_put(params, shardings)
  scores = {}
  for name, examples in task_splits(task, split, task_file).items():
    scores[name], _, _ = predictor.score(params, examples, batch_size)
    if not scores[name]:
      raise UserError(f'{name} has no labels to score {task.name} against')
  return {'task': task.name, 'best_step': best_step, 'splits': scores}
