"""Compile time of the train step on this machine, blocks unrolled vs scanned (model.scan_layers).

    python benchmarks/compile_time.py --config gpt1 --batch 4

Each variant compiles in a fresh process with the persistent compilation cache
off, so nothing is reused; reports seconds to lower + compile the sharded
train step and the process's peak RSS.
"""

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _compile(config_name: str, batch: int, scan_layers: bool, queue) -> None:
  import jax
  import jax.numpy as jnp

  from gpt_jax import sharding, train
  from gpt_jax.config import load_config
  from gpt_jax.model import ModelConfig

  jax.config.update('jax_compilation_cache_dir', None)
  config = load_config(config_name, [f'model.scan_layers={scan_layers}'])
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  seq_len = config.train.seq_len
  start = time.perf_counter()
  _, trainer = train.make_pretrainer(ModelConfig.from_config(config.model), config.optim, mesh,
                                     seq_len, 100)
  trainer.lower_train_step(jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32)).compile()
  seconds = time.perf_counter() - start
  queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='gpt1')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--rounds', type=int, default=1)
  args = parser.parse_args()
  context = multiprocessing.get_context('spawn')
  for round_ in range(args.rounds):
    for scan_layers in (False, True):
      queue = context.Queue()
      process = context.Process(target=_compile,
                                args=(args.config, args.batch, scan_layers, queue))
      process.start()
      seconds, peak_gib = queue.get()
      process.join()
      print(f'round {round_}: {args.config} scan_layers={scan_layers}: compiled in '
            f'{seconds:.1f} s, peak RSS {peak_gib:.2f} GiB', flush=True)


if __name__ == '__main__':
  main()
