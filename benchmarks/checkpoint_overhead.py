"""Does saving checkpoints stall training? Step time with and without saves.

Trains a config's model on random tokens in blocks of steps, cycling through
three modes so all see the same machine load:

  none   no checkpoints
  async  a checkpoint every --save_every steps, written in the background
         (gpt_jax's default, checkpoint.async_save=True)
  sync   the same checkpoints, each written before training goes on
  async_no_digests  async without the arrays' digests (gpt_jax.array_digest), to show
         what computing them on the devices costs

Each block ends by waiting for its saves to be on disk, so a background write
still running at the end is charged to its block.

    python benchmarks/checkpoint_overhead.py --config small [--batch_size 16] [--save_every 5]

Prints the median step time per mode and its overhead over `none`, the size of
one checkpoint, and how long the save call blocks the training loop.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gpt_jax import array_digest, checkpoint, sharding, train  # noqa: E402
from gpt_jax.config import load_config  # noqa: E402
from gpt_jax.model import ModelConfig  # noqa: E402

MODES = ('none', 'async', 'sync', 'async_no_digests')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='small')
  parser.add_argument('--batch_size', type=int, help="global batch (default: the config's)")
  parser.add_argument('--save_every', type=int, default=5)
  parser.add_argument('--saves_per_block', type=int, default=2)
  parser.add_argument('--blocks', type=int, default=5, help='blocks per mode')
  parser.add_argument('--workdir', help='where to write checkpoints (default: a temporary dir)')
  args = parser.parse_args()

  config = load_config(args.config)
  if args.batch_size:
    config.train.batch_size = args.batch_size
  config.checkpoint.update(keep=2, keep_best=0)
  batch_size, seq_len = config.train.batch_size, config.train.seq_len
  mesh = sharding.make_mesh(config.mesh)
  _, trainer = train.make_pretrainer(
    ModelConfig.from_config(config.model), config.optim, mesh, seq_len, 10**6
  )
  state = trainer.init(jax.random.key(0))
  rows = (
    np.random.default_rng(0)
    .integers(0, config.model.vocab_size, (batch_size, seq_len + 1))
    .astype(np.int32)
  )
  batch = sharding.global_batch(rows, mesh)
  state, metrics = trainer.train_step(state, batch)  # compile
  jax.block_until_ready(metrics)

  workdir = Path(args.workdir or tempfile.mkdtemp(prefix='checkpoint_overhead_'))
  savers = {}
  for mode in MODES[1:]:
    mode_config = config.checkpoint.copy_and_resolve_references()
    mode_config.async_save = mode != 'sync'
    savers[mode] = checkpoint.Checkpointer(
      workdir / mode, mode_config, digest_arrays=mode != 'async_no_digests'
    )
  block_steps = args.save_every * args.saves_per_block
  step_times = {mode: [] for mode in MODES}
  save_call_times = {mode: [] for mode in MODES[1:]}
  step = 1
  for block in range(args.blocks + 1):  # block 0 warms up orbax; not counted
    for mode in MODES:
      start = time.perf_counter()
      for _ in range(block_steps):
        state, metrics = trainer.train_step(state, batch)
        step += 1
        if mode != 'none' and step % args.save_every == 0:
          jax.block_until_ready(state)  # (so does the loop) time the save, not the step
          call_start = time.perf_counter()
          savers[mode].save(step, state, config)
          if block:
            save_call_times[mode].append(time.perf_counter() - call_start)
      jax.block_until_ready(metrics)
      if mode != 'none':
        savers[mode].wait()
      if block:
        step_times[mode].append((time.perf_counter() - start) / block_steps)
  for saver in savers.values():
    saver.close()

  size = sum(f.stat().st_size for f in (workdir / 'async').rglob('*') if f.is_file()) / 2
  baseline = statistics.median(step_times['none'])
  print(
    f'{args.config}: batch {batch_size} x {seq_len} tokens on {mesh.size} '
    f'{jax.devices()[0].platform} device(s); a checkpoint every {args.save_every} steps, '
    f'{size / 2**20:.0f} MiB each; {args.blocks} blocks of {block_steps} steps per mode'
  )
  for mode in MODES:
    median = statistics.median(step_times[mode])
    line = (
      f'  {mode:16s}  step {median * 1e3:8.1f} ms (blocks: '
      f'{", ".join(f"{t * 1e3:.0f}" for t in step_times[mode])})  '
      f'overhead {100 * (median / baseline - 1):+5.1f}%'
    )
    if mode != 'none':
      line += f'  save() blocks the loop {statistics.median(save_call_times[mode]) * 1e3:.0f} ms'
    print(line)
  with_digests, without = (
    statistics.median(save_call_times[mode]) for mode in ('async', 'async_no_digests')
  )
  # Each block runs every mode back to back, so the ratio within a block sees one load.
  paired = statistics.median(
    a / b for a, b in zip(step_times['async'], step_times['async_no_digests'])
  )
  print(
    f'digests: save() {with_digests / without:.3f}x without them; step with saves '
    f'{paired:.3f}x (median over blocks of the ratio within each; target <= 1.03x)'
  )
  # The digests' own work, timed alone: an upper bound of what they add to the steps between
  # two saves, free of the write's noise (on a CPU the pass competes with training for cores).
  array_digest.digests(state)  # compile
  passes = []
  for _ in range(5):
    start = time.perf_counter()
    array_digest.digests(state)
    passes.append(time.perf_counter() - start)
  digest_pass = statistics.median(passes)
  print(
    f'digest pass over the state: {digest_pass * 1e3:.1f} ms per save, '
    f'{100 * digest_pass / (args.save_every * baseline):.2f}% of the {args.save_every} steps '
    'between two saves'
  )
  if not args.workdir:
    shutil.rmtree(workdir)


if __name__ == '__main__':
  main()
