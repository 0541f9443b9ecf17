"""Training-step throughput and MFU of the paper's 117M model on one accelerator, against PyTorch.

    python benchmarks/accelerator_throughput.py [--batch 64] [--seq_len 512] [--steps 10]

A full training step (forward, backward, clipping, AdamW) of `configs/gpt1.py` in bfloat16
compute with float32 parameters, on the first GPU (or TPU) JAX and PyTorch find. Contenders,
each in its own process, one after the other:
  gpt_jax, paper dropout    model.attention='xla' with attention-probability dropout 0.1
  gpt_jax, fused attention  model.attention='dot_product_attention' (cuDNN flash attention on
                            NVIDIA GPUs), which has no attention dropout: attn_pdrop=0
  torch / torch.compile     Hugging Face's OpenAIGPTLMHeadModel, bf16 autocast, fused AdamW
MFU counts model FLOPs (gpt_jax.flops) against the chip's data-sheet bfloat16 peak.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput  # noqa: E402  (benchmarks/throughput.py: the step builders)

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # the chip is shared by contenders


def _jax_worker(spec, conn):
  import jax

  step, _ = throughput.make_jax_step(spec)
  start = time.perf_counter()
  metrics = jax.block_until_ready(step())
  conn.send({'compile_s': time.perf_counter() - start})
  metrics = throughput.serve_timed_steps(conn, step, jax.block_until_ready)
  stats = jax.devices()[0].memory_stats() or {}
  conn.send({'loss': float(metrics['loss']), 'peak_gib': stats.get('peak_bytes_in_use', 0) / 2**30})


def _torch_worker(spec, conn):
  import torch

  step, _ = throughput.make_torch_step(spec)
  start = time.perf_counter()
  loss = step().item()
  conn.send({'compile_s': time.perf_counter() - start})
  loss = throughput.serve_timed_steps(conn, step, lambda loss: loss.item())
  conn.send({'loss': loss, 'peak_gib': torch.cuda.max_memory_allocated() / 2**30})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=64, help="the paper's 64 x 512 by default")
  parser.add_argument('--seq_len', type=int, default=512)
  parser.add_argument('--steps', type=int, default=10, help='steps per round and contender')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument(
    '--torch_compile',
    action=argparse.BooleanOptionalAction,
    default=True,
    help='also time torch.compile',
  )
  args = parser.parse_args()

  import jax

  from gpt_jax import flops
  from gpt_jax.model import ModelConfig

  model = throughput._model_sizes('gpt1', None)
  spec = dict(model=model, batch=args.batch, seq_len=args.seq_len, dtype='bfloat16')
  contenders = {
    'gpt_jax, paper dropout (xla)': (_jax_worker, {**spec, 'model': {**model, 'attention': 'xla'}}),
    'gpt_jax, fused attention': (
      _jax_worker,
      {**spec, 'model': {**model, 'attention': 'dot_product_attention', 'attn_pdrop': 0.0}},
    ),
    'torch eager': (_torch_worker, {**spec, 'compile': False}),
  }
  if args.torch_compile:
    contenders['torch.compile'] = (_torch_worker, {**spec, 'compile': True})
  # One contender at a time: each holds the chip's memory until it exits (a dedicated chip
  # has little of the noise that interleaving guards against on a shared CPU).
  results = {}
  for name, (target, worker_spec) in contenders.items():
    process, conn = throughput._start(target, worker_spec)
    info = conn.recv()
    print(f'{name}: first step {info["compile_s"]:.1f}s', flush=True)
    timings = []
    for _ in range(args.rounds):
      conn.send(args.steps)
      timings.append(conn.recv() / args.steps)
    conn.send('stop')
    results[name] = (statistics.median(timings), info, conn.recv())
    process.join()
  tokens = args.batch * args.seq_len
  step_flops = flops.train_flops_per_token(ModelConfig.from_config(model), args.seq_len) * tokens
  peak, source = flops.peak_flops_per_device()
  print(
    f'\n{jax.devices()[0].device_kind}: gpt1 (117M), {args.batch} x {args.seq_len} tokens, '
    f'bfloat16, peak {peak / 1e12:.0f} TFLOP/s ({source})'
  )
  print(
    f'{"contender":32s} {"ms/step":>8s} {"tokens/s":>10s} {"MFU":>6s} {"peak GiB":>9s} '
    f'{"first step s":>12s} {"loss":>7s}'
  )
  for name, (step_s, info, final) in results.items():
    print(
      f'{name:32s} {1e3 * step_s:8.1f} {tokens / step_s:10,.0f} '
      f'{step_flops / step_s / peak:6.1%} {final["peak_gib"]:9.1f} {info["compile_s"]:12.1f} '
      f'{final["loss"]:7.3f}'
    )


if __name__ == '__main__':
  main()
