"""Supervised fine-tuning, the paper's section 3.2.

The pretrained decoder reads each example through a task-aware input
transformation (gpt_jax.tasks); a linear head on the final `<e>` state predicts
the label; the objective is L_task + finetune.lm_coef x L_LM. Every epoch
scores the validation split(s); the best checkpoint by the task's first metric
is kept and, at the end, predicts the test split(s) into GLUE-style files.

Like pretraining it resumes from the workdir's newest checkpoint, saves and
stops at a step boundary on SIGTERM, and skips non-finite updates.
"""

import dataclasses
import json
import math
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from gpt_jax import checkpoint, glue, layer_layout, loop, sharding
from gpt_jax import config as config_lib
from gpt_jax import workdir as workdir_lib
from gpt_jax.data.tokenizer import TextTokenizer
from gpt_jax.errors import UserError
from gpt_jax.model import GPTForTask, ModelConfig
from gpt_jax.optim import OptimConfig
from gpt_jax.predict import TaskPredictor, TruncationCount, split_metrics
from gpt_jax.report import RunLog
from gpt_jax.tasks import metrics as task_metrics
from gpt_jax.tasks.batches import batches
from gpt_jax.tasks.load import load_task
from gpt_jax.tasks.task import Task
from gpt_jax.train import TrainConfig, Trainer, TrainState, make_finetuner
from gpt_jax.weights import (
  Weights,
  load_weights,
  transfer_count,
  transferred,
  with_token_ids,
)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """The finetune section: the weights to start from and the paper's objective."""

  init: str  # a pretraining workdir or a Hugging Face directory
  random_init: bool  # init's shape and tokenizer, random weights (the paper's ablation)
  n_transfer: str  # 'all', or -1 / 0 / K: the pretrained blocks kept (OpenAI's --n_transfer)
  keep_special_rows: bool  # keep the rows <s>, $ and <e> have instead of drawing new ones
  lm_coef: float  # weight of the auxiliary language-model loss
  lm_chunk: int  # LM logits are made this many positions per sequence at a time
  clf_pdrop: float  # dropout before the classifier
  eval_batch_size: int

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict) -> 'FinetuneConfig':
    return config_lib.section_view(cls, section, 'finetune')


def load_init(config: ml_collections.ConfigDict) -> Weights:
  """The weights finetune.init names, grown by the fine-tuning tokens and set to the config's numerics.

  With finetune.random_init (or n_transfer=-1) the shape and tokenizer are kept and
  `params` is None (the paper's no-pretraining ablation).
  """
  if not config.finetune.init:
    raise UserError(
      'finetune.init is empty: give a pretraining workdir or a Hugging Face '
      'directory (--init PATH); add --config.finetune.random_init=True to train '
      'that model shape from random weights instead'
    )
  weights = load_weights(config.finetune.init, flag='finetune.init')
  _check_arch(config, weights)
  tokenizer = weights.text_tokenizer()
  special = [tokenizer.start_id, tokenizer.delimiter_id, tokenizer.extract_id]
  # The paper gives <s>, $ and <e> new N(0, 0.02) rows; rows pretraining only ever pushed
  # around as softmax negatives are re-drawn to match (unless keep_special_rows).
  weights = with_token_ids(
    weights,
    [*special, tokenizer.pad_id],
    config.train.seed,
    redraw=() if config.finetune.keep_special_rows else special,
  )
  count = _transfer_count(FinetuneConfig.from_config(config.finetune), weights.model_config)
  if count == -1:
    weights = dataclasses.replace(
      weights,
      params=None,
      source=(f'random initialisation (model shape and tokenizer of {config.finetune.init})'),
    )
  elif count < weights.model_config.n_layer:
    weights = dataclasses.replace(
      weights,
      source=f'{weights.source}: the embeddings and the first {count} blocks (n_transfer)',
    )
  # Fine-tuning keeps the pretrained shape; numerics and dropout come from the config.
  model_config = dataclasses.replace(
    weights.model_config,
    dtype=config.model.dtype,
    remat=config.model.remat,
    scan_layers=config.model.scan_layers,
    embd_pdrop=config.model.embd_pdrop,
    attn_pdrop=config.model.attn_pdrop,
    resid_pdrop=config.model.resid_pdrop,
    attention=config.model.attention,
    pad_vocab_to=config.model.pad_vocab_to,
  )
  params = weights.params
  if params is not None:  # the weights' block layout may differ from the config's
    params = layer_layout.convert(params, model_config.scan_layers)
  return dataclasses.replace(weights, params=params, model_config=model_config)


def _check_arch(config: ml_collections.ConfigDict, weights: Weights) -> None:
  """The weights decide the model family, as they decide its sizes; an explicit
  model.arch=lstm that they contradict is one line."""
  wanted, found = config.model.get('arch', 'transformer'), weights.model_config.arch
  if wanted == 'lstm' and found != 'lstm':
    raise UserError(
      f'model.arch=lstm, but finetune.init={config.finetune.init} holds {found} weights: '
      'pretrain with --config.model.arch=lstm (or configs/lstm.py) and fine-tune from that'
    )


def _transfer_count(finetune_config: 'FinetuneConfig', model_config: ModelConfig) -> int:
  return transfer_count(
    finetune_config.n_transfer, finetune_config.random_init, model_config.n_layer
  )


@dataclasses.dataclass
class _Run:
  task: Task
  weights: Weights
  tokenizer: TextTokenizer  # the weights' own
  train_config: TrainConfig
  finetune_config: FinetuneConfig
  train_examples: Sequence[dict]
  max_len: int
  bucket: int  # batches are padded to a multiple of this (see tasks.batches); 0: to max_len
  steps_per_epoch: int
  total_steps: int
  model: GPTForTask
  trainer: Trainer


def _train_examples(config: ml_collections.ConfigDict, task: Task) -> Sequence[dict]:
  cap = config.task.max_train_examples
  if cap > 0:
    return [task.train[i] for i in range(min(len(task.train), cap))]
  return task.train


def _set_up(config: ml_collections.ConfigDict) -> _Run:
  train_config = TrainConfig.from_config(config.train)
  finetune_config = FinetuneConfig.from_config(config.finetune)
  task = load_task(config.task)
  weights = load_init(config)
  model_config = weights.model_config
  max_len = config.task.max_len if config.task.max_len > 0 else model_config.n_ctx
  if max_len > model_config.n_ctx:
    raise UserError(f'task.max_len={max_len} exceeds the model context n_ctx={model_config.n_ctx}')
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(train_config.batch_size, mesh)
  sharding.check_batch(finetune_config.eval_batch_size, mesh)
  train_examples = _train_examples(config, task)
  steps_per_epoch = len(train_examples) // train_config.batch_size
  if not steps_per_epoch:
    raise UserError(
      f'{len(train_examples)} training examples make no batch of '
      f'train.batch_size={train_config.batch_size}'
    )
  total_steps = (
    train_config.num_steps
    if train_config.num_steps > 0
    else math.ceil(train_config.num_epochs * steps_per_epoch)
  )
  model, trainer = make_finetuner(
    model_config,
    task.shape,
    OptimConfig.from_config(config.optim),
    mesh,
    total_steps,
    clf_pdrop=finetune_config.clf_pdrop,
    lm_coef=finetune_config.lm_coef,
    lm_chunk=finetune_config.lm_chunk,
  )
  return _Run(
    task,
    weights,
    weights.text_tokenizer(),
    train_config,
    finetune_config,
    train_examples,
    max_len,
    config.task.bucket,
    steps_per_epoch,
    total_steps,
    model,
    trainer,
  )


def _initial_state(run: _Run) -> TrainState:
  """A fresh state: the loaded decoder (or random weights) and a new classifier.

  Blocks finetune.n_transfer leaves out keep the fresh state's draws, so they equal a
  random_init run's.
  """
  rng = jax.random.key(run.train_config.seed)
  state = run.trainer.init(rng)
  if run.weights.params is None:
    return state
  checkpoint.check_compatible(
    run.weights.params, run.trainer.abstract_state.params['transformer'], run.finetune_config.init
  )
  decoder = transferred(
    run.weights.params,
    state.params['transformer'],
    _transfer_count(run.finetune_config, run.weights.model_config),
  )
  return run.trainer.from_params(
    {'transformer': decoder, 'classifier': state.params['classifier']}, rng
  )


def _predictor(run: _Run) -> TaskPredictor:
  return TaskPredictor(
    run.model,
    run.trainer.param_shardings,
    run.trainer.mesh,
    run.task,
    run.tokenizer,
    run.max_len,
    run.bucket,
  )


def _train_batches(run: _Run, start: int) -> TruncationCount:
  return TruncationCount(
    batches(
      run.train_examples,
      run.task.kind,
      run.tokenizer,
      run.max_len,
      run.train_config.batch_size // jax.process_count(),
      bucket=run.bucket,
      shuffle_seed=run.train_config.seed,
      num_epochs=math.ceil(run.total_steps / run.steps_per_epoch),
      shard=(jax.process_index(), jax.process_count()),
      start=start,
    )
  )


def _checkpoint_config(
  section: ml_collections.ConfigDict, best_metric: str
) -> checkpoint.CheckpointConfig:
  """Fine-tuning keeps the newest checkpoint (to resume) and the best (to predict with)."""
  return dataclasses.replace(
    checkpoint.CheckpointConfig.from_config(section),
    keep=1,
    keep_best=1,
    best_metric=best_metric,
    best_mode='max',
  )


def _train(
  run: _Run, config: ml_collections.ConfigDict, workdir: epath.Path, log: RunLog
) -> tuple[loop.Outcome, tuple[int | None, dict], dict[str, int]]:
  """Runs (or resumes) the training loop; `config` is saved with every checkpoint.

  Returns its outcome, the best checkpoint's (step, validation metrics), and how many
  examples of each split (validation and train) it cut.
  """
  trainer, task = run.trainer, run.task
  predictor = _predictor(run)
  truncated: dict[str, int] = {}

  scored = {**task.validation, **_train_eval_split(run, config)}

  def evaluate(params, step):
    scores = {}
    for split, examples in scored.items():
      split_scores, _, count = predictor.score(
        params, examples, run.finetune_config.eval_batch_size
      )
      if split != 'train':  # the training split's truncations are counted as it is trained on
        truncated[split] = count
      scores.update({f'{split}_{name}': value for name, value in split_scores.items()})
    log.scalars(step, {'epoch': step / run.steps_per_epoch, **scores}, split='validation')
    return scores

  with checkpoint.Checkpointer(
    workdir, _checkpoint_config(config.checkpoint, _best_metric(task))
  ) as checkpoints:
    state = checkpoints.restore_latest(trainer)
    if state is None:
      state = _initial_state(run)
    else:
      log.info(f'resumed from {checkpoints.directory / str(int(state.step))}')
    first_step = int(state.step)
    log.drop_after(first_step)
    schedule = loop.Schedule(
      is_eval_step=lambda done: done % run.steps_per_epoch == 0 or done == run.total_steps,
      evaluate=evaluate,
      save=lambda done, saved, scores: checkpoints.save(done, saved, config, metrics=scores),
    )
    # Batches are padded to their own bucket length: count the tokens each step computed on.
    steps = loop.step_logger(
      log,
      run.weights.model_config,
      trainer.mesh,
      every=run.train_config.log_every,
      total_steps=run.total_steps,
      tokens_of=lambda batch: (
        batch['tokens'].size * jax.process_count(),
        batch['tokens'].shape[-1],
      ),
    )
    guard = loop.NonFiniteGuard(
      run.train_config.max_nonfinite_in_a_row, log, checkpoints.latest_step
    )
    train_batches = _train_batches(run, first_step)
    outcome = loop.run(
      trainer,
      state,
      train_batches,
      first_step=first_step,
      total_steps=run.total_steps,
      schedule=schedule,
      steps=steps,
      guard=guard,
      log=log,
      train_config=run.train_config,
    )
    best = checkpoints.best()
  truncated['train'] = train_batches.total(len(run.train_examples))
  return outcome, best, truncated


def _train_eval_split(run: _Run, config) -> dict:
  """{'train': the fixed training examples scored each epoch} (task.train_eval_examples of
  them, drawn once by train.seed; none by default)."""
  count = config.task.get('train_eval_examples', 0)
  if count <= 0:
    return {}
  total = len(run.train_examples)
  chosen = np.random.default_rng(config.train.seed).permutation(total)[: min(count, total)]
  return {'train': [run.train_examples[int(i)] for i in sorted(chosen)]}


def _best_metric(task: Task) -> str:
  return f'{next(iter(task.validation))}_{task.metrics[0]}'


def _predict_tests(
  run: _Run, workdir: epath.Path, best_step: int
) -> tuple[list[epath.Path], dict, dict[str, int]]:
  """Predicts every test split with the best checkpoint; writes one file per split.

  Returns the files, the scores of the labelled splits ({'test_accuracy': ...}) and how
  many examples of each split it cut.
  """
  trainer, task = run.trainer, run.task
  best_params = checkpoint.load_params(
    workdir,
    target=sharding.abstract_with_shardings(trainer.abstract_state.params, trainer.param_shardings),
    step=best_step,
  )
  predictor, written, scores = _predictor(run), [], {}
  truncated: dict[str, int] = {}
  for split, examples in task.test.items():
    predictions, labels, truncated[split] = predictor.predict(
      best_params, examples, run.finetune_config.eval_batch_size
    )
    scores.update(
      {f'{split}_{name}': value for name, value in split_metrics(task, predictions, labels).items()}
    )
    name = task.submission_files.get(split, f'{task.name.replace("/", "_")}_{split}.tsv')
    if jax.process_index() == 0:
      glue.write_predictions(workdir / name, task, examples, predictions)
    written.append(workdir / name)
  return written, scores, truncated


def _majority_baselines(task: Task) -> dict:
  """{split: accuracy of the majority class} for every labelled validation and test split."""
  if task.regression:
    return {}
  baselines = {
    split: task_metrics.majority_baseline(task, split) for split in [*task.validation, *task.test]
  }
  return {split: value for split, value in baselines.items() if value is not None}


def run_finetuning(config: ml_collections.ConfigDict, workdir, log: RunLog | None = None) -> dict:
  """Fine-tunes on config.task; returns the best validation metrics and where things went."""
  workdir = workdir_lib.path(workdir)
  run = _set_up(config)
  task = run.task
  log = log or RunLog(workdir)
  if jax.process_index() == 0:
    run.tokenizer.copy_to(workdir)  # sampling and export from this workdir need it
  log.info(
    f'fine-tuning {task.name} ({task.kind}, {len(run.train_examples):,} training '
    f'examples, {run.total_steps:,} steps of {run.train_config.batch_size}) from '
    f'{run.weights.source}'
  )
  baselines = _majority_baselines(task)
  if baselines:
    log.info(
      'majority-class baseline (accuracy): '
      + ', '.join(f'{split} {value:.4f}' for split, value in baselines.items())
    )
  outcome, (best_step, best), truncated = _train(run, config, workdir, log)
  if outcome.preempted:
    return {'preempted': True, 'state': outcome.state}
  assert best_step is not None  # the last step is evaluated and saved with its metrics
  written, test_scores, test_truncated = _predict_tests(run, workdir, best_step)
  truncated.update(test_truncated)
  if test_scores:
    log.scalars(best_step, test_scores, split='test')
  log.info(
    f'examples truncated to {run.max_len} tokens: '
    + ', '.join(f'{split} {count}' for split, count in truncated.items())
  )
  best_metric = _best_metric(task)
  log.info(
    f'best {best_metric} {best[best_metric]:.4f} at step {best_step}; test predictions: '
    + (', '.join(str(p) for p in written) or 'none (the task has no test split)')
  )
  summary = {
    'task': task.name,
    'init': run.weights.source,
    'n_transfer': _transfer_count(run.finetune_config, run.weights.model_config),  # blocks
    'model_arch': run.weights.model_config.arch,
    'lm_coef': config.finetune.lm_coef,
    'best_step': best_step,
    'best': best,
    'test': test_scores,
    'majority_baseline': baselines,
    'truncated': truncated,
    'skipped_steps': outcome.skipped_steps,
    'predictions': [p.name for p in written],
  }
  if jax.process_index() == 0:
    (workdir / workdir_lib.SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + '\n')
  return {**summary, 'predictions': written, 'state': outcome.state}
