"""Device mesh, the logical-axis rules table, and shardings for state and batches.

We use GSPMD with *Auto* mesh axes: parameters and activations carry logical
names (see model.py), `LOGICAL_RULES` maps them to the mesh axes
('data', 'fsdp', 'tensor'), and XLA inserts the collectives.
"""

import contextlib
import glob
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gpt_jax.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# One table maps every logical axis to mesh axes. Parameters are sharded over
# 'fsdp' along their embedding dimension (ZeRO-3 style) and over 'tensor'
# along heads / MLP / vocabulary (Megatron style); the batch over data x fsdp.
LOGICAL_RULES = (
  ('activation_batch', BATCH_AXES),
  ('activation_length', None),
  ('activation_embed', None),
  ('activation_heads', 'tensor'),
  ('activation_mlp', 'tensor'),
  ('vocab', 'tensor'),
  ('embed', 'fsdp'),
  ('position', None),
  ('qkv', None),
  ('heads', 'tensor'),
  ('head_dim', None),
  ('mlp', 'tensor'),
  ('classes', None),
  # The LSTM (gpt_jax/lstm.py): its state units over 'tensor' (as the MLP's), the units a
  # recurrent kernel reads as 'embed' (over 'fsdp'), its four gates whole.
  ('lstm', 'tensor'),
  ('lstm_in', 'fsdp'),
  ('gates', None),
  (
    'layers',
    None,
  ),  # the stacked blocks of model.scan_layers: every device holds every layer's shard
)


class ShardingError(UserError):
  """A configuration that cannot be laid out on the requested mesh."""


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves the mesh sizes; at most one axis may be -1 (= all remaining devices)."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  free = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  if len(free) > 1:
    raise ShardingError(f'only one mesh axis may be -1, got {free}; set the others explicitly')
  if any(size == 0 or size < -1 for size in sizes):
    raise ShardingError(f'mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}')
  fixed = math.prod(size for size in sizes if size != -1)
  if free:
    if num_devices % fixed:
      raise ShardingError(
        f'{num_devices} devices cannot be split over mesh '
        f'{dict(zip(MESH_AXES, sizes))}: the fixed axes need a divisor of {num_devices}'
      )
    sizes[MESH_AXES.index(free[0])] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ShardingError(
      f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
      f'{num_devices} are available; set config.mesh so the sizes multiply to {num_devices}'
    )
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(
    shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def logical_to_mesh(specs: Any, mesh: Mesh) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def param_shardings(abstract_boxed_params: Any, mesh: Mesh) -> Any:
  """The mesh shardings of a model's parameters, from their logical axis names (checked to divide)."""
  check_divisible(abstract_boxed_params, mesh)
  return logical_to_mesh(nn.get_partition_spec(abstract_boxed_params), mesh)


def check_divisible(abstract_boxed_params, mesh: Mesh) -> None:
  """Fails, naming parameter, dimension and mesh axis, if a parameter cannot be split evenly."""
  specs = nn.get_partition_spec(abstract_boxed_params)
  shapes = nn.unbox(abstract_boxed_params)
  for (path, spec), shape in zip(
    jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0],
    jax.tree.leaves(shapes),
  ):
    mesh_spec = nn.logical_to_mesh_axes(spec, LOGICAL_RULES)
    assert mesh_spec is not None  # None only for a None spec, and every leaf here has one
    for dim, (logical, axes) in enumerate(zip(spec, mesh_spec)):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      ways = math.prod(mesh.shape[a] for a in axes)
      if shape.shape[dim] % ways:
        name = '/'.join(str(getattr(k, 'key', k)) for k in path)
        raise ShardingError(
          f'parameter {name} dimension {dim} ({logical}, size {shape.shape[dim]}) cannot be split '
          f'{ways} ways over mesh axis {"x".join(axes)}; change config.mesh or the model size'
        )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, steps_axis: bool = False) -> NamedSharding:
  """Shards the batch dimension over data x fsdp; the rest is replicated.

  The batch dimension leads, or with `steps_axis` comes second: the leading one
  then stacks the batches of several train steps run in one call.
  """
  return NamedSharding(
    mesh, PartitionSpec(None, BATCH_AXES) if steps_axis else PartitionSpec(BATCH_AXES)
  )


def check_batch(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-process batch size, failing clearly when the batch cannot be split."""
  ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if global_batch_size % ways:
    raise ShardingError(
      f'train.batch_size={global_batch_size} cannot be split over the {ways} batch shards '
      f'(mesh data x fsdp = {mesh.shape["data"]} x {mesh.shape["fsdp"]}); '
      f'use a multiple of {ways}'
    )
  if global_batch_size % jax.process_count():
    raise ShardingError(
      f'train.batch_size={global_batch_size} is not divisible by the '
      f'{jax.process_count()} processes'
    )
  return global_batch_size // jax.process_count()


def global_batch(local_batch: np.ndarray, mesh: Mesh, steps_axis: bool = False) -> jax.Array:
  """Assembles the global batch array from this process's rows (multi-host safe)."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh, steps_axis), local_batch)


# With fsdp or tensor parallelism on, at most this fraction of the parameter bytes
# may be held whole by every device. Biases, LayerNorms and (under tensor
# parallelism) position embeddings are replicated by design; they are well under
# this in any real model. A module whose weights lost their logical names is not.
MAX_REPLICATED_FRACTION = 0.05


def check_replication(
  abstract_params, param_shardings, mesh: Mesh, max_fraction: float = MAX_REPLICATED_FRACTION
) -> None:
  """Fails, naming the biggest offenders, when fsdp / tensor parallelism leaves too much replicated.

  A parameter is replicated when its sharding splits it over no mesh axis of
  size > 1; every device then holds (and updates) its own full copy.
  """
  if mesh.shape['fsdp'] == 1 and mesh.shape['tensor'] == 1:
    return  # pure data parallelism replicates everything on purpose
  sizes = {name: tree_bytes(param) for name, param in named_leaves(abstract_params).items()}
  replicated_names = [
    name
    for name, param_sharding in named_leaves(param_shardings).items()
    if param_sharding.is_fully_replicated
  ]
  replicated_bytes = sum(sizes[name] for name in replicated_names)
  total_bytes = sum(sizes.values())
  if replicated_bytes <= max_fraction * total_bytes:
    return
  biggest = sorted(replicated_names, key=sizes.__getitem__, reverse=True)[:5]
  listing = ', '.join(f'{name} ({_readable_bytes(sizes[name])})' for name in biggest)
  raise ShardingError(
    f'{replicated_bytes / total_bytes:.0%} of the parameter bytes would be replicated on every '
    f'device of mesh {dict(mesh.shape)} (at most {max_fraction:.0%} allowed with fsdp / tensor '
    f'parallelism); biggest: {listing}. Give those parameters logical axis names that '
    'LOGICAL_RULES maps onto the fsdp or tensor axis, use a data-parallel mesh '
    '(mesh.fsdp=1, mesh.tensor=1), or, for a toy model, raise max_replicated_fraction'
  )


def _readable_bytes(count: int) -> str:
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if count >= scale:
      return f'{count / scale:.1f} {unit}'
  return f'{count} B'


# Helpers every module that places arrays on a mesh shares.


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None) -> Iterator[None]:
  """Context in which the model's logical activation constraints resolve on `mesh`.

  None leaves placement to JAX (one device, no constraints).
  """
  if mesh is None:
    yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """jax.ShapeDtypeStructs that carry their target shardings (to restore or compile into)."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


def named_leaves(tree) -> dict:
  """{'tokens_embed/embedding': leaf, ...}: a tree's leaves by their slash-joined path."""
  return {
    '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def tree_bytes(abstract_tree, shardings=None) -> int:
  """Bytes of every array in `abstract_tree`, or of one device's shards of them."""
  leaves = jax.tree.leaves(abstract_tree)
  shapes = (
    [x.shape for x in leaves]
    if shardings is None
    else [s.shard_shape(x.shape) for x, s in zip(leaves, jax.tree.leaves(shardings))]
  )
  return sum(math.prod(shape) * np.dtype(x.dtype).itemsize for x, shape in zip(leaves, shapes))


def has_tpu_chips() -> bool:
  """Whether TPU chips are attached to this host (a Cloud TPU VM), without starting a backend.

  Environment variables alone are not evidence: the TPU dry run sets
  TPU_WORKER_HOSTNAMES and friends on machines without a TPU.
  """
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))
