"""Compiled memory of the pretraining step with and without the padded, chunked LM head.

The same step compiled per (model.pad_vocab_to, model.lm_chunk) setting: for a TPU slice
through libtpu's ahead-of-time compiler (gpt_jax.dryrun; no TPU needed) and for this
machine's CPU, with XLA's own figures (compiled.memory_analysis()). Deterministic: no step
runs, so a loaded machine gives the same numbers as a quiet one.

    python benchmarks/lm_head_memory.py [--config gpt1_v5e_8] [--topology v5e:2x4]
        [--settings 1:0,128:0,128:128] [--cpu_batch 8]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30


def _cpu_temp_bytes(config, batch: int) -> int:
  """XLA's temporaries of the config's train step compiled for one CPU device (its CPU
  peak figure leaves the temporaries out, so it is not shown)."""
  import jax
  import jax.numpy as jnp

  from gpt_jax import sharding, train
  from gpt_jax.model import ModelConfig

  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  seq_len = config.train.seq_len
  model_config = ModelConfig.from_config(config.model)
  _, trainer = train.make_pretrainer(model_config, config.optim, mesh, seq_len, 10)
  lowered = trainer.lower_train_step(jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32))
  return lowered.compile().memory_analysis().temp_size_in_bytes


def main():
  from gpt_jax import dryrun
  from gpt_jax.config import load_config

  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='gpt1_v5e_8')
  parser.add_argument('--topology', default='v5e:2x4', help="'' skips the TPU compile")
  parser.add_argument('--settings', default='1:0,128:0,128:128', help='pad_vocab_to:lm_chunk,...')
  parser.add_argument('--cpu_batch', type=int, default=8, help="CPU step's batch (0: skip)")
  args = parser.parse_args()
  print(f'{args.config}: GiB per device (XLA temporaries / peak)')
  print('| pad_vocab_to | lm_chunk | TPU temporaries | TPU peak | CPU temporaries |')
  print('| ---: | ---: | ---: | ---: | ---: |')
  for setting in args.settings.split(','):
    pad_to, chunk = map(int, setting.split(':'))
    config = load_config(args.config)
    config.model.update(pad_vocab_to=pad_to, lm_chunk=chunk)
    tpu, cpu = ('–', '–'), '–'
    if args.topology:
      report = dryrun.dry_run(config, args.topology)
      tpu = (f'{report.temp_bytes / GiB:.2f}', f'{report.peak_bytes / GiB:.2f}')
    if args.cpu_batch:
      cpu = f'{_cpu_temp_bytes(config, args.cpu_batch) / GiB:.2f}'
    print(f'| {pad_to} | {chunk} | {tpu[0]} | {tpu[1]} | {cpu} |', flush=True)


if __name__ == '__main__':
  main()
