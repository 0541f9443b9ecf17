"""Multi-process start-up: one JAX process per host (TPU VM worker, GPU node), or several per host.

    gpt-jax pretrain ...                          # TPU VM / pod slice, SLURM, Open MPI: automatic
    gpt-jax pretrain ... --coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 0

`initialize` must run before anything asks JAX for its devices (that fixes the
device set, after which `jax.distributed.initialize` refuses to run). Once it
has run, `jax.devices()` lists the devices of every process, meshes span hosts,
and each process feeds its own rows of every global batch
(`sharding.global_batch`).
"""

import argparse
import importlib.metadata
import importlib.util
import os

from gpt_jax import sharding
from gpt_jax.errors import UserError


def skip_absent_tpu() -> None:
  """Keeps JAX from starting libtpu on a host without TPU chips.

  JAX tries every installed backend at start-up. With libtpu installed (the
  `tpu` extra, also what the dry run compiles with) and no chips, libtpu then
  looks for a TPU VM: it prints warnings about unknown accelerator types and
  worker hostnames, or fails on another process's lock, before JAX falls back
  to the CPU. Restricting JAX to the CPU skips that; the dry run loads libtpu
  by itself for its compile-only devices, so it keeps working. Must run before
  JAX starts a backend; left alone where JAX_PLATFORMS is set, on TPU VMs, and
  where a GPU plugin is installed.
  """
  if os.environ.get('JAX_PLATFORMS') or sharding.has_tpu_chips():
    return
  if importlib.util.find_spec('libtpu') is None:
    return
  if any(
    name.startswith(('jax-cuda', 'jax_cuda', 'jax-rocm', 'jax_rocm'))
    for name in (dist.metadata['Name'] or '' for dist in importlib.metadata.distributions())
  ):
    return
  import jax

  jax.config.update('jax_platforms', 'cpu')


def add_flags(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group(
    'multi-process runs',
    'Automatic on TPU VMs and pod slices (one process per worker). On '
    'CPU or GPU clusters start one process per host, each with the same --coordinator_address '
    'and --num_processes and its own --process_id.',
  )
  group.add_argument(
    '--coordinator_address',
    metavar='HOST:PORT',
    help="process 0's host and a free port, reachable from every process",
  )
  group.add_argument('--num_processes', type=int, metavar='N', help='processes in the run')
  group.add_argument('--process_id', type=int, metavar='I', help='this process, 0 .. N-1')


def initialize_from_args(args: argparse.Namespace) -> None:
  initialize(args.coordinator_address, args.num_processes, args.process_id)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins this process to a multi-process run when flags or the environment say it is one.

  With all three arguments the run is explicit (CPU or GPU clusters, or
  several processes on one machine); they override what the environment says.
  Without any, it starts up only on a TPU VM or under SLURM or Open MPI, where
  `jax.distributed.initialize()` finds the other processes itself; otherwise
  this is a one-process run and nothing happens.
  """
  given = {
    '--coordinator_address': coordinator_address,
    '--num_processes': num_processes,
    '--process_id': process_id,
  }
  if all(value is None for value in given.values()):
    if _in_a_cluster():
      import jax

      jax.distributed.initialize()
    return
  missing = [flag for flag, value in given.items() if value is None]
  if missing:
    raise UserError(
      f'a multi-process run needs --coordinator_address, --num_processes and '
      f'--process_id together; missing {", ".join(missing)}'
    )
  assert coordinator_address is not None and num_processes is not None and process_id is not None
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise UserError(
      f'--process_id {process_id} must be in 0 .. --num_processes - 1 '
      f'(--num_processes {num_processes})'
    )
  if ':' not in coordinator_address:
    raise UserError(
      f'--coordinator_address {coordinator_address!r}: expected HOST:PORT, e.g. 10.0.0.1:1234'
    )
  import jax

  # CPU devices of different processes talk over gloo (TCP); without it XLA's CPU
  # client has no cross-process collectives. GPU and TPU ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _in_a_cluster() -> bool:
  """Whether this process was started as one of several by a TPU VM, SLURM or Open MPI.

  These are the environments `jax.distributed.initialize()` configures itself
  in; anywhere else a run without the explicit flags is a one-process run.
  """
  if sharding.has_tpu_chips():
    return True
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_STEP_NODELIST' in os.environ:
    return True
  return int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1


def barrier(name: str, timeout_s: int = 24 * 3600) -> None:
  """Returns once every process of the run has called barrier(name); nothing in a one-process
  run. The long default timeout covers a process tokenising its share of a large corpus."""
  import jax

  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost

  multihost.sync_global_processes(name, timeout=timeout_s)
