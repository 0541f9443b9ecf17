"""Per-chip memory of the paper-size train step with xla vs splash attention, on a TPU slice.

Compiles configs/gpt1_v5e_8.py's train step (bfloat16, data parallel) for a
TPU topology through libtpu's ahead-of-time compiler (gpt_jax.dryrun; no TPU
needed) once per attention implementation and context length, at the same
tokens per batch, with attention-probability dropout off (splash has none).

    python benchmarks/attention_memory.py [--topology v5e:2x4] [--lengths 512,2048]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host

GiB = 2**30


def main():
  from gpt_jax import dryrun
  from gpt_jax.config import load_config

  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='gpt1_v5e_8')
  parser.add_argument('--topology', default='v5e:2x4')
  parser.add_argument('--lengths', default='512,2048', help='context lengths to compile for')
  parser.add_argument('--tokens', type=int, default=64 * 512, help='tokens per global batch')
  args = parser.parse_args()
  print(f'{args.config} on {args.topology}, {args.tokens:,} tokens per batch, GiB per chip')
  print('| n_ctx | batch | attention | temporaries | XLA peak | compile s |')
  print('| ---: | ---: | --- | ---: | ---: | ---: |')
  for length in map(int, args.lengths.split(',')):
    for implementation in ('xla', 'splash'):
      config = load_config(args.config)
      config.model.update(n_ctx=length, attn_pdrop=0.0, attention=implementation)
      config.train.update(seq_len=length, batch_size=args.tokens // length)
      report = dryrun.dry_run(config, args.topology)
      if report.out_of_memory:
        print(
          f'| {length} | {config.train.batch_size} | {implementation} | does not fit: '
          f'{report.out_of_memory} | | {report.compile_seconds:.0f} |',
          flush=True,
        )
        continue
      print(
        f'| {length} | {config.train.batch_size} | {implementation} | '
        f'{report.temp_bytes / GiB:.2f} | {report.peak_bytes / GiB:.2f} | '
        f'{report.compile_seconds:.0f} |',
        flush=True,
      )


if __name__ == '__main__':
  main()
