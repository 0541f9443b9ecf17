"""Compile the real sharded train step (pretraining or fine-tuning) for a TPU slice not at hand.

libtpu describes any TPU topology (`v5e:2x4`, `v4:2x2x1`, ...) as compile-only
devices. We lay the config's mesh over them, lower the Trainer's jitted train
step for abstract inputs (shapes only, no arrays), compile it ahead of time and
read XLA's per-chip memory and FLOP estimates, so a config can be checked
before paying for a slice. Needs libtpu (`pip install "gpt_jax[tpu]"`), no TPU.

    gpt-jax pretrain --config configs/gpt1_v5e_8.py --dry_run --topology v5e:2x4
    gpt-jax finetune --config finetune/race_middle --dry_run --topology v5e:2x4
"""

import dataclasses
import functools
import importlib.util
import math
import os
import re
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from gpt_jax import flops, optim, sharding, train
from gpt_jax.errors import UserError
from gpt_jax.model import REMAT_POLICIES, ModelConfig
from gpt_jax.tasks.load import load_task_shape

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  hbm_bytes: int  # per JAX device, i.e. per chip for every generation listed
  # libtpu's chip configuration: 'megacore' presents a chip's two TensorCores as
  # one device, as a TPU VM of that generation does.
  chip_config: str
  example: str  # a topology name and the slice it is


# HBM per chip from Google Cloud's TPU system architecture pages.
GENERATIONS = {
  'v4': TpuGeneration(32 * GiB, 'megacore', 'v4:2x2x1 (v4-8)'),
  'v5e': TpuGeneration(16 * GiB, 'default', 'v5e:2x4 (v5e-8)'),
  'v5p': TpuGeneration(95 * GiB, 'megacore', 'v5p:2x2x1 (v5p-8)'),
  'v6e': TpuGeneration(32 * GiB, 'default', 'v6e:2x4 (v6e-8)'),
}

_TOPOLOGY = re.compile(r'(?P<generation>[a-z0-9]+):(?P<dims>\d+(x\d+){1,2})')


def libtpu_installed() -> bool:
  return importlib.util.find_spec('libtpu') is not None


def _topology_help() -> str:
  return (
    'known topologies are GENERATION:CHIPS_PER_AXIS for generation '
    + ', '.join(GENERATIONS)
    + ', e.g. '
    + ', '.join(g.example for g in GENERATIONS.values())
    + ', v5e:8x8 (v5e-64)'
  )


def _tell_libtpu_it_is_alone() -> None:
  """Spares libtpu its search for the TPU VM it runs on, and its one-process lock.

  Without these it queries the cloud metadata server, logs errors about unknown
  workers, and refuses to load in a second process at the same time (a lock
  that guards TPU chips; compiling touches none). They describe this host, not
  the compiled topology, and are left alone on a machine that has TPU chips.
  """
  if sharding.has_tpu_chips():
    return
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-1')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


def topology_devices(topology: str) -> tuple[list[jax.Device], TpuGeneration]:
  """The compile-only devices of a named TPU topology, and its generation's facts."""
  match = _TOPOLOGY.fullmatch(topology)
  if not match or match['generation'] not in GENERATIONS:
    raise UserError(f'unknown TPU topology {topology!r}; {_topology_help()}')
  if not libtpu_installed():
    raise UserError(
      'the dry run compiles with libtpu, which is not installed; '
      'pip install "gpt_jax[tpu]" (it needs no TPU)'
    )
  generation = GENERATIONS[match['generation']]
  _tell_libtpu_it_is_alone()
  try:
    description = topologies.get_topology_desc(
      topology_name=topology, platform='tpu', chip_config_name=generation.chip_config
    )
  except jax.errors.JaxRuntimeError as error:
    reason = str(error).splitlines()[0]
    raise UserError(
      f'libtpu rejected TPU topology {topology!r} ({reason}); {_topology_help()}'
    ) from None
  return list(description.devices), generation


@dataclasses.dataclass(frozen=True)
class DryRunReport:
  """What one compiled train step needs of each chip. Bytes and FLOPs are per chip.

  The figures from XLA are None when it refused to compile because the step
  does not fit; `out_of_memory` then holds its reason.
  """

  topology: str
  device_kind: str
  num_chips: int
  mesh_shape: dict
  hbm_bytes: int
  param_bytes: int  # this chip's shards of the parameters ...
  opt_state_bytes: int  # ... and of the optimizer state (from the shardings)
  batch_bytes: int
  model_flops: float  # matmuls of the model (flops.train_flops_per_token), no recompute
  scan_layers: bool  # XLA's FLOP count then holds the scanned loop body once, not n_layer times
  compile_seconds: float
  temp_bytes: int | None = None  # activations and other temporaries (XLA)
  code_bytes: int | None = None  # the compiled program
  peak_bytes: int | None = None  # XLA's peak: state, batch, temporaries and code at once
  xla_flops: float | None = None  # XLA's count, recomputation and elementwise work included
  out_of_memory: str = ''

  @property
  def fits(self) -> bool:
    # peak_bytes is None only when the compiler ran out of memory.
    return (
      not self.out_of_memory and self.peak_bytes is not None and self.peak_bytes <= self.hbm_bytes
    )

  def table(self) -> str:
    mesh = ' '.join(f'{axis}={size}' for axis, size in self.mesh_shape.items())
    rows = [
      ('parameters', self.param_bytes),
      ('optimizer state', self.opt_state_bytes),
      ('batch', self.batch_bytes),
      ('activations + temporaries', self.temp_bytes),
      ('generated code', self.code_bytes),
      ('peak (XLA)', self.peak_bytes),
      ('HBM', self.hbm_bytes),
    ]
    lines = [
      f'{self.topology}: {self.num_chips} x {self.device_kind}, mesh {mesh}, '
      f'compiled in {self.compile_seconds:.0f} s',
      f'  {"per chip":<27}{"GiB":>8}',
    ]
    lines += [
      f'  {name:<27}' + ('       -' if count is None else f'{count / GiB:>8.3f}')
      for name, count in rows
    ]
    model = f'{self.model_flops:.3e} (model matmuls)'
    if self.out_of_memory:
      lines.append(f'  FLOPs per step per chip: {model}')
      lines.append(f'  DOES NOT FIT: {self.out_of_memory}')
    else:
      assert self.peak_bytes is not None  # known whenever the step compiled
      once = ' with the scanned block counted once' if self.scan_layers else ''
      lines.append(f'  FLOPs per step per chip: {self.xla_flops:.3e} (XLA{once}), {model}')
      verdict = 'fits' if self.fits else 'DOES NOT FIT'
      lines.append(
        f'  {verdict}: peak {self.peak_bytes / GiB:.2f} GiB = '
        f'{self.peak_bytes / self.hbm_bytes:.0%} of {self.hbm_bytes / GiB:.0f} GiB HBM'
      )
    return '\n'.join(lines)


def dry_run(config, topology: str) -> DryRunReport:
  """Compiles `config`'s pretraining step for `topology` (e.g. 'v5e:2x4') and measures it."""
  devices, generation = topology_devices(topology)
  model_config = ModelConfig.from_config(config.model)
  seq_len, batch_size = config.train.seq_len, config.train.batch_size
  if seq_len > model_config.n_ctx:
    raise UserError(f'train.seq_len={seq_len} exceeds model.n_ctx={model_config.n_ctx}')
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch(batch_size, mesh)
  # The schedule's length changes no shape or cost of the compiled step.
  _, trainer = train.make_pretrainer(
    model_config,
    optim.OptimConfig.from_config(config.optim),
    mesh,
    seq_len,
    max(int(config.train.num_steps), 1),
  )
  batch = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32)
  return _compile_and_measure(
    trainer,
    batch,
    topology,
    generation,
    flops.train_flops_per_token(model_config, seq_len) * batch_size * seq_len,
    model_config.scan_layers,
  )


def finetune_dry_run(config, topology: str) -> DryRunReport:
  """Compiles `config`'s fine-tuning step for `topology`, for batches of task.max_len tokens.

  The model's shape comes from config.model (a real run takes it from
  finetune.init), the task's from the registry or its files (the data need not
  be prepared). Bucketed batches are never longer than max_len, so this is the
  largest step the run compiles.
  """
  devices, generation = topology_devices(topology)
  model_config = ModelConfig.from_config(config.model)
  max_len = config.task.max_len if config.task.max_len > 0 else model_config.n_ctx
  if max_len > model_config.n_ctx:
    raise UserError(f'task.max_len={max_len} exceeds model.n_ctx={model_config.n_ctx}')
  mesh = sharding.make_mesh(config.mesh, devices)
  batch_size = config.train.batch_size
  sharding.check_batch(batch_size, mesh)
  task_shape = load_task_shape(config.task)
  _, trainer = train.make_finetuner(
    model_config,
    task_shape,
    optim.OptimConfig.from_config(config.optim),
    mesh,
    total_steps=1,
    clf_pdrop=config.finetune.clf_pdrop,
    lm_coef=config.finetune.lm_coef,
    lm_chunk=config.finetune.lm_chunk,
  )
  tokens = task_shape.input_shape(batch_size, max_len)
  label = jnp.float32 if task_shape.regression else jnp.int32
  batch = {
    'tokens': jax.ShapeDtypeStruct(tokens, jnp.int32),
    'lm_mask': jax.ShapeDtypeStruct(tokens, jnp.int32),
    'extract_index': jax.ShapeDtypeStruct(tokens[:-1], jnp.int32),
    **{
      key: jax.ShapeDtypeStruct((batch_size,), dtype)
      for key, dtype in (('label', label), ('valid', jnp.int32), ('position', jnp.int32))
    },
  }
  return _compile_and_measure(
    trainer,
    batch,
    topology,
    generation,
    flops.train_flops_per_token(model_config, max_len) * math.prod(tokens),
    model_config.scan_layers,
  )


def _compile_and_measure(
  trainer: train.Trainer,
  batch,
  topology: str,
  generation: TpuGeneration,
  model_flops: float,
  scan_layers: bool,
) -> DryRunReport:
  """Compiles the trainer's step for the abstract `batch` and reads XLA's per-chip figures."""
  mesh = trainer.mesh
  state, shardings = trainer.abstract_state, trainer.state_shardings
  report = functools.partial(
    DryRunReport,
    topology=topology,
    device_kind=mesh.devices.flat[0].device_kind,
    num_chips=mesh.size,
    mesh_shape=dict(mesh.shape),
    hbm_bytes=generation.hbm_bytes,
    param_bytes=sharding.tree_bytes(state.params, shardings.params),
    opt_state_bytes=sharding.tree_bytes(state.opt_state, shardings.opt_state),
    batch_bytes=sharding.tree_bytes(
      batch, jax.tree.map(lambda _: sharding.batch_sharding(mesh), batch)
    ),
    model_flops=model_flops / mesh.size,
    scan_layers=scan_layers,
  )

  start = time.perf_counter()
  try:
    compiled = trainer.lower_train_step(batch).compile()
  except jax.errors.JaxRuntimeError as error:
    # The TPU compiler refuses a program that cannot fit in HBM; that is our answer.
    reason = str(error).splitlines()[0]
    if 'RESOURCE_EXHAUSTED' not in reason:
      raise
    return report(compile_seconds=time.perf_counter() - start, out_of_memory=reason)
  compile_seconds = time.perf_counter() - start
  memory, costs = compiled.memory_analysis(), compiled.cost_analysis()
  if memory is None or costs is None:
    raise UserError(
      f'the compiler for {topology} reports no memory or cost analysis to dry-run with'
    )
  return report(
    compile_seconds=compile_seconds,
    temp_bytes=memory.temp_size_in_bytes,
    code_bytes=memory.generated_code_size_in_bytes,
    peak_bytes=memory.peak_memory_in_bytes,
    xla_flops=costs['flops'],
  )


def remat_reports(config, topology: str, policies=REMAT_POLICIES) -> dict[str, DryRunReport]:
  """Dry-runs `config` once per remat policy, all else unchanged."""
  reports = {}
  for policy in policies:
    variant = config.copy_and_resolve_references()
    variant.model.remat = policy
    reports[policy] = dry_run(variant, topology)
  return reports


def remat_table(config, topology: str, reports: dict[str, DryRunReport]) -> str:
  """A markdown table of per-chip peak memory and FLOPs from `remat_reports`.

  Policies trade memory for recomputation: XLA's FLOP count includes the
  recomputed forward pass, so the FLOPs column shows what each policy costs
  (with scan_layers, for the scanned block counted once: XLA does not multiply
  a loop body by its trip count).
  """
  lines = [
    f'{config.model.n_layer} layers x {config.model.n_embd}, batch '
    f'{config.train.batch_size} x {config.train.seq_len}, scan_layers='
    f'{config.model.scan_layers}, on {topology} (per chip)',
    '| model.remat | peak GiB | temporaries GiB | XLA FLOPs / step | compile s |',
    '| --- | --- | --- | --- | --- |',
  ]
  for policy, report in reports.items():
    if report.out_of_memory:
      lines.append(f'| {policy} | does not fit | - | - | {report.compile_seconds:.0f} |')
      continue
    assert report.peak_bytes is not None and report.temp_bytes is not None  # it compiled
    lines.append(
      f'| {policy} | {report.peak_bytes / GiB:.2f} | {report.temp_bytes / GiB:.2f} | '
      f'{report.xla_flops:.3e} | {report.compile_seconds:.0f} |'
    )
  return '\n'.join(lines)
