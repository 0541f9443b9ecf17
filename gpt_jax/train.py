"""Train state, the Trainer (jitted sharded steps), the pretraining and fine-tuning trainers.

Steps are pure functions of (state, batch), compiled once with explicit
input/output shardings; the state argument is donated so parameters and
optimizer moments are updated in place.
"""

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gpt_jax import config as config_lib
from gpt_jax import optim, sharding
from gpt_jax.lstm import LSTM
from gpt_jax.model import GPT, GPTForTask, ModelConfig, decoder
from gpt_jax.tasks import transforms
from gpt_jax.tasks.task import TaskShape


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The train section: the batches, the length of the run, and its logging cadence."""

  batch_size: int  # global batch, in rows
  seq_len: int  # tokens per pretraining window (fine-tuning reads task.max_len)
  num_epochs: float  # sets the number of updates when num_steps is -1
  num_steps: int
  seed: int
  log_every: int
  eval_every: int  # pretraining; fine-tuning evaluates once per epoch
  eval_batches: int
  max_nonfinite_in_a_row: int
  steps_per_call: int
  hang_timeout_s: float  # the watchdog (gpt_jax.watchdog) ends a run this long without progress
  preemption_grace_s: float  # after SIGTERM, the process ends within this many seconds

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict) -> 'TrainConfig':
    return config_lib.section_view(cls, section, 'train')


@flax.struct.dataclass
class TrainState:
  """The arrays of a run; the Trainer keeps the same tree of their shardings and of their
  shapes (ShapeDtypeStructs), hence leaves typed Any."""

  step: Any  # train steps taken (batches consumed), including skipped non-finite ones
  params: Any
  opt_state: Any
  rng: Any  # base key; step k uses fold_in(rng, k) so a resumed run repeats its dropout


def _applied_updates(opt_state, default):
  """The optimizer's count of applied updates (what its schedule reads), or `default` for an
  optimizer that keeps none."""
  counts = optax.tree_utils.tree_get_all_with_path(opt_state, 'count')
  scheduled = [
    count for path, count in counts if getattr(path[-1], 'tuple_name', '') == 'ScaleByScheduleState'
  ]
  return (scheduled or [count for _, count in counts] or [default])[0]


def lm_loss_fn(model: GPT | LSTM) -> Callable:
  """Pretraining objective on windows of seq_len + 1 tokens: predict token t+1 from 0..t.

  The mean cross-entropy over every position, through the model's padded-vocabulary,
  chunked LM head (model.pad_vocab_to, model.lm_chunk; see gpt_jax.lm_head).
  """

  def loss_fn(params, windows, rng, deterministic):
    variables = {'params': params}
    hidden = model.apply(
      variables,
      windows[:, :-1],
      deterministic=deterministic,
      rngs=None if deterministic else {'dropout': rng},
      method='hidden_states',
    )
    targets = windows[:, 1:]
    weights = jnp.full(targets.shape, 1.0 / targets.size, jnp.float32)
    loss = model.apply(
      variables, hidden, targets, weights, model.config.lm_chunk, method='next_token_loss'
    )
    return loss, {}

  return loss_fn


def make_pretrainer(
  model_config: ModelConfig,
  optim_config: optim.OptimConfig,
  mesh: jax.sharding.Mesh,
  seq_len: int,
  total_steps: int,
) -> tuple[GPT | LSTM, 'Trainer']:
  """The language model (model.arch) and its next-token Trainer for `total_steps` updates."""
  model = decoder(model_config)
  tx, schedule = optim.make_optimizer(optim_config, total_steps)
  trainer = Trainer(
    init_params=lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))['params'],
    loss_fn=lm_loss_fn(model),
    tx=tx,
    schedule=schedule,
    mesh=mesh,
    grad_accum_steps=optim_config.grad_accum_steps,
  )
  return model, trainer


def make_finetuner(
  model_config: ModelConfig,
  task_shape: TaskShape,
  optim_config: optim.OptimConfig,
  mesh: jax.sharding.Mesh,
  total_steps: int,
  *,
  clf_pdrop: float,
  lm_coef: float,
  lm_chunk: int,
) -> tuple[GPTForTask, 'Trainer']:
  """The GPTForTask and its fine-tuning Trainer (the paper's L_task + lm_coef x L_LM).

  `clf_pdrop`, `lm_coef` and `lm_chunk` are the finetune section's fields of those names.
  """
  model = GPTForTask(model_config, task_shape.head_layout, task_shape.num_outputs, clf_pdrop)
  shape = task_shape.input_shape(1, model_config.n_ctx)  # any length: parameters don't depend on it
  tx, schedule = optim.make_optimizer(optim_config, total_steps)
  trainer = Trainer(
    init_params=lambda rng: model.init(
      rng, jnp.zeros(shape, jnp.int32), jnp.zeros(shape[:-1], jnp.int32)
    )['params'],
    loss_fn=transforms.finetune_loss_fn(model, lm_coef, task_shape.regression, lm_chunk),
    tx=tx,
    schedule=schedule,
    mesh=mesh,
    grad_accum_steps=optim_config.grad_accum_steps,
  )
  return model, trainer


class Trainer:
  """Compiles the sharded init, train and eval steps for one model, loss and mesh.

  `loss_fn(params, batch, rng, deterministic) -> (loss, aux)` defines the
  objective; `init_params(rng)` returns the model's *boxed* (logically
  annotated) parameters.
  """

  def __init__(
    self,
    init_params: Callable,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: jax.sharding.Mesh,
    grad_accum_steps: int = 1,
    max_replicated_fraction: float = sharding.MAX_REPLICATED_FRACTION,
  ):
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
    sharding.check_replication(abstract_params, self.param_shardings, mesh, max_replicated_fraction)
    abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
    replicated = sharding.replicated(mesh)
    opt_shardings = optax.tree_map_params(
      tx,
      lambda _, s: s,
      abstract_opt_state,
      self.param_shardings,
      transform_non_params=lambda _: replicated,
    )
    self.state_shardings = TrainState(
      step=replicated, params=self.param_shardings, opt_state=opt_shardings, rng=replicated
    )
    self.abstract_state = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=abstract_params,
      opt_state=abstract_opt_state,
      rng=jax.eval_shape(lambda: jax.random.key(0)),
    )
    batch = sharding.batch_sharding(mesh)

    self._jit_init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._jit_from_params = jax.jit(self._state_from_params, out_shardings=self.state_shardings)
    self._jit_train_step = jax.jit(
      self._train_step,
      in_shardings=(self.state_shardings, batch),
      out_shardings=(self.state_shardings, replicated),
      donate_argnums=0,
    )
    self._jit_train_steps = jax.jit(
      self._train_steps,
      in_shardings=(self.state_shardings, sharding.batch_sharding(mesh, steps_axis=True)),
      out_shardings=(self.state_shardings, replicated),
      donate_argnums=0,
    )
    self._jit_eval_step = jax.jit(
      self._eval_step, in_shardings=(self.param_shardings, batch), out_shardings=replicated
    )

  def activation_sharding(self) -> contextlib.AbstractContextManager[None]:
    """Context in which the model's logical activation constraints resolve on our mesh."""
    return sharding.use_mesh(self.mesh)

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
    return self._update(self._jit_train_step, state, batch)

  def train_steps(self, state: TrainState, batches) -> tuple[TrainState, dict]:
    """`len(batches)` optimizer updates in one compiled call, one per batch stacked on the
    leading axis; the metrics come stacked the same way. Each update equals train_step's.

    Why: XLA's CPU runtime allocates a call's temporaries afresh and the kernel pages them
    in on first touch (~1 M page faults for a 4 x 512 GPT-1 step); one call for several
    steps pays that once. On accelerators it saves dispatches only.
    """
    return self._update(self._jit_train_steps, state, batches)

  def _update(self, jitted_step, state, batch):
    with self.activation_sharding():
      state, metrics = jitted_step(state, batch)
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
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), rng=rng
    )

  def _train_step(self, state: TrainState, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_and_grad(params, microbatch, index):
      rng = jax.random.fold_in(step_rng, index)
      return jax.value_and_grad(self._loss_fn, has_aux=True)(params, microbatch, rng, False)

    (loss, aux), grads = optim.accumulate_gradients(
      loss_and_grad, state.params, batch, self._grad_accum_steps
    )
    grad_norm = optax.tree.norm(grads)

    def apply_update(params, opt_state):
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # A non-finite loss or gradient would poison the parameters and Adam's moments for
    # good: keep both unchanged and report the skip (the step still counts, so the
    # data and the dropout key move on). A cond rather than a select: no pass over
    # every parameter and moment to pick old or new.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.lax.cond(
      finite, apply_update, lambda *unchanged: unchanged, state.params, state.opt_state
    )
    # The rate this update applies: optax counts applied updates only, so after a skipped
    # step it runs behind state.step.
    metrics = {
      'loss': loss,
      'grad_norm': grad_norm,
      'learning_rate': self.schedule(_applied_updates(state.opt_state, state.step)),
      'update_skipped': ~finite,
      **aux,
    }
    updated = dataclasses.replace(state, step=state.step + 1, params=params, opt_state=opt_state)
    return updated, metrics

  def _train_steps(self, state: TrainState, batches):
    return jax.lax.scan(self._train_step, state, batches)

  def _eval_step(self, params, batch):
    loss, aux = self._loss_fn(params, batch, None, True)
    return {'loss': loss, **aux}
