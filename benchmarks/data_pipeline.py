"""Data pipeline throughput against what the training step consumes, on this machine.

The pipeline must never be what a run waits for: it has to deliver at least 10x
the tokens/s the tiny config's train step consumes. Both are measured here on
the offline default corpus, one after the other (each with the machine to itself):

  pipeline    grain batches of the tiny config's shape from the prepared token store
  train step  the tiny config's jitted, sharded train step on real batches

    python benchmarks/data_pipeline.py [--config tiny] [--seconds 10] [--config.data.data_dir=DIR]

Trains the tokenizer and prepares the store first if needed (in data.data_dir).
Exits non-zero when the ratio is under 10.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REQUIRED_RATIO = 10.0


def pipeline_tokens_per_s(data, tokens_per_batch: int, seconds: float) -> float:
  for _ in range(10):  # start the reader threads and fill the prefetch buffer
    next(data.train_batches)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(data.train_batches)
    count += 1
  return count * tokens_per_batch / (time.perf_counter() - start)


def train_step_tokens_per_s(config, data, tokens_per_batch: int, seconds: float) -> float:
  import jax

  from gpt_jax import sharding, train
  from gpt_jax.model import ModelConfig

  mesh = sharding.make_mesh(config.mesh)
  _, trainer = train.make_pretrainer(ModelConfig.from_config(config.model), config.optim, mesh,
                                     config.train.seq_len, 10**6)
  state = trainer.init(jax.random.key(0))
  batches = [sharding.global_batch(next(data.train_batches), mesh) for _ in range(8)]
  for batch in batches[:2]:  # compile, then one warm step
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    state, metrics = trainer.train_step(state, batches[count % len(batches)])
    count += 1
  jax.block_until_ready(metrics)
  return count * tokens_per_batch / (time.perf_counter() - start)


def main(argv=None) -> int:
  from gpt_jax import config as config_lib
  from gpt_jax.cli import _split_overrides
  from gpt_jax.data import workflow

  rest, overrides = _split_overrides(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='tiny')
  parser.add_argument('--seconds', type=float, default=10.0, help='measuring time of each side')
  args = parser.parse_args(rest)
  config = config_lib.load_config(args.config, overrides)
  workflow.train_tokenizer(config)
  workflow.prepare(config)
  data = workflow.pretrain_data(config)
  tokens_per_batch = config.train.batch_size * config.train.seq_len  # tokens trained on

  pipeline = pipeline_tokens_per_s(data, tokens_per_batch, args.seconds)
  step = train_step_tokens_per_s(config, data, tokens_per_batch, args.seconds)
  ratio = pipeline / step
  print(f'\n{args.config}: batch {config.train.batch_size} x seq_len {config.train.seq_len}, '
        f'{config.data.num_threads} reader threads')
  print(f'data pipeline   {pipeline:14,.0f} tokens/s')
  print(f'train step      {step:14,.0f} tokens/s')
  print(f'ratio           {ratio:14.1f}x  (required: >= {REQUIRED_RATIO:.0f}x) '
        f'{"ok" if ratio >= REQUIRED_RATIO else "TOO SLOW"}')
  return 0 if ratio >= REQUIRED_RATIO else 1


if __name__ == '__main__':
  sys.exit(main())
