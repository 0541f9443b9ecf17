"""One process of the multi-process training test (tests/test_multiprocess.py).

    python tests/multiprocess_worker.py OUT.npz STEPS [COORDINATOR NUM_PROCESSES PROCESS_ID]

Trains the tiny test model for STEPS steps on fixed global batches, each
process feeding only its own rows of every batch, and (process 0) writes the
losses and the final parameters to OUT.npz. Without the last three arguments
it is a one-process run on all local devices.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the tests' helpers

import numpy as np  # noqa: E402

MESH = {'data': 2, 'fsdp': 2, 'tensor': 2}


def global_batches(config, steps: int) -> np.ndarray:
  """The same (steps, batch, seq_len + 1) token ids in every process."""
  shape = (steps, config.train.batch_size, config.train.seq_len + 1)
  return np.random.default_rng(0).integers(0, config.model.vocab_size, shape, dtype=np.int32)


def local_rows(batch_shape, mesh) -> np.ndarray:
  """The rows of a global batch this process's devices hold, in order."""
  from gpt_jax import sharding

  indices = sharding.batch_sharding(mesh).addressable_devices_indices_map(batch_shape)
  rows = {row for index in indices.values() for row in range(batch_shape[0])[index[0]]}
  return np.array(sorted(rows))


def main(out: str, steps: int, *cluster: str) -> None:
  from gpt_jax import distributed

  if cluster:
    coordinator, num_processes, process_id = cluster
    distributed.initialize(coordinator, int(num_processes), int(process_id))
  import helpers
  import jax
  from jax.experimental import multihost_utils

  from gpt_jax import sharding

  config = helpers.tiny_config(n_layer=1)
  mesh = sharding.make_mesh(MESH)
  _, trainer = helpers.make_trainer(config, mesh, total_steps=steps)
  batches = global_batches(config, steps)
  rows = local_rows(batches.shape[1:], mesh)
  state = trainer.init(jax.random.key(0))
  losses = []
  for batch in batches:
    state, metrics = trainer.train_step(state, sharding.global_batch(batch[rows], mesh))
    losses.append(float(metrics['loss']))
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if jax.process_index() == 0:
    flat = {
      '/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    np.savez(
      out,
      losses=np.array(losses),
      num_rows=len(rows),
      num_processes=jax.process_count(),
      num_devices=jax.device_count(),
      **flat,
    )


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
