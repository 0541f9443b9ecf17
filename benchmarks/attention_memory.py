"""Per-chip memory of the paper-size train step by attention kernel, on a TPU slice.

Compiles configs/gpt1_v5e_8.py's train step (bfloat16, data parallel) for a
TPU topology through libtpu's ahead-of-time compiler (gpt_jax.dryrun; no TPU
needed) once per contender and context length, at the same tokens per batch.
A contender is an attention implementation and its attention-probability
dropout: `xla` and `flash` train with the paper's 0.1, `splash` has no dropout.

    python benchmarks/attention_memory.py [--topology v5e:2x4] [--lengths 512,2048]
        [--contenders xla:0.1,splash:0,flash:0.1]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import distributed  # noqa: E402

distributed.skip_absent_tpu()  # before JAX starts: no libtpu start-up errors on a CPU host

GiB = 2**30


def _row(args, length: int, implementation: str, attn_pdrop: float) -> str:
  from gpt_jax import dryrun
  from gpt_jax.config import load_config

  config = load_config(args.config)
  config.model.update(n_ctx=length, attn_pdrop=attn_pdrop, attention=implementation)
  config.train.update(seq_len=length, batch_size=args.tokens // length)
  report = dryrun.dry_run(config, args.topology)
  head = f'| {length} | {config.train.batch_size} | {implementation} | {attn_pdrop:g} |'
  if report.out_of_memory:
    return f'{head} does not fit: {report.out_of_memory} | | {report.compile_seconds:.0f} |'
  return (
    f'{head} {report.temp_bytes / GiB:.2f} | {report.peak_bytes / GiB:.2f} | '
    f'{report.compile_seconds:.0f} |'
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='gpt1_v5e_8')
  parser.add_argument('--topology', default='v5e:2x4')
  parser.add_argument('--lengths', default='512,2048', help='context lengths to compile for')
  parser.add_argument('--tokens', type=int, default=64 * 512, help='tokens per global batch')
  parser.add_argument(
    '--contenders',
    default='xla:0.1,splash:0,flash:0.1',
    help='IMPLEMENTATION:ATTN_PDROP, comma-separated',
  )
  args = parser.parse_args()
  contenders = [
    (name, float(rate)) for name, rate in (c.split(':') for c in args.contenders.split(','))
  ]
  print(f'{args.config} on {args.topology}, {args.tokens:,} tokens per batch, GiB per chip')
  print('| n_ctx | batch | attention | attn_pdrop | temporaries | XLA peak | compile s |')
  print('| ---: | ---: | --- | ---: | ---: | ---: | ---: |')
  for length in map(int, args.lengths.split(',')):
    for implementation, attn_pdrop in contenders:
      print(_row(args, length, implementation, attn_pdrop), flush=True)


if __name__ == '__main__':
  main()
