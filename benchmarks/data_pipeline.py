"""Data pipeline throughput against what the training step consumes, on this machine.

The pipeline must never be what a run waits for. Measured on the offline default
corpus, one after the other (each with the machine to itself):

  pipeline    grain batches of the tiny config's shape from the prepared token store
  train step  the tiny config's jitted, sharded train step on real batches
              -> the pipeline must deliver at least 10x what the step consumes
  local / remote store at the paper's batch (64 x 512 windows, what one v5e-8 host
              consumes): the store read through memory maps, and the same store read
              by byte-range requests that each sleep --latency_ms first (object
              storage's round trip) -> remote must give >= 1M tokens/s (the paper
              config's ~33 ms step on a v5e-8) and >= half the local rate
  checksums   both stores again without verifying block checksums: the ratio is what
              verifying costs (target: within 3 %)

    python benchmarks/data_pipeline.py [--config tiny] [--seconds 10] [--latency_ms 30]
                                       [--config.data.data_dir=DIR]

Trains the tokenizer and prepares the store first if needed (in data.data_dir).
Exits non-zero when a requirement is missed.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host

REQUIRED_RATIO = 10.0
REQUIRED_REMOTE_TOKENS_PER_S = 1e6
PAPER_BATCH, PAPER_SEQ_LEN = 64, 512  # configs/gpt1.py: one v5e-8 host's whole batch


def pipeline_tokens_per_s(batches, tokens_per_batch: int, seconds: float) -> float:
  for _ in range(10):  # start the reader threads and fill the prefetch buffer
    next(batches)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(batches)
    count += 1
  return count * tokens_per_batch / (time.perf_counter() - start)


class SlowFilesystem:
  """fsspec's local filesystem where every request waits `latency_s` first: a bucket's round
  trip without its bandwidth limit. The ranges of one `cat_ranges` call are concurrent
  requests (as gcsfs sends them), so they wait once, together."""

  def __init__(self, latency_s: float):
    import fsspec

    self._fs, self._latency_s = fsspec.filesystem('file'), latency_s

  def sizes(self, paths):
    return self._fs.sizes(paths)

  def cat_ranges(self, paths, starts, ends):
    time.sleep(self._latency_s)
    return self._fs.cat_ranges(paths, starts, ends)


def store_tokens_per_s(
  config, store, latency_ms: float | None, seconds: float, verify: bool = True
) -> float:
  """Pipeline throughput at the paper's batch from `store`, locally or with added latency,
  with or without verifying the block checksums."""
  from gpt_jax.data import pipeline, workflow

  filesystem = None if latency_ms is None else SlowFilesystem(latency_ms / 1000)
  tokens = store.tokens('train', filesystem=filesystem, verify=verify)
  threads = workflow.reader_threads(config, PAPER_BATCH, local=latency_ms is None)
  batches = pipeline.train_batches(
    tokens, seq_len=PAPER_SEQ_LEN, batch_size=PAPER_BATCH, seed=0, num_threads=threads
  )
  return pipeline_tokens_per_s(batches, PAPER_BATCH * PAPER_SEQ_LEN, seconds)


def train_step_tokens_per_s(config, data, tokens_per_batch: int, seconds: float) -> float:
  import jax

  from gpt_jax import sharding, train
  from gpt_jax.model import ModelConfig

  mesh = sharding.make_mesh(config.mesh)
  _, trainer = train.make_pretrainer(
    ModelConfig.from_config(config.model), config.optim, mesh, config.train.seq_len, 10**6
  )
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
  parser.add_argument(
    '--latency_ms',
    type=float,
    default=30.0,
    help='added latency of each range read of the remote store',
  )
  args = parser.parse_args(rest)
  config = config_lib.load_config(args.config, overrides)
  workflow.train_tokenizer(config)
  workflow.prepare(config)
  data = workflow.pretrain_data(config)
  tokens_per_batch = config.train.batch_size * config.train.seq_len  # tokens trained on

  pipeline = pipeline_tokens_per_s(data.train_batches, tokens_per_batch, args.seconds)
  step = train_step_tokens_per_s(config, data, tokens_per_batch, args.seconds)
  local = store_tokens_per_s(config, data.store, None, args.seconds)
  remote = store_tokens_per_s(config, data.store, args.latency_ms, args.seconds)
  local_unverified = store_tokens_per_s(config, data.store, None, args.seconds, verify=False)
  remote_unverified = store_tokens_per_s(
    config, data.store, args.latency_ms, args.seconds, verify=False
  )
  ratio = pipeline / step
  remote_ok = remote >= REQUIRED_REMOTE_TOKENS_PER_S and remote >= local / 2
  print(
    f'\n{args.config}: batch {config.train.batch_size} x seq_len {config.train.seq_len}, '
    f'{config.data.num_threads} reader threads'
  )
  print(f'data pipeline   {pipeline:14,.0f} tokens/s')
  print(f'train step      {step:14,.0f} tokens/s')
  print(
    f'ratio           {ratio:14.1f}x  (required: >= {REQUIRED_RATIO:.0f}x) '
    f'{"ok" if ratio >= REQUIRED_RATIO else "TOO SLOW"}'
  )
  print(f'\nbatch {PAPER_BATCH} x {PAPER_SEQ_LEN} windows')
  print(
    f'local store     {local:14,.0f} tokens/s (memory maps, '
    f'{workflow.reader_threads(config, PAPER_BATCH, True)} reader threads)'
  )
  print(
    f'remote store    {remote:14,.0f} tokens/s (+{args.latency_ms:g} ms per read, '
    f'{workflow.reader_threads(config, PAPER_BATCH, False)} reader threads, '
    f'{config.data.read_concurrency} requests in flight), {remote / local:.2f}x local '
    f'(required: >= 1,000,000 tokens/s and >= 0.5x) {"ok" if remote_ok else "TOO SLOW"}'
  )
  print(
    f'block checksums: local {local / local_unverified:.3f}x, remote '
    f'{remote / remote_unverified:.3f}x the throughput without them (target >= 0.97x)'
  )
  return 0 if ratio >= REQUIRED_RATIO and remote_ok else 1


if __name__ == '__main__':
  sys.exit(main())
