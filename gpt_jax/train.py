"""Train state, jitted train/eval steps, and the pretraining loop.

Steps are pure functions of (state, batch), compiled once with explicit
input/output shardings; the state argument is donated so parameters and
optimizer moments are updated in place.
"""

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_jax import checkpoint
from gpt_jax import metrics as metrics_lib
from gpt_jax import optim, sharding
from gpt_jax.errors import UserError
from gpt_jax.model import GPT, ModelConfig
from gpt_jax.report import RunLog, StepLogger, StepProfiler


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # train steps taken (batches consumed), including skipped non-finite ones
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step k uses fold_in(rng, k) so a resumed run repeats its dropout


def cross_entropy(logits, targets, weights=None):
  """Mean next-token cross-entropy in float32 over positions where `weights` is 1."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  if weights is None:
    return losses.mean()
  weights = weights.astype(jnp.float32)
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def lm_loss_fn(model: GPT) -> Callable:
  """Pretraining objective on windows of seq_len + 1 tokens: predict token t+1 from 0..t."""

  def loss_fn(params, windows, rng, deterministic):
    logits = model.apply({'params': params}, windows[:, :-1], deterministic=deterministic,
                         rngs=None if deterministic else {'dropout': rng})
    return cross_entropy(logits, windows[:, 1:]), {}

  return loss_fn


def make_pretrainer(model_config: ModelConfig, optim_config, mesh: jax.sharding.Mesh,
                    seq_len: int, total_steps: int) -> tuple[GPT, 'Trainer']:
  """The GPT and its next-token Trainer for `total_steps` updates on `mesh`."""
  model = GPT(model_config)
  tx, schedule = optim.make_optimizer(optim_config, total_steps)
  trainer = Trainer(
      init_params=lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))['params'],
      loss_fn=lm_loss_fn(model), tx=tx, schedule=schedule, mesh=mesh,
      grad_accum_steps=optim_config.grad_accum_steps)
  return model, trainer


class Trainer:
  """Compiles the sharded init, train and eval steps for one model, loss and mesh.

  `loss_fn(params, batch, rng, deterministic) -> (loss, aux)` defines the
  objective; `init_params(rng)` returns the model's *boxed* (logically
  annotated) parameters.
  """

  def __init__(self, init_params: Callable, loss_fn: Callable, tx: optax.GradientTransformation,
               schedule: optax.Schedule, mesh: jax.sharding.Mesh, grad_accum_steps: int = 1,
               max_replicated_fraction: float = sharding.MAX_REPLICATED_FRACTION):
    self.mesh, self.tx, self.schedule = mesh, tx, schedule
    self._init_params, self._loss_fn = init_params, loss_fn
    self._grad_accum_steps = grad_accum_steps
    # XLA's CPU collectives deadlock when several multi-device steps are in flight
    # on fewer cores than devices (e.g. 8 fake devices on 2 cores), so there we
    # run one step at a time. CPU devices share the host's cores anyway.
    self._wait_for_each_step = mesh.devices.flat[0].platform == 'cpu' and mesh.size > 1

    abstract_boxed = jax.eval_shape(init_params, jax.random.key(0))
    sharding.check_divisible(abstract_boxed, mesh)
    self.param_shardings = sharding.logical_to_mesh(nn.get_partition_spec(abstract_boxed), mesh)
    abstract_params = nn.unbox(abstract_boxed)
    sharding.check_replication(abstract_params, self.param_shardings, mesh,
                               max_replicated_fraction)
    abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
    replicated = sharding.replicated(mesh)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt_state, self.param_shardings,
        transform_non_params=lambda _: replicated)
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=opt_shardings, rng=replicated)
    self.abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
        opt_state=abstract_opt_state, rng=jax.eval_shape(lambda: jax.random.key(0)))
    batch = sharding.batch_sharding(mesh)

    self._jit_init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._jit_from_params = jax.jit(self._state_from_params, out_shardings=self.state_shardings)
    self._jit_train_step = jax.jit(
        self._train_step, in_shardings=(self.state_shardings, batch),
        out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    self._jit_eval_step = jax.jit(self._eval_step, in_shardings=(self.param_shardings, batch),
                                  out_shardings=replicated)

  @contextlib.contextmanager
  def activation_sharding(self):
    """Context in which the model's logical activation constraints resolve on our mesh."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
      yield

  def init(self, rng: jax.Array) -> TrainState:
    """A fresh state whose parameters are created already sharded (never whole on one device)."""
    with self.activation_sharding():
      return self._jit_init(rng)

  def from_params(self, params, rng: jax.Array) -> TrainState:
    """A step-0 state around existing parameters (e.g. imported weights), resharded."""
    with self.activation_sharding():
      return self._jit_from_params(params, rng)

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    """One optimizer update; `state` is donated (do not reuse it afterwards)."""
    with self.activation_sharding():
      state, metrics = self._jit_train_step(state, batch)
    if self._wait_for_each_step:
      jax.block_until_ready(state)
    return state, metrics

  def lower_train_step(self, batch: jax.ShapeDtypeStruct) -> jax.stages.Lowered:
    """The train step lowered for abstract inputs, ready for ahead-of-time `.compile()`.

    Needs no arrays, only shapes, so it works for a mesh of compile-only devices
    (a TPU topology this machine does not have; see gpt_jax.dryrun).
    """
    with self.activation_sharding():
      return self._jit_train_step.lower(self.abstract_state, batch)

  def eval_step(self, params, batch) -> dict:
    with self.activation_sharding():
      return self._jit_eval_step(params, batch)

  def _init_state(self, rng):
    params_rng, state_rng = jax.random.split(rng)
    return self._state_from_params(nn.unbox(self._init_params(params_rng)), state_rng)

  def _state_from_params(self, params, rng):
    params = jax.lax.with_sharding_constraint(params, self.param_shardings)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=rng)

  def _train_step(self, state: TrainState, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_and_grad(params, microbatch, index):
      rng = jax.random.fold_in(step_rng, index)
      return jax.value_and_grad(self._loss_fn, has_aux=True)(params, microbatch, rng, False)

    (loss, aux), grads = optim.accumulate_gradients(
        loss_and_grad, state.params, batch, self._grad_accum_steps)
    grad_norm = optax.tree.norm(grads)

    def apply_update(params, opt_state):
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # A non-finite loss or gradient would poison the parameters and Adam's moments for
    # good: keep both unchanged and report the skip (the step still counts, so the
    # data and the dropout key move on). A cond rather than a select: no pass over
    # every parameter and moment to pick old or new (1.6% of a small-config step).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.lax.cond(finite, apply_update, lambda *unchanged: unchanged,
                                     state.params, state.opt_state)
    metrics = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': self.schedule(state.step),
               'update_skipped': ~finite, **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, params, batch):
    loss, aux = self._loss_fn(params, batch, None, True)
    return {'loss': loss, **aux}


def resolve_num_steps(train_config, train_tokens: int | None) -> int:
  """train.num_steps, or train.num_epochs over a corpus of `train_tokens` when it is -1."""
  if train_config.num_steps > 0:
    return int(train_config.num_steps)
  if train_config.num_steps != -1:
    raise UserError(f'train.num_steps={train_config.num_steps}: use a positive number of '
                    'updates, or -1 to derive it from train.num_epochs')
  if not train_tokens:
    raise UserError('train.num_steps=-1 needs the corpus size to derive steps from '
                    'train.num_epochs; set train.num_steps explicitly')
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
    raise UserError('the validation split produced no batches; it must hold at least one '
                    'window of train.seq_len + 1 tokens per batch row')
  means = {k: float(v) / count for k, v in jax.device_get(totals).items()}
  means['perplexity'] = math.exp(min(means['loss'], 50.0))
  return means


def run_pretraining(config, workdir, train_batches: Iterator[np.ndarray],
                    eval_batches: Callable[[], Iterable[np.ndarray]],
                    train_tokens: int | None = None, log: RunLog | None = None,
                    profile_steps: tuple[int, int] | None = None) -> dict:
  """Pretrains GPT on next-token prediction; returns the final train and eval metrics.

  `train_batches` yields this process's rows of each global batch, int32 arrays of
  shape (batch_size // process_count, seq_len + 1); `eval_batches()` returns a
  fresh iterable of the same over the validation split. If `train_batches` has
  get_state()/set_state() (grain iterators do), its position is checkpointed too.

  The run continues from the newest readable checkpoint in `workdir`. It saves
  every checkpoint.every_steps, after each evaluation, at the end, and at the
  step boundary after a SIGTERM, after which it returns with 'preempted' True.
  """
  model_config = ModelConfig.from_config(config.model)
  seq_len = config.train.seq_len
  if seq_len > model_config.n_ctx:
    raise UserError(f'train.seq_len={seq_len} exceeds model.n_ctx={model_config.n_ctx}')
  total_steps = resolve_num_steps(config.train, train_tokens)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.train.batch_size, mesh)
  _, trainer = make_pretrainer(model_config, config.optim, mesh, seq_len, total_steps)
  # Two checkpoints' worth: the one being written and the last complete one.
  checkpoint.check_workdir(workdir, 2 * checkpoint.checkpoint_bytes(trainer.abstract_state))
  log = log or RunLog(workdir)

  num_params = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
  tokens_per_step = config.train.batch_size * seq_len
  flops_per_step = metrics_lib.train_flops_per_token(model_config, seq_len) * tokens_per_step
  peak, peak_source = metrics_lib.peak_flops_per_device(jnp.dtype(model_config.dtype))
  log.info(f'model: {num_params:,} parameters | mesh {dict(mesh.shape)} | {total_steps:,} steps '
           f'of {config.train.batch_size} x {seq_len} tokens | peak {peak / 1e12:.2f} TFLOP/s '
           f'per device ({peak_source})')

  with (checkpoint.Checkpointer(workdir, config.checkpoint) as checkpoints,
        checkpoint.PreemptionWatch() as preemption):
    state = checkpoints.restore_latest(trainer, train_batches)
    if state is None:
      state = trainer.init(jax.random.key(config.train.seed))
    else:
      log.info(f'resumed from {checkpoints.directory / str(int(state.step))}')
    first_step = int(state.step)
    log.drop_after(first_step)  # those steps are about to be rerun
    steps = StepLogger(log, config.train.log_every, total_steps, tokens_per_step,
                       flops_per_step, peak * mesh.size)
    steps.restart_clock(first_step)
    profiler = StepProfiler(workdir, *profile_steps) if profile_steps else None

    nonfinite = {'in_a_row': 0, 'total': 0}

    def count_nonfinite(step, skipped):
      """Counts updates skipped for a non-finite loss or gradient; stops a diverged run."""
      if not bool(skipped):
        nonfinite['in_a_row'] = 0
        return
      nonfinite['in_a_row'] += 1
      nonfinite['total'] += 1
      log.info(f'step {step}: non-finite loss or gradients, update skipped '
               f'({nonfinite["in_a_row"]} in a row, {nonfinite["total"]} in all)')
      limit = config.train.max_nonfinite_in_a_row
      if nonfinite['in_a_row'] >= limit:
        raise UserError(
            f'training diverged: {limit} steps in a row, up to step {step}, had a non-finite '
            f'loss or gradients (train.max_nonfinite_in_a_row={limit}); no update was applied, '
            f'so the last checkpoint (step {checkpoints.latest_step()}) is good: lower '
            'optim.learning_rate or check the data, then rerun to resume from it')

    last_eval, preempted = {}, False
    unchecked = None  # (step, skipped flag) still to count, fetched one step late
    if first_step == total_steps:
      log.info(f'the workdir already holds the final step ({total_steps}); nothing to train')
      last_eval = evaluate(trainer, state.params, eval_batches())
    log.start_progress(first_step, total_steps)
    for step in range(first_step, total_steps):
      if profiler:
        profiler.step(step, log)
      state, metrics = trainer.train_step(state, sharding.global_batch(next(train_batches), mesh))
      done = step + 1
      skipped = metrics.pop('update_skipped')
      steps.after_step(done, metrics)
      if unchecked is not None:
        count_nonfinite(*unchecked)
      unchecked = (done, skipped)
      evaluated = done % config.train.eval_every == 0 or done == total_steps
      if evaluated:
        steps.flush()
        last_eval = evaluate(trainer, state.params, eval_batches())
        log.scalars(done, last_eval, split='eval')
        steps.restart_clock(done)  # evaluation is not training time
      preempted = preemption.should_stop(done)
      if evaluated or preempted or done % config.checkpoint.every_steps == 0:
        steps.flush()  # a resumed run starts logging after the checkpoint's step
        checkpoints.save(done, state, config, train_batches, metrics={
            f'eval_{name}': value for name, value in last_eval.items()} if evaluated else None)
      if preempted:
        log.info(f'SIGTERM: saved step {done} of {total_steps} to {checkpoints.directory}; '
                 'rerun the same command to resume')
        break
    if profiler:
      profiler.stop(log)
    if unchecked is not None:
      count_nonfinite(*unchecked)
    last_train = steps.flush()
  return {'train': last_train, 'eval': last_eval, 'state': state, 'trainer': trainer,
          'preempted': preempted, 'skipped_steps': nonfinite['total']}
