"""Supervised fine-tuning, the paper's section 3.2.

The pretrained decoder reads each example through a task-aware input
transformation (gpt_jax.tasks); a linear head on the final `<e>` state predicts
the label; the objective is L_task + finetune.lm_coef x L_LM. Every epoch
scores the validation split(s); the best checkpoint by the task's first metric
is kept and, at the end, predicts the test split(s) into GLUE-style files.
"""

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import (checkpoint, default_tasks, hf, layer_layout, optim, sharding, task_data,
                     tasks)
from gpt_jax import metrics as metrics_lib
from gpt_jax.data.tokenizer import Tokenizer
from gpt_jax.errors import UserError
from gpt_jax.model import GPTForTask, ModelConfig, add_special_token_rows
from gpt_jax.paths import workdir_path
from gpt_jax.report import RunLog, StepLogger
from gpt_jax.train import Trainer

TOKENIZER_FILE = 'tokenizer.model'
SUMMARY_FILE = 'summary.json'  # best validation metrics, baseline, where the weights came from
# GLUE's server wants label names for these tasks and 0/1 for the other classification tasks.
_NAMED_LABEL_TASKS = ('mnli', 'qnli', 'rte')


@dataclasses.dataclass
class Init:
  """Where the decoder's weights, shape and tokenizer come from."""

  model_config: ModelConfig
  tokenizer: Tokenizer
  params: dict | None  # None: random initialisation (the paper's no-pretraining ablation)
  source: str


def load_init(config) -> Init:
  """Reads finetune.init: a pretraining workdir or a Hugging Face directory ('' = random init)."""
  init = config.finetune.init
  if not init:
    raise UserError('finetune.init is empty: give a pretraining workdir or a Hugging Face '
                    'directory (--init PATH); add --config.finetune.random_init=True to train '
                    'that model shape from random weights instead')
  path = workdir_path(init)  # a pretraining workdir may be in a bucket
  if not path.is_dir():
    raise UserError(f'finetune.init={init} is not a directory (a pretraining workdir or a '
                    'Hugging Face openai-gpt directory)')
  if not (path / TOKENIZER_FILE).is_file():
    raise UserError(f'{path} has no {TOKENIZER_FILE}: fine-tuning needs the sentencepiece '
                    'tokenizer the model was trained with (gpt-jax writes it into every '
                    'pretraining workdir and export)')
  tokenizer = Tokenizer(path / TOKENIZER_FILE)
  if (path / 'config.json').is_file():
    params, model_config = hf.load_hf_dir(path)
    source = f'Hugging Face weights in {path}'
  else:
    model_config = ModelConfig.from_config(checkpoint.load_config(path).model)
    params = checkpoint.load_params(path)
    source = f'pretraining checkpoint in {path}'
  special = max(tokenizer.start_id, tokenizer.delimiter_id, tokenizer.extract_id, tokenizer.pad_id)
  if special >= model_config.vocab_size:  # e.g. OpenAI's 40,478 tokens: add <s>, $, <e> rows
    new_rows = special + 1 - model_config.vocab_size
    params = add_special_token_rows(params, new_rows, jax.random.key(config.train.seed))
    model_config = dataclasses.replace(model_config, vocab_size=special + 1)
  if config.finetune.random_init:
    params, source = None, f'random initialisation (model shape and tokenizer of {path})'
  # Fine-tuning keeps the pretrained numerics unless the config asks otherwise.
  model_config = dataclasses.replace(
      model_config, dtype=config.model.dtype, remat=config.model.remat,
      scan_layers=config.model.scan_layers, embd_pdrop=config.model.embd_pdrop,
      attn_pdrop=config.model.attn_pdrop, resid_pdrop=config.model.resid_pdrop)
  if params is not None:  # the weights' block layout may differ from the config's
    params = layer_layout.convert(params, model_config.scan_layers)
  return Init(model_config, tokenizer, params, source)


def _evaluate(predict, params, task: task_data.Task, split_examples, tokenizer, max_len,
              batch_size: int, mesh) -> tuple[dict, np.ndarray]:
  """Task metrics (when labelled) and the predictions for every example of one split."""
  count = jax.process_count()
  outputs, labels, positions = [], [], []
  for k, batch in enumerate(task_data.batches(
      split_examples, task.kind, tokenizer, max_len, batch_size, pad_last=True,
      shard=(jax.process_index(), count))):
    logits, label, valid = predict(params, _to_mesh(batch, mesh))
    keep = np.asarray(valid).astype(bool)
    # Global row j holds process j // batch_size's row r: example p + count * (k * batch_size + r).
    process, row = np.divmod(np.arange(count * batch_size), batch_size)
    positions.append((process + count * (k * batch_size + row))[keep])
    outputs.append(np.asarray(logits)[keep])
    labels.append(np.asarray(label)[keep])
  order = np.argsort(np.concatenate(positions))  # back to the split's own example order
  predictions = tasks.predictions(np.concatenate(outputs)[order], task.regression)
  labels = np.concatenate(labels)[order]
  if (labels == -1).all():  # an unlabelled test split
    return {}, predictions
  return metrics_lib.task_metrics(task.metrics, predictions, labels), predictions


def _to_mesh(batch: dict, mesh) -> dict:
  batch = {k: v for k, v in batch.items() if k != 'truncated'}
  return jax.tree.map(lambda x: sharding.global_batch(x, mesh), batch)


def write_predictions(path: Path, task: task_data.Task, examples, predictions) -> None:
  """One `index<TAB>prediction` row per example, as GLUE's submission server reads them."""
  if task.regression:
    shown = [f'{p:.3f}' for p in predictions]
  elif task.labels and task.name.split('/')[-1] in _NAMED_LABEL_TASKS:
    shown = [task.labels[int(p)] for p in predictions]
  else:
    shown = [str(int(p)) for p in predictions]
  rows = ['index\tprediction'] + [f'{examples[i]["index"]}\t{p}' for i, p in enumerate(shown)]
  temporary = path.with_suffix(path.suffix + '.tmp')
  temporary.write_text('\n'.join(rows) + '\n', encoding='utf-8')
  temporary.replace(path)  # never a half-written submission


def run_finetuning(config, workdir: str | Path, log: RunLog | None = None) -> dict:
  """Fine-tunes on config.task; returns the best validation metrics and where things went."""
  workdir = workdir_path(workdir)
  task = task_data.load_task(config.task)
  init = load_init(config)
  model_config, tokenizer = init.model_config, init.tokenizer
  max_len = config.task.max_len if config.task.max_len > 0 else model_config.n_ctx
  if max_len > model_config.n_ctx:
    raise UserError(f'task.max_len={max_len} exceeds the model context n_ctx={model_config.n_ctx}')
  mesh = sharding.make_mesh(config.mesh)
  local_batch = sharding.check_batch(config.train.batch_size, mesh)
  eval_batch = sharding.check_batch(config.finetune.eval_batch_size, mesh)
  train_examples = task.train
  if config.task.max_train_examples > 0:
    train_examples = [task.train[i] for i in range(min(len(task.train),
                                                       config.task.max_train_examples))]
  steps_per_epoch = len(train_examples) // config.train.batch_size
  if not steps_per_epoch:
    raise UserError(f'{len(train_examples)} training examples make no batch of '
                    f'train.batch_size={config.train.batch_size}')
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else math.ceil(config.train.num_epochs * steps_per_epoch))
  log = log or RunLog(workdir)
  if jax.process_index() == 0:
    tokenizer.copy_to(workdir)  # sampling and export from this workdir need it

  model = GPTForTask(model_config, task.kind, task.num_outputs, config.finetune.clf_pdrop)
  shape = (1, 2, max_len) if task.kind == 'similarity' else (1, max_len)
  if task.kind == 'multiple_choice':
    shape = (1, len(train_examples[0]['choices']), max_len)
  tx, schedule = optim.make_optimizer(config.optim, total_steps)
  trainer = Trainer(
      init_params=lambda rng: model.init(rng, jnp.zeros(shape, jnp.int32),
                                         jnp.zeros(shape[:-1], jnp.int32))['params'],
      loss_fn=tasks.finetune_loss_fn(model, config.finetune.lm_coef, task.regression),
      tx=tx, schedule=schedule, mesh=mesh, grad_accum_steps=config.optim.grad_accum_steps)
  rng = jax.random.key(config.train.seed)
  state = trainer.init(rng)
  if init.params is not None:
    checkpoint.check_compatible(init.params, trainer.abstract_state.params['transformer'],
                                config.finetune.init)
    state = trainer.from_params({'transformer': init.params,
                                 'classifier': state.params['classifier']}, rng)
  log.info(f'fine-tuning {task.name} ({task.kind}, {len(train_examples):,} training examples, '
           f'{total_steps:,} steps of {config.train.batch_size}) from {init.source}')
  baseline = None if task.regression else default_tasks.majority_baseline(task)
  if baseline is not None:
    log.info(f'majority-class baseline on {next(iter(task.validation))}: accuracy {baseline:.4f}')

  replicated = sharding.replicated(mesh)
  predict_logits = tasks.predict_fn(model)
  with trainer.activation_sharding():
    predict = jax.jit(
        lambda params, batch: (predict_logits(params, batch), batch['label'], batch['valid']),
        in_shardings=(trainer.param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=replicated)

  def evaluate_validation(params):
    with trainer.activation_sharding():
      return {f'{split}_{name}': value
              for split, examples in task.validation.items()
              for name, value in _evaluate(predict, params, task, examples, tokenizer, max_len,
                                           eval_batch, mesh)[0].items()}

  tokens_per_step = config.train.batch_size * int(np.prod(shape[1:]))
  peak, _ = metrics_lib.peak_flops_per_device(jnp.dtype(model_config.dtype))
  steps = StepLogger(log, config.train.log_every, total_steps, tokens_per_step,
                     metrics_lib.train_flops_per_token(model_config, max_len) * tokens_per_step,
                     peak * mesh.size)
  best_metric = f'{next(iter(task.validation))}_{task.metrics[0]}'
  best = {'value': -math.inf, 'step': None, 'metrics': {}}
  truncated = 0
  train_batches = task_data.batches(
      train_examples, task.kind, tokenizer, max_len, local_batch, shuffle_seed=config.train.seed,
      num_epochs=math.ceil(total_steps / steps_per_epoch),
      shard=(jax.process_index(), jax.process_count()))
  checkpoint_config = config.checkpoint.copy_and_resolve_references()
  checkpoint_config.update(keep=1, keep_best=1, best_metric=best_metric, best_mode='max')
  log.start_progress(0, total_steps)
  with checkpoint.Checkpointer(workdir, checkpoint_config) as checkpoints:
    for step in range(total_steps):
      batch = next(train_batches)
      truncated += int(batch['truncated'].sum())
      state, metrics = trainer.train_step(state, _to_mesh(batch, mesh))
      metrics.pop('update_skipped', None)
      done = step + 1
      steps.after_step(done, metrics)
      if done % steps_per_epoch == 0 or done == total_steps:
        steps.flush()
        scores = evaluate_validation(state.params)
        log.scalars(done, {'epoch': done / steps_per_epoch, **scores}, split='validation')
        # On a tie the later checkpoint wins, as in orbax's BestN, which keeps just that one.
        if scores[best_metric] >= best['value']:
          best.update(value=scores[best_metric], step=done, metrics=scores)
        checkpoints.save(done, state, config, metrics=scores)
        steps.restart_clock(done)
    steps.flush()
  log.info(f'{truncated} training example(s) were truncated to {max_len} tokens')

  best_params = checkpoint.load_params(
      workdir, target=jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                   trainer.abstract_state.params, trainer.param_shardings),
      step=best['step'])
  written = []
  for split, examples in task.test.items():
    with trainer.activation_sharding():
      _, test_predictions = _evaluate(predict, best_params, task, examples, tokenizer, max_len,
                                      eval_batch, mesh)
    if jax.process_index() == 0:
      path = workdir / task.submission_files.get(split, f'{task.name.replace("/", "_")}_{split}.tsv')
      write_predictions(path, task, examples, test_predictions)
      written.append(path)
  log.info(f'best {best_metric} {best["value"]:.4f} at step {best["step"]}; test predictions: '
           + (', '.join(str(p) for p in written) or 'none (the task has no test split)'))
  summary = {'task': task.name, 'init': init.source, 'best_step': best['step'],
             'best': best['metrics'], 'majority_baseline': baseline, 'truncated': truncated}
  if jax.process_index() == 0:
    (workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + '\n')
  return {**summary, 'predictions': written, 'state': state}
