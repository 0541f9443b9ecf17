"""Compile and step time of the train step on this machine, blocks unrolled vs scanned.

    python benchmarks/compile_time.py --config gpt1 --batch 4

Each variant (model.scan_layers False, True) runs in a fresh process with the
persistent compilation cache off, so nothing is reused; reports seconds to
build the trainer and lower + compile its train step (wall and CPU time: CPU
time is the steadier figure on a shared machine), the median of --steps
train steps after that, and the process's peak RSS.
"""

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host


def _compile(config_name: str, batch: int, scan_layers: bool, steps: int, queue) -> None:
  import statistics

  import jax
  import jax.numpy as jnp
  import numpy as np

  from gpt_jax import sharding, train
  from gpt_jax.config import load_config
  from gpt_jax.model import ModelConfig

  jax.config.update('jax_compilation_cache_dir', None)
  config = load_config(config_name, [f'model.scan_layers={scan_layers}'])
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  seq_len = config.train.seq_len
  start, cpu_start = time.perf_counter(), time.process_time()
  _, trainer = train.make_pretrainer(
    ModelConfig.from_config(config.model), config.optim, mesh, seq_len, 100
  )
  step = trainer.lower_train_step(jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32)).compile()
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
  with trainer.activation_sharding():
    state = trainer.init(jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (batch, seq_len + 1))
  batch_array = sharding.global_batch(tokens.astype(np.int32), mesh)
  times = []
  for _ in range(steps):
    begin = time.perf_counter()
    with trainer.activation_sharding():
      state, metrics = step(state, batch_array)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - begin)
  queue.put(
    (
      seconds,
      cpu_seconds,
      statistics.median(times) if times else float('nan'),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    )
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='gpt1')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--steps', type=int, default=3, help='train steps timed after compiling')
  parser.add_argument('--rounds', type=int, default=1)
  args = parser.parse_args()
  context = multiprocessing.get_context('spawn')
  for round_ in range(args.rounds):
    for scan_layers in (False, True):
      queue = context.Queue()
      process = context.Process(
        target=_compile, args=(args.config, args.batch, scan_layers, args.steps, queue)
      )
      process.start()
      seconds, cpu_seconds, step_seconds, peak_gib = queue.get()
      process.join()
      print(
        f'round {round_}: {args.config} scan_layers={scan_layers}: compiled in '
        f'{seconds:.1f} s ({cpu_seconds:.1f} s of CPU time), step {step_seconds:.3f} s, peak RSS {peak_gib:.2f} GiB',
        flush=True,
      )


if __name__ == '__main__':
  main()
