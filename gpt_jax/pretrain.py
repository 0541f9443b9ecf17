"""The pretraining run: next-token prediction on random windows of a token store.

Three steps, each a function: `_set_up` builds the model, mesh, trainer and
state (resuming from the workdir's newest readable checkpoint), `loop.run`
trains, and `run_pretraining` reports. It saves every checkpoint.every_steps,
after each evaluation, at the end, and at the step boundary after a SIGTERM,
after which it returns with `preempted` True.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import attention, checkpoint, loop, sharding
from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError
from gpt_jax.model import ModelConfig
from gpt_jax.report import RunLog, StepProfiler
from gpt_jax.train import Trainer, make_pretrainer


def resolve_num_steps(train_config, train_tokens: int | None) -> int:
  """train.num_steps, or train.num_epochs over a corpus of `train_tokens` when it is -1."""
  if train_config.num_steps > 0:
    return int(train_config.num_steps)
  if train_config.num_steps != -1:
    raise UserError(
      f'train.num_steps={train_config.num_steps}: use a positive number of '
      'updates, or -1 to derive it from train.num_epochs'
    )
  if not train_tokens:
    raise UserError(
      'train.num_steps=-1 needs the corpus size to derive steps from '
      'train.num_epochs; set train.num_steps explicitly'
    )
  tokens_per_step = train_config.batch_size * train_config.seq_len
  return max(1, int(train_config.num_epochs * train_tokens // tokens_per_step))


def evaluate(trainer: Trainer, params, batches: Iterable[np.ndarray]) -> dict:
  """Mean loss and perplexity over an iterable of per-process eval batches."""
  totals, count = None, 0
  for batch in batches:
    metrics = trainer.eval_step(params, sharding.global_batch(batch, trainer.mesh))
    totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
    count += 1
  if not count:
    raise UserError(
      'the validation split produced no batches; it must hold at least one '
      'window of train.seq_len + 1 tokens per batch row'
    )
  means = {k: float(v) / count for k, v in jax.device_get(totals).items()}
  means['perplexity'] = math.exp(min(means['loss'], 50.0))
  return means


@dataclasses.dataclass
class _Run:
  model_config: ModelConfig
  trainer: Trainer
  total_steps: int
  tokens_per_step: int


def _set_up(config, workdir, train_tokens: int | None) -> _Run:
  """Checks the config and the workdir, and builds the trainer; nothing is written yet."""
  model_config = ModelConfig.from_config(config.model)
  seq_len = config.train.seq_len
  if seq_len > model_config.n_ctx:
    raise UserError(f'train.seq_len={seq_len} exceeds model.n_ctx={model_config.n_ctx}')
  attention.check_shape(model_config.attention, seq_len, model_config.head_dim, model_config.n_head)
  total_steps = resolve_num_steps(config.train, train_tokens)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.train.batch_size, mesh)
  _, trainer = make_pretrainer(model_config, config.optim, mesh, seq_len, total_steps)
  # Two checkpoints' worth: the one being written and the last complete one.
  workdir_lib.check_workdir(workdir, 2 * checkpoint.checkpoint_bytes(trainer.abstract_state))
  return _Run(model_config, trainer, total_steps, config.train.batch_size * seq_len)


def run_pretraining(
  config,
  workdir,
  train_batches: Iterator[np.ndarray],
  eval_batches: Callable[[], Iterable[np.ndarray]],
  train_tokens: int | None = None,
  log: RunLog | None = None,
  profile_steps: tuple[int, int] | None = None,
) -> dict:
  """Pretrains GPT on next-token prediction; returns the final train and eval metrics.

  `train_batches` yields this process's rows of each global batch, int32 arrays of
  shape (batch_size // process_count, seq_len + 1); `eval_batches()` returns a
  fresh iterable of the same over the validation split. If `train_batches` has
  get_state()/set_state() (grain iterators do), its position is checkpointed too.
  """
  run = _set_up(config, workdir, train_tokens)
  trainer = run.trainer
  log = log or RunLog(workdir)
  num_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
  log.info(
    f'model: {num_params:,} parameters | mesh {dict(trainer.mesh.shape)} | '
    f'{run.total_steps:,} steps of {config.train.batch_size} x {config.train.seq_len} '
    'tokens'
  )

  def evaluate_and_log(params, step):
    metrics = evaluate(trainer, params, eval_batches())
    log.scalars(step, metrics, split='eval')
    return metrics

  with checkpoint.Checkpointer(workdir, config.checkpoint) as checkpoints:
    state = checkpoints.restore_latest(trainer, train_batches)
    if state is None:
      state = trainer.init(jax.random.key(config.train.seed))
    else:
      log.info(f'resumed from {checkpoints.directory / str(int(state.step))}')
    first_step = int(state.step)
    log.drop_after(first_step)  # those steps are about to be rerun
    schedule = loop.Schedule(
      is_eval_step=lambda done: done % config.train.eval_every == 0 or done == run.total_steps,
      evaluate=evaluate_and_log,
      save=lambda done, state, evaluated: checkpoints.save(
        done,
        state,
        config,
        train_batches,
        metrics=None
        if evaluated is None
        else {f'eval_{name}': value for name, value in evaluated.items()},
      ),
      save_every=config.checkpoint.every_steps,
    )
    steps = loop.step_logger(
      log,
      run.model_config,
      trainer.mesh,
      every=config.train.log_every,
      total_steps=run.total_steps,
      tokens_of=lambda _: (run.tokens_per_step, config.train.seq_len),
    )
    steps.restart_clock(first_step)
    guard = loop.NonFiniteGuard(config.train.max_nonfinite_in_a_row, log, checkpoints.latest_step)
    profiler = StepProfiler(workdir, *profile_steps) if profile_steps else None
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
      profiler=profiler,
      steps_per_call=config.train.steps_per_call,
    )
    if first_step == run.total_steps:
      log.info(f'the workdir already holds the final step ({run.total_steps}); nothing to train')
      outcome.last_eval = evaluate(trainer, state.params, eval_batches())
  return {
    'train': outcome.last_train,
    'eval': outcome.last_eval,
    'state': outcome.state,
    'trainer': trainer,
    'preempted': outcome.preempted,
    'skipped_steps': outcome.skipped_steps,
  }
