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
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import attention, checkpoint, loop, sharding, spike
from gpt_jax import workdir as workdir_lib
from gpt_jax.errors import UserError
from gpt_jax.model import ModelConfig
from gpt_jax.optim import OptimConfig
from gpt_jax.report import RunLog, StepProfiler
from gpt_jax.train import TrainConfig, Trainer, make_pretrainer

if TYPE_CHECKING:
  from gpt_jax.probes import PretrainingProbes


def resolve_num_steps(train_config: TrainConfig, train_tokens: int | None) -> int:
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


def _set_up(config, train_config: TrainConfig, workdir, train_tokens: int | None) -> _Run:
  """Checks the config and the workdir, and builds the trainer; nothing is written yet."""
  model_config = ModelConfig.from_config(config.model)
  seq_len = train_config.seq_len
  if seq_len > model_config.n_ctx:
    raise UserError(f'train.seq_len={seq_len} exceeds model.n_ctx={model_config.n_ctx}')
  if model_config.arch == 'transformer':
    attention.check_shape(
      model_config.attention, seq_len, model_config.head_dim, model_config.n_head
    )
  total_steps = resolve_num_steps(train_config, train_tokens)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(train_config.batch_size, mesh)
  optim_config = OptimConfig.from_config(config.optim)
  _, trainer = make_pretrainer(model_config, optim_config, mesh, seq_len, total_steps)
  log_records = total_steps // train_config.log_every + total_steps // train_config.eval_every + 1
  checkpoint_config = checkpoint.CheckpointConfig.from_config(config.checkpoint)
  workdir_lib.check_workdir(
    workdir,
    checkpoint.space_needed(trainer.abstract_state, checkpoint_config, workdir, log_records),
  )
  return _Run(model_config, trainer, total_steps, train_config.batch_size * seq_len)


def run_pretraining(
  config,
  workdir,
  train_batches: Iterator[np.ndarray],
  eval_batches: Callable[[], Iterable[np.ndarray]],
  train_tokens: int | None = None,
  log: RunLog | None = None,
  profile_steps: tuple[int, int] | None = None,
  probes: 'PretrainingProbes | None' = None,
) -> dict:
  """Pretrains GPT on next-token prediction; returns the final train and eval metrics.

  `train_batches` yields this process's rows of each global batch, int32 arrays of
  shape (batch_size // process_count, seq_len + 1); `eval_batches()` returns a
  fresh iterable of the same over the validation split. If `train_batches` has
  get_state()/set_state() (grain iterators do), its position is checkpointed too.
  `probes` (a probes.PretrainingProbes) also evaluates, and saves, at its steps.
  """
  train_config = TrainConfig.from_config(config.train)
  checkpoint_config = checkpoint.CheckpointConfig.from_config(config.checkpoint)
  run = _set_up(config, train_config, workdir, train_tokens)
  trainer = run.trainer
  log = log or RunLog(workdir)
  num_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
  log.info(
    f'model: {num_params:,} parameters | mesh {dict(trainer.mesh.shape)} | '
    f'{run.total_steps:,} steps of {train_config.batch_size} x {train_config.seq_len} '
    'tokens'
  )

  probe_steps = probes.steps if probes is not None else set()

  def evaluate_and_log(params, step):
    metrics = evaluate(trainer, params, eval_batches())
    log.scalars(step, metrics, split='eval')
    if probes is not None and step in probe_steps:
      log.scalars(step, probes(params, step), split='zero_shot')
    return metrics

  with checkpoint.Checkpointer(workdir, checkpoint_config) as checkpoints:
    state = checkpoints.restore_latest(trainer, train_batches)
    if state is None:
      state = trainer.init(jax.random.key(train_config.seed))
    else:
      log.info(f'resumed from {checkpoints.directory / str(int(state.step))}')
    first_step = int(state.step)
    # Every step's batch, less those a loss-spike rollback skipped (gpt_jax.spike).
    batches = spike.SkippingBatches(train_batches, spike.read_skips(workdir), first_step)
    schedule = loop.Schedule(
      is_eval_step=lambda done: (
        done % train_config.eval_every == 0 or done == run.total_steps or done in probe_steps
      ),
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
      save_every=checkpoint_config.every_steps,
    )
    profiler = StepProfiler(workdir, *profile_steps) if profile_steps else None

    def attempt(state, spikes: spike.SpikeWatch | None) -> loop.Outcome:
      return _train(run, train_config, state, batches, schedule, checkpoints, log, profiler, spikes)

    def roll_back(found: spike.Spike) -> tuple:
      return _roll_back(found, run, checkpoints, train_batches, batches, workdir, log)

    spike_config = spike.SpikeConfig.from_config(config.train)
    outcome = spike.run_with_rollbacks(attempt, state, roll_back, spike_config)
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


def _train(
  run: _Run,
  train_config: TrainConfig,
  state,
  batches: Iterator,
  schedule: loop.Schedule,
  checkpoints: checkpoint.Checkpointer,
  log: RunLog,
  profiler: StepProfiler | None,
  spikes: 'spike.SpikeWatch | None',
) -> loop.Outcome:
  """The training loop from `state` to the last step, with fresh loggers (a rollback drops
  what the steps it undoes logged)."""
  first_step = int(state.step)
  log.drop_after(first_step)  # those steps are about to be rerun
  steps = loop.step_logger(
    log,
    run.model_config,
    run.trainer.mesh,
    every=train_config.log_every,
    total_steps=run.total_steps,
    tokens_of=lambda _: (run.tokens_per_step, train_config.seq_len),
  )
  steps.restart_clock(first_step)
  guard = loop.NonFiniteGuard(train_config.max_nonfinite_in_a_row, log, checkpoints.latest_step)
  outcome = loop.run(
    run.trainer,
    state,
    batches,
    first_step=first_step,
    total_steps=run.total_steps,
    schedule=schedule,
    steps=steps,
    guard=guard,
    log=log,
    train_config=train_config,
    profiler=profiler,
    spikes=spikes,
  )
  if spikes:
    spikes.flush()  # the last call's losses
  return outcome


def _roll_back(
  found: 'spike.Spike',
  run: _Run,
  checkpoints: checkpoint.Checkpointer,
  train_batches: Iterator,
  batches: 'spike.SkippingBatches',
  workdir,
  log: RunLog,
) -> tuple:
  """Restores the newest checkpoint before the spike, records and starts skipping the
  batches from it to the spike; (state, its step)."""
  checkpoints.discard_from(found.step)
  state = checkpoints.restore_latest(run.trainer, train_batches)
  if state is None:
    raise UserError(
      f'a loss spike ({found.describe()} the window mean {found.mean:.4f}) came before the '
      'first checkpoint, so there is nothing to roll back to: lower checkpoint.every_steps, '
      'or turn train.spike off'
    )
  step = int(state.step)
  skip = spike.Skip(step, found.step - step, found.step, found.loss)
  spike.record_skip(workdir, skip)
  batches.add(skip)
  batches.at(step)
  log.info(
    f'loss spike: {found.describe()} the mean of the window before it ({found.mean:.4f}); '
    f'rolled back to checkpoint {step} and skipped the {skip.batches} batches that fed steps '
    f'{step + 1}-{found.step} (recorded in {spike.SKIPS_FILE})'
  )
  return state, step
